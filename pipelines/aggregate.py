"""The aggregate job: the summary tables of an OUT that shard runs wrote into, rebuilt from every run's part.

    python -m pipelines.convert --input shards/series_shard_00.csv --output OUT    # writes part series_shard_00
    python -m pipelines.convert --input shards/series_shard_01.csv --output OUT    # ... and so on
    python -m pipelines.aggregate --output OUT [--table_shards N] [any Beam option]

OUT/summary/{series,instances}/*.parquet then describe every shard's files exactly once, as one run
over all the shards' files would.
"""

from __future__ import annotations

import argparse
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from dicom_io import aggregate, schemas
from pipelines.common import JobOptions, quiet_main, require, run_job
from pipelines.report import print_summary
from pipelines.sharding import table_sharding
from transforms.aggregate import AggregateParts


class AggregateOptions(PipelineOptions):
    """pipelines.aggregate has no flag of its own: --output and --table_shards are JobOptions'."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        pass


def validate(opts: AggregateOptions) -> None:
    require("aggregate", opts, "output")
    output = opts.view_as(JobOptions).output
    if not aggregate.part_files(output, schemas.SUMMARY_INSTANCES_PREFIX):
        raise SystemExit(f"pipelines.aggregate: {output} holds no summary/parts/*/ (convert runs over "
                         "shards/series_shard_XX.csv, or with --summary_part NAME, write them)")


def build(pipeline: beam.Pipeline, opts: AggregateOptions) -> dict:
    shared = opts.view_as(JobOptions)
    parts = {name: aggregate.part_files(shared.output, name)
             for name in (schemas.SUMMARY_SERIES_PREFIX, schemas.SUMMARY_INSTANCES_PREFIX)}
    return pipeline | "Aggregate" >> AggregateParts(shared.output, parts, table_sharding(opts))


def summarize(opts: AggregateOptions) -> None:
    print_summary(opts.view_as(JobOptions).output)


def run(argv: list[str] | None = None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Run the aggregate job; see pipelines.common.run_job."""
    return run_job(argv, AggregateOptions, validate, build, summarize, wait)


def main() -> None:
    quiet_main(run, sys.argv[1:])


if __name__ == "__main__":
    main()
