"""What every dicomflow job shares: the common flags (defined once) and the run skeleton.

Beam parses every registered PipelineOptions class on every run and argparse refuses a flag
defined twice, so --input, --output, --manifest_column and --table_shards live here only,
and no flag is argparse-required (each job validates its own in `validate`).
"""

from __future__ import annotations

import argparse
import logging
from typing import Callable, TypeVar

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.report import print_counters

O = TypeVar("O", bound=PipelineOptions)


def parse_bool(text: str) -> bool:
    """`true`/`false` (any case): Flex Templates pass every parameter as --name=value."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class JobOptions(PipelineOptions):
    """Flags shared by every dicomflow job."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", help="Folder or gs:// prefix (recursive), glob, or .csv/.parquet manifest")
        parser.add_argument("--output", help="Output root (local path or gs://)")
        parser.add_argument("--manifest_column", default="uri", help="Manifest column holding file URIs")
        parser.add_argument("--table_shards", type=int, default=1,
                            help="Files per summary table (about one per 500,000 input files)")


def require(job: str, opts: PipelineOptions, *names: str) -> None:
    """Exit with a usage message when a needed shared flag is missing or out of range."""
    shared = opts.view_as(JobOptions)
    missing = [f"--{name}" for name in names if not getattr(shared, name)]
    if missing:
        raise SystemExit(f"pipelines.{job}: {' and '.join(missing)} required")
    if shared.table_shards <= 0:
        raise SystemExit(f"pipelines.{job}: --table_shards must be positive")


def run_job(argv: list[str] | None, options_class: type[O], validate: Callable[[O], None],
            build: Callable[[beam.Pipeline, O], object], summarize: Callable[[O], None] | None,
            wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Parse, validate, build and run; with `wait`, block, then print counters and (locally) a summary.

    A Flex Template launcher passes wait=False: it must submit the job and return.
    """
    options = PipelineOptions(argv)
    standard = options.view_as(StandardOptions)
    standard.runner = standard.runner or "DirectRunner"
    opts = options.view_as(options_class)
    validate(opts)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, opts)
    result = pipeline.run()
    if not wait:
        return result
    result.wait_until_finish()
    print_counters(result)
    if summarize is not None and standard.runner in ("DirectRunner", "direct"):
        summarize(opts)
    return result


def quiet_main(run: Callable[[list[str]], object], argv: list[str]) -> None:
    """Console entry point: warnings only from libraries, then run."""
    logging.getLogger().setLevel(logging.WARNING)
    run(argv)
