"""The convert job: DICOM files -> Zarr v3 volumes, slice CSVs, series JSON and summary Parquet.

    python -m pipelines.convert --input INPUT --output OUT [--overwrite] [any Beam option]
"""

from __future__ import annotations

import argparse
import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from dicom_io.convert import ConvertSettings
from dicom_io.pixels import DEFAULT_MAX_PIXEL_BYTES
from pipelines.report import print_counters, print_summary
from transforms.convert import ConvertToVolumes
from transforms.tables import WriteSummaryTables


def parse_bool(text: str) -> bool:
    """`true`/`false` (any case): Flex Templates pass every parameter as --name=value."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class ConvertOptions(PipelineOptions):
    """Options of pipelines.convert (every other flag goes to Beam)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        # Not argparse-required: Beam parses every registered options class on every
        # get_all_options() call, so a required flag here would break unrelated pipelines.
        parser.add_argument("--input", help="Folder or gs:// prefix (recursive), glob, or .csv/.parquet manifest")
        parser.add_argument("--output", help="Output root (local path or gs://)")
        parser.add_argument("--manifest_column", default="uri", help="Manifest column holding file URIs")
        parser.add_argument("--overwrite", type=parse_bool, nargs="?", const=True, default=False,
                            help="Rewrite series already committed (--overwrite, or =true/false as templates pass)")
        parser.add_argument("--max_pixel_bytes", type=int, default=DEFAULT_MAX_PIXEL_BYTES,
                            help="Refuse instances whose decoded pixels would exceed this many bytes")
        parser.add_argument("--table_shards", type=int, default=1,
                            help="Files per summary table (about one per 500,000 input files)")


def validate(opts: ConvertOptions) -> None:
    """Refuse a run that cannot do what was asked, before any worker starts."""
    missing = [f"--{name}" for name in ("input", "output") if not getattr(opts, name)]
    if missing:
        raise SystemExit(f"pipelines.convert: {' and '.join(missing)} required")
    if opts.max_pixel_bytes <= 0 or opts.table_shards <= 0:
        raise SystemExit("pipelines.convert: --max_pixel_bytes and --table_shards must be positive")


def build(pipeline: beam.Pipeline, opts: ConvertOptions) -> dict:
    """Attach the convert graph to `pipeline`; returns the written table PCollections."""
    settings = ConvertSettings(output=opts.output, overwrite=opts.overwrite, max_pixel_bytes=opts.max_pixel_bytes)
    tables = pipeline | "Convert" >> ConvertToVolumes(
        input_uri=opts.input, settings=settings, manifest_column=opts.manifest_column)
    return tables | "WriteSummary" >> WriteSummaryTables(opts.output, opts.table_shards)


def run(argv: list[str] | None = None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Parse options and run the job; with `wait`, block, then print counters and the summary.

    A Flex Template launcher passes wait=False: it must submit and return.
    """
    options = PipelineOptions(argv)
    standard = options.view_as(StandardOptions)
    standard.runner = standard.runner or "DirectRunner"
    opts = options.view_as(ConvertOptions)
    validate(opts)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, opts)
    result = pipeline.run()
    if not wait:
        return result
    result.wait_until_finish()
    print_counters(result)
    if standard.runner in ("DirectRunner", "direct"):
        print_summary(opts.output)
    return result


def main() -> None:
    logging.getLogger().setLevel(logging.WARNING)
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
