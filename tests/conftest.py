"""Shared fixtures: one Beam `pipeline`, one generated corpus, one converted output."""

from __future__ import annotations

import os

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from tests import synthetic

# Deterministic local runs: the DirectRunner, not the Prism download attempt.
RUNNER_ARGS = ["--runner", "DirectRunner", "--direct_running_mode", "in_memory"]


@pytest.fixture
def pipeline():
    """A TestPipeline on the in-memory DirectRunner; `with pipeline as p:` runs it."""
    return TestPipeline(runner="DirectRunner", options=PipelineOptions(["--direct_running_mode", "in_memory"]), argv=[],
                        blocking=True)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> synthetic.Corpus:
    """The seeded mixed corpus (regular, coronal, irregular, multi-echo, localizer, broken)."""
    return synthetic.make_corpus(tmp_path_factory.mktemp("corpus"), seed=0)


@pytest.fixture(scope="session")
def converted(corpus, tmp_path_factory) -> str:
    """OUT of one `pipelines.convert` run over the corpus."""
    from pipelines.convert import run

    out = str(tmp_path_factory.mktemp("out"))
    run(["--input", corpus.root, "--output", out, *RUNNER_ARGS])
    return out


def all_files(root: str) -> list[str]:
    """Every regular file below `root`, absolute."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)
