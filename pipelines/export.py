"""The export job: converted volumes of OUT -> NIfTI, HDF5 or DICOM files under DIR.

    python -m pipelines.export --output OUT --to DIR --format dicom|hdf5|nifti [--series KEY ...]
        [--keep_uids] [--labels PATH] [--hdf5_compression gzip|zstd] [any Beam option]

Writes DIR/exports-00000-of-00001.parquet: one row per series asked (exported or failed, with the reason).
`--format` and `--labels` are the short names of `--export_format` and `--seg_labels`: Beam parses every
job's options together, and pipelines.dataset owns `--format` (vlm|labels), Beam's GoogleCloudOptions
`--labels` (Dataflow job labels, which this job therefore does not take from `--labels`).
"""

from __future__ import annotations

import argparse
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from dicom_io import schemas, storage, tables
from dicom_io.exports import HDF5_COMPRESSIONS, ExportSettings
from pipelines.sharding import table_sharding
from pipelines.common import JobOptions, parse_bool, quiet_main, require, run_job
from transforms.export import ExportSeries, WriteExportsTable


class ExportOptions(PipelineOptions):
    """Flags of pipelines.export; --output (OUT, read only) is JobOptions'."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--to", default=None, help="Folder (local or gs://) the exported files go to")
        parser.add_argument("--export_format", choices=schemas.EXPORT_FORMATS, default=None,
                            help="dicom (one series per volume), hdf5 (one file per table shard) or nifti (.nii.gz)")
        parser.add_argument("--series", nargs="+", action="extend", default=None,
                            help="Export only these series keys (default: every converted series)")
        parser.add_argument("--keep_uids", type=parse_bool, nargs="?", const=True, default=False,
                            help="dicom: keep the source SOP/Series Instance UIDs instead of derived new ones")
        parser.add_argument("--seg_labels", default=None,
                            help="dicom: a label volume on the series' grid (Zarr array or NIfTI) written as DICOM SEG")
        parser.add_argument("--hdf5_compression", choices=HDF5_COMPRESSIONS, default="gzip",
                            help="hdf5: gzip + shuffle (any HDF5 reader) or Blosc zstd (readers need hdf5plugin)")


ALIASES = {"--format": "--export_format", "--labels": "--seg_labels"}


def with_aliases(argv: list[str]) -> list[str]:
    """`--format X` -> `--export_format X`, `--labels P` -> `--seg_labels P` (see the module docstring)."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(ALIASES.get(name, name) + eq + value if name in ALIASES else arg)
    return out


def validate(opts: ExportOptions) -> None:
    """Refuse a run that cannot do what was asked, before any worker starts."""
    require("export", opts, "output")
    output = opts.view_as(JobOptions).output
    if not opts.to or not opts.export_format:
        raise SystemExit("pipelines.export: --to and --format (dicom|hdf5|nifti) required")
    if not storage.glob(schemas.table_prefix(output, schemas.SUMMARY_SERIES_PREFIX) + "-*.parquet"):
        raise SystemExit(f"pipelines.export: {output} holds no summary/series/*.parquet (run pipelines.convert)")
    if opts.seg_labels and (opts.export_format != "dicom" or len(opts.series or []) != 1):
        raise SystemExit("pipelines.export: --labels needs --format dicom and exactly one --series KEY")
    if opts.seg_labels and not storage.exists(opts.seg_labels):
        raise SystemExit(f"pipelines.export: --labels {opts.seg_labels} does not exist")


def summary_shards(output: str) -> int:
    """How many shards OUT's series table has: HDF5 files follow them (one file per table shard)."""
    found = storage.glob(schemas.table_prefix(output, schemas.SUMMARY_SERIES_PREFIX) + "-*-of-*.parquet")
    counts = {int(uri.rsplit("-of-", 1)[1].split(".")[0]) for uri in found}
    return max(counts) if counts else 1


def settings_of(opts: ExportOptions) -> ExportSettings:
    return ExportSettings(output=opts.view_as(JobOptions).output, to=opts.to, fmt=opts.export_format,
                          keep_uids=opts.keep_uids, labels=opts.seg_labels, hdf5_compression=opts.hdf5_compression)


def build(pipeline: beam.Pipeline, opts: ExportOptions):
    """Attach the export graph to `pipeline`; returns the exports table's written URIs."""
    settings = settings_of(opts)
    rows = pipeline | "Export" >> ExportSeries(settings, tuple(opts.series or ()), summary_shards(settings.output))
    return rows | "WriteExportsTable" >> WriteExportsTable(settings.to, table_sharding(opts))


def summarize(opts: ExportOptions) -> None:
    rows = tables.read_shards(schemas.export_prefix(opts.to, schemas.EXPORTS_PREFIX), schemas.EXPORT_SCHEMA).to_pylist()
    failed = [r for r in rows if r["status"] != schemas.EXPORTED]
    print(f"exported {len(rows) - len(failed)} series as {opts.export_format} to {opts.to}; {len(failed)} failed")
    for row in failed[:20]:
        print(f"  {row['series_key']}: {row['reason']}")


def run(argv: list[str] | None = None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Run the export job; see pipelines.common.run_job."""
    return run_job(with_aliases(list(argv or [])), ExportOptions, validate, build, summarize, wait)


def main() -> None:
    quiet_main(run, sys.argv[1:])


if __name__ == "__main__":
    main()
