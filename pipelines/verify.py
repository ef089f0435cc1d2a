"""The verify job: re-check a converted OUT against its sources and write a table and an HTML report.

    python -m pipelines.verify --output OUT [--sample N] [--seed S] [--report report.html] [any Beam option]

Writes OUT/verify/verify-*.parquet (one row per checked series), OUT/verify/files-*.parquet (instances
table accounting failures), OUT/verify/thumbnails/ and the report (default OUT/verify/report.html).
`dicomflow-verify` exits with status 1 when a check failed (after a run it waited for).
"""

from __future__ import annotations

import argparse
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from dicom_io import schemas, storage, tables
from dicom_io.verify import POSITION_TOLERANCE_MM, VerifySettings
from pipelines.common import JobOptions, PixelOptions, quiet_main, require, run_job
from pipelines.sharding import table_sharding
from transforms.verify import VerifyOutput, WriteReport, WriteVerifyTables


class VerifyOptions(PipelineOptions):
    """Flags of pipelines.verify; --output and --table_shards are JobOptions', --max_pixel_bytes PixelOptions'.

    Beam parses every registered options class together and argparse refuses a flag defined twice.
    """

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        # Not argparse-required (every options class is parsed on every run): checked in validate().
        parser.add_argument("--sample", type=int, default=None,
                            help="Check N converted series chosen by --seed (default: every converted series)")
        parser.add_argument("--seed", type=int, default=0, help="Seed of the --sample choice")
        parser.add_argument("--report", default=None, help="Where to write the HTML report (default OUT/verify/report.html)")
        parser.add_argument("--report_thumbnails", type=int, default=50,
                            help="Series whose thumbnails are embedded in the report (failed first)")
        parser.add_argument("--position_tolerance_mm", type=float, default=POSITION_TOLERANCE_MM,
                            help="How far the affine may place a slice from its ImagePositionPatient")


def validate(opts: VerifyOptions) -> None:
    """Refuse a run that cannot do what was asked, before any worker starts."""
    require("verify", opts, "output")
    output = opts.view_as(JobOptions).output
    if opts.sample is not None and opts.sample < 1:
        raise SystemExit("pipelines.verify: --sample must be at least 1")
    if opts.report_thumbnails < 0 or opts.position_tolerance_mm <= 0:
        raise SystemExit("pipelines.verify: --report_thumbnails must be >= 0, --position_tolerance_mm > 0")
    for name in (schemas.SUMMARY_SERIES_PREFIX, schemas.SUMMARY_INSTANCES_PREFIX):
        if not storage.glob(schemas.table_prefix(output, name) + "-*.parquet"):
            raise SystemExit(f"pipelines.verify: {output} holds no summary/{name}/*.parquet (run pipelines.convert)")


def report_uri_of(opts: VerifyOptions) -> str:
    return opts.report or schemas.report_uri(opts.view_as(JobOptions).output)


def build(pipeline: beam.Pipeline, opts: VerifyOptions) -> dict:
    """Attach the verify graph to `pipeline`; returns the written outputs' PCollections."""
    shared = opts.view_as(JobOptions)
    settings = VerifySettings(output=shared.output, max_pixel_bytes=opts.view_as(PixelOptions).max_pixel_bytes,
                              position_tolerance_mm=opts.position_tolerance_mm)
    checked = pipeline | "Verify" >> VerifyOutput(settings, opts.sample, opts.seed)
    tables = checked | "WriteVerifyTables" >> WriteVerifyTables(shared.output, table_sharding(opts))
    report = checked | "WriteReport" >> WriteReport(shared.output, report_uri_of(opts), opts.sample, opts.seed,
                                                    opts.report_thumbnails)
    return {**tables, "report": report}


def problems(output: str) -> tuple[list[dict], list[dict]]:
    """(verify rows that failed, files failure rows) of OUT/verify."""
    rows = tables.read_shards(schemas.verify_prefix(output, schemas.VERIFY_PREFIX), schemas.VERIFY_SCHEMA)
    files = tables.read_shards(schemas.verify_prefix(output, schemas.VERIFY_FILES_PREFIX), schemas.VERIFY_FILES_SCHEMA)
    return [r for r in rows.to_pylist() if r["status"] != schemas.OK], files.to_pylist()


def summarize(opts: VerifyOptions) -> None:
    """What a user reads after a local run: the verdict, the first failures, where the report is."""
    output = opts.view_as(JobOptions).output
    checked = tables.read_shards(schemas.verify_prefix(output, schemas.VERIFY_PREFIX), schemas.VERIFY_SCHEMA)
    failed, files = problems(output)
    print(f"verified {checked.num_rows} series: {checked.num_rows - len(failed)} ok, {len(failed)} failed; "
          f"{len(files)} instances-table accounting failures")
    for row in failed[:20]:
        print(f"  {row['series_key']}: {row['failures'][0] if row['failures'] else ''}")
    print(f"report: {report_uri_of(opts)}")


def run(argv: list[str] | None = None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Run the verify job; see pipelines.common.run_job."""
    return run_job(argv, VerifyOptions, validate, build, summarize, wait, extra=(("pixels", PixelOptions),))


def exit_status(argv: list[str]) -> int:
    """1 when the finished run found a problem (CI gates on `dicomflow-verify`), else 0."""
    failed, files = problems(PipelineOptions(argv).view_as(JobOptions).output)
    return 1 if failed or files else 0


def main() -> None:
    argv = sys.argv[1:]
    quiet_main(run, argv, status=exit_status)


if __name__ == "__main__":
    main()
