"""Every pipeline's graph, walked: no side input may carry an unbounded collection to a worker.

A side input is materialised whole on every worker that reads it, so whatever its view (AsSingleton,
AsList, AsIter, AsDict) it may only carry a bounded aggregate: a CombineGlobally of counts or sums, a
Top/Sample of N, a Create, or an element-wise step of one of those (Beam's own CombineGlobally reads
its one-element result AsList). ToList/ToDict/ToSet (every element again), a GroupByKey, a read or a
Reshuffle are refused.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsSingleton
from apache_beam.transforms import combiners

from dicom_io import schemas
from pipelines import convert, dataset, manifest, verify
from tests.conftest import RUNNER_ARGS

UNBOUNDED_FNS = (combiners.ToListCombineFn, combiners.ToDictCombineFn, combiners.ToSetCombineFn)
# Side inputs Beam itself reads: CombineGlobally's InjectDefault (its own one-element result).
BEAM_INTERNAL = (beam.CombineGlobally,)


def _ancestors(applied):
    while applied is not None:
        yield applied
        applied = applied.parent


def _bounded_origin(pcoll) -> str | None:
    """None when `pcoll` is one element of a bounded aggregate, else what makes it unbounded."""
    applied = pcoll.producer
    while True:
        for outer in _ancestors(applied):
            if isinstance(outer.transform, combiners.Top.Of):  # at most n elements, whatever the input
                return None
            if isinstance(outer.transform, beam.CombineGlobally):
                fn = outer.transform.fn
                return f"{outer.full_label}: {type(fn).__name__}" if isinstance(fn, UNBOUNDED_FNS) else None
            if isinstance(outer.transform, beam.Create):
                return None
        main = [p for p in applied.main_inputs.values()] if hasattr(applied, "main_inputs") else list(applied.inputs)
        if isinstance(applied.transform, beam.ParDo) and len(main) == 1:
            applied = main[0].producer  # element-wise: bounded if its input is
            continue
        return f"{applied.full_label}: {type(applied.transform).__name__}"


class SideInputs(beam.pipeline.PipelineVisitor):
    """Collects (step, problem) for every side input that is not a bounded singleton."""

    def __init__(self):
        self.problems: list[tuple[str, str]] = []
        self.seen = 0

    def visit_transform(self, applied):
        if any(isinstance(outer.transform, BEAM_INTERNAL) for outer in _ancestors(applied)):
            return
        for side in applied.side_inputs:
            self.seen += 1
            origin = _bounded_origin(side.pvalue)
            if origin:
                self.problems.append((applied.full_label, f"{type(side).__name__} of {origin}"))


def _empty_table(path, schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.empty_table(), str(path))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """An input folder, a manifest, a converted-looking OUT (empty summary tables) and user tables."""
    root = tmp_path_factory.mktemp("graphs")
    (root / "in").mkdir()
    (root / "manifest.csv").write_text("uri\n/x.dcm\n")
    out = root / "out"
    _empty_table(out / schemas.SUMMARY_DIR / "series" / "series-00000-of-00001.parquet", schemas.SERIES_SCHEMA)
    _empty_table(out / schemas.SUMMARY_DIR / "instances" / "instances-00000-of-00001.parquet", schemas.INSTANCES_SCHEMA)
    _empty_table(root / "previous" / "instances" / "instances-00000-of-00001.parquet", schemas.MANIFEST_INSTANCES_SCHEMA)
    _empty_table(root / "previous" / "tags_long" / "tags_long-00000-of-00001.parquet", schemas.TAGS_LONG_SCHEMA)
    (root / "reports.csv").write_text("study_id,report_value\n1,x\n")
    (root / "train.csv").write_text("study_id,label\n1,x\n")
    (root / "descriptions.csv").write_text("study_id,series_id,series_description\n1,2,Axial T2\n")
    return root


def _jobs(root) -> dict[str, tuple]:
    out, prev = str(root / "out"), str(root / "previous")
    return {
        "convert folder": (convert, convert.ConvertOptions, ["--input", str(root / "in"), "--output", out]),
        "convert manifest": (convert, convert.ConvertOptions, ["--input", str(root / "manifest.csv"), "--output", out,
                                                               "--preview_naming", "manifest:uri"]),
        "manifest": (manifest, manifest.ManifestOptions, ["--input", str(root / "in"), "--output", out,
                                                          "--all_tags", "--num_shards", "3", "--previous", prev]),
        "verify": (verify, verify.VerifyOptions, ["--output", out]),
        "verify sample": (verify, verify.VerifyOptions, ["--output", out, "--sample", "3"]),
        "dataset vlm": (dataset, dataset.DatasetOptions, ["--output", out, "--format", "vlm",
                                                          "--report_table", str(root / "reports.csv")]),
        "dataset labels": (dataset, dataset.DatasetOptions, [
            "--output", out, "--format", "labels", "--labels_table", str(root / "train.csv"),
            "--series_descriptions", str(root / "descriptions.csv")]),
    }


@pytest.mark.parametrize("job", ["convert folder", "convert manifest", "manifest", "verify", "verify sample",
                                 "dataset vlm", "dataset labels"])
@pytest.mark.parametrize("shards", [[], ["--table_shards", "4"]])
def test_no_side_input_carries_an_unbounded_collection(roots, job, shards):
    module, options_class, argv = _jobs(roots)[job]
    options = PipelineOptions([*argv, *shards, *RUNNER_ARGS])
    pipeline = beam.Pipeline(options=options)
    module.build(pipeline, options.view_as(options_class))
    visitor = SideInputs()
    pipeline.visit(visitor)
    assert visitor.problems == []
    assert visitor.seen > 0  # the shard plans at least: the walk did see side inputs


def test_the_walk_catches_what_it_must():
    pipeline = beam.Pipeline(options=PipelineOptions(RUNNER_ARGS))
    rows = pipeline | "Rows" >> beam.Create([1, 2, 3]) | "Spread" >> beam.Reshuffle()
    everything = rows | "All" >> beam.combiners.ToList()
    grouped = rows | "Pair" >> beam.Map(lambda x: (x, x)) | "Group" >> beam.GroupByKey()  # noqa: E731 (a test graph)
    total = rows | "Sum" >> beam.CombineGlobally(sum) | "Half" >> beam.Map(lambda x: x / 2)  # noqa: E731
    rows | "UseList" >> beam.Map(lambda x, a: x, beam.pvalue.AsList(rows))  # noqa: E731
    rows | "UseToList" >> beam.Map(lambda x, a: x, AsSingleton(everything))  # noqa: E731
    rows | "UseGroup" >> beam.Map(lambda x, a: x, AsSingleton(grouped))  # noqa: E731
    rows | "UseSum" >> beam.Map(lambda x, a: x, AsSingleton(total))  # noqa: E731
    visitor = SideInputs()
    pipeline.visit(visitor)
    assert [step for step, _ in visitor.problems] == ["UseList", "UseToList", "UseGroup"]
