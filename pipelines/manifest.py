"""The manifest job: a header-only crawl that indexes every input file, its series and (optionally) every tag.

    python -m pipelines.manifest --input INPUT --output OUT [--all_tags] [--previous OLD_OUT]
                                 [--num_shards N] [any Beam option]

Writes OUT/instances/instances-*.parquet (one row per file; `pipelines.convert --input
OUT/instances/instances-*.parquet` converts from it), OUT/series/series-*.parquet,
OUT/unreadable/unreadable-*.csv, with --num_shards OUT/shards/series_shard_XX.csv, with --all_tags
OUT/tags/tags-*.parquet and OUT/tags_long/tags_long-*.parquet: a folder per table (output contract 2).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

from dicom_io import schemas, storage, tables
from dicom_io.manifest import CrawlSettings
from pipelines.common import DeidOptions, JobOptions, deid_settings, quiet_main, require, run_job
from pipelines import localrun
from pipelines.sharding import table_sharding
from transforms.manifest import CrawlManifest, WriteManifest


class ManifestOptions(PipelineOptions):
    """Flags of pipelines.manifest beyond the shared ones (pipelines.common.JobOptions)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--all_tags", action="store_true",
                            help="Also write every data element of every file: OUT/tags-*.parquet (wide) "
                                 "and OUT/tags_long-*.parquet")
        parser.add_argument("--previous", default=None,
                            help="OUT of an earlier manifest run: files with the same URI, size and mtime "
                                 "are not read again")
        parser.add_argument("--num_shards", type=int, default=None,
                            help="Split the series into this many convert inputs, OUT/shards/series_shard_XX.csv")
        parser.add_argument("--tags_max_items", type=int, default=0,
                            help="With --all_tags: items listed per sequence (0 = all)")


def validate(opts: ManifestOptions) -> None:
    """Refuse a run that cannot do what was asked, before any worker starts."""
    require("manifest", opts, "input", "output")
    if deid_settings("manifest", opts) and opts.all_tags:
        raise SystemExit("pipelines.manifest: --all_tags writes every element as found; it cannot be "
                         "combined with --deidentify")
    if opts.num_shards is not None and opts.num_shards < 1:
        raise SystemExit("pipelines.manifest: --num_shards must be at least 1")
    if opts.tags_max_items < 0:
        raise SystemExit("pipelines.manifest: --tags_max_items must be 0 (all) or positive")
    if opts.previous and not _previous_tables(opts.previous, schemas.MANIFEST_INSTANCES_PREFIX):
        raise SystemExit(f"pipelines.manifest: --previous {opts.previous} holds no instances/instances-*.parquet")


def _previous_tables(previous: str, name: str) -> list[str]:
    return storage.glob(schemas.manifest_prefix(previous, name) + "-*.parquet")


def settings_of(opts: ManifestOptions) -> CrawlSettings:
    shared = opts.view_as(JobOptions)
    return CrawlSettings(
        input_uri=shared.input, manifest_column=shared.manifest_column, all_tags=opts.all_tags,
        tags_max_items=opts.tags_max_items or None, previous=opts.previous,
        previous_tags=bool(opts.previous and _previous_tables(opts.previous, schemas.TAGS_LONG_PREFIX)),
        deid=deid_settings("manifest", opts), processes=localrun.processes_per_worker(opts, shared.processes),
    )


def build(pipeline: beam.Pipeline, opts: ManifestOptions) -> dict:
    """Attach the manifest graph to `pipeline`; returns the written outputs' PCollections."""
    shared = opts.view_as(JobOptions)
    crawled = pipeline | "Crawl" >> CrawlManifest(settings_of(opts))
    return crawled | "WriteManifest" >> WriteManifest(
        shared.output, sharding=table_sharding(opts), num_shards=opts.num_shards, all_tags=opts.all_tags)


def read_table(output: str, name: str) -> pa.Table:
    """All shards of OUT/{name}-*.parquet as one table (tests, the summary below, later jobs)."""
    files = storage.glob(schemas.manifest_prefix(output, name) + "-*.parquet")
    return pa.concat_tables(tables.read_parquet(f) for f in files)


def print_summary(output: str) -> None:
    """A few lines a user reads after a local run."""
    instances = read_table(output, schemas.MANIFEST_INSTANCES_PREFIX)
    series = read_table(output, schemas.MANIFEST_SERIES_PREFIX)
    readable = Counter("readable" if r else "unreadable" for r in instances.column("readable").to_pylist())
    print(f"instances: {dict(readable)}, series: {series.num_rows}, bytes: {sum(series.column('n_bytes').to_pylist())}")


def summarize(opts: ManifestOptions) -> None:
    print_summary(opts.view_as(JobOptions).output)


def run(argv: list[str] | None = None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Run the crawl; see pipelines.common.run_job."""
    return run_job(argv, ManifestOptions, validate, build, summarize, wait,
                   extra=(("de-identification", DeidOptions),))


def main() -> None:
    quiet_main(run, sys.argv[1:])


if __name__ == "__main__":
    main()
