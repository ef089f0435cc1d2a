"""The convert job: DICOM files -> Zarr v3 volumes, slice CSVs, series JSON and summary Parquet.

    python -m pipelines.convert --input INPUT --output OUT [--overwrite] [any Beam option]
"""

from __future__ import annotations

import argparse
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from dicom_io.convert import IRREGULAR_MODES, TILT_MODES, ConvertSettings
from dicom_io import aggregate, previews, schemas
from dicom_io.pixels import PHILIPS_SCALINGS
from dicom_io.volume import COMPRESSION_LEVEL
from pipelines.common import (DeidOptions, JobOptions, PixelOptions, deid_settings, parse_bool, quiet_main,
                              require, run_job)
from pipelines import localrun
from pipelines.report import print_summary
from pipelines.sharding import table_sharding
from transforms.convert import ConvertToVolumes
from transforms.aggregate import WriteSummaryPart
from transforms.tables import WriteSummaryTables

__all__ = ["ConvertOptions", "JobOptions", "build", "parse_bool", "run", "main"]


class ConvertOptions(PipelineOptions):
    """Flags of pipelines.convert beyond the shared ones (pipelines.common.JobOptions)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--overwrite", type=parse_bool, nargs="?", const=True, default=False,
                            help="Rewrite series already committed (--overwrite, or =true/false as templates pass)")
        parser.add_argument("--compression_level", type=int, default=COMPRESSION_LEVEL,
                            help="Blosc zstd level of the volumes, 1 (fastest) to 9 (smallest)")
        parser.add_argument("--previews", choices=previews.MODES, default="none",
                            help="none; middle (middle slice + axial/coronal/sagittal montage per volume); all")
        parser.add_argument("--preview_format", choices=previews.FORMATS, default="jpeg", help="jpeg or png")
        parser.add_argument("--preview_naming", default="key",
                            help="key (OUT/previews/{series_key}/{z:05d}), sop ({SOPInstanceUID}, one folder) "
                                 "or manifest:COLUMN (the file's value in that manifest column)")
        parser.add_argument("--tilt", choices=TILT_MODES, default="keep",
                            help="Gantry-tilted stacks: keep (sheared affine) or resample to an orthogonal grid")
        parser.add_argument("--irregular", choices=IRREGULAR_MODES, default="keep",
                            help="Irregularly spaced stacks: keep, resample to a uniform step, or fail")
        parser.add_argument("--summary_part", default=None,
                            help="Also keep this run's summary rows as OUT/summary/parts/NAME/ for pipelines.aggregate "
                                 "(default: series_shard_XX when --input is a manifest shard CSV)")
        parser.add_argument("--store", choices=schemas.VOLUME_STORES, default=schemas.STORE_DIRECTORY,
                            help="directory (OUT/volumes/{key}.zarr) or zip (OUT/volumes/{key}.zarr.zip, "
                                 "one object per series)")
        parser.add_argument("--philips_scaling", choices=PHILIPS_SCALINGS, default="dv",
                            help="Philips MR values: dv (displayed, the DICOM rescale) or fp (floating point, "
                                 "DV / (RescaleSlope x (2005,100E) ScaleSlope), float32)")
        parser.add_argument("--stacks_3d", type=parse_bool, nargs="?", const=True, default=False,
                            help="Write every volume of a 4D series (time points, b-values, echoes, triggers) "
                                 "as its own 3D stack instead of one (t, z, y, x) array")
        parser.add_argument("--pyramid_levels", type=int, default=1,
                            help="OME-Zarr multiscale levels (1 = no pyramid): each halves y and x, and z where the "
                                 "slice step is finer than the new in-plane step")


SHARED_OPTIONS = (("pixels", PixelOptions), ("de-identification", DeidOptions))
OPTION_CLASSES = (ConvertOptions, JobOptions, PixelOptions, DeidOptions)  # every flag this job reads


def validate(opts: ConvertOptions) -> None:
    """Refuse a run that cannot do what was asked, before any worker starts."""
    require("convert", opts, "input", "output")
    deid_settings("convert", opts)
    if opts.view_as(PixelOptions).max_pixel_bytes <= 0:
        raise SystemExit("pipelines.convert: --max_pixel_bytes must be positive")
    try:
        previews.parse_naming(opts.preview_naming)
    except ValueError as exc:
        raise SystemExit(f"pipelines.convert: {exc}") from exc
    if opts.preview_naming.startswith("manifest:") and not opts.view_as(JobOptions).input.lower().endswith(
            (".csv", ".parquet")):
        raise SystemExit("pipelines.convert: --preview_naming=manifest:COLUMN needs a manifest --input")
    if not 1 <= opts.compression_level <= 9:
        raise SystemExit("pipelines.convert: --compression_level must be 1 to 9")
    if opts.pyramid_levels < 1:
        raise SystemExit("pipelines.convert: --pyramid_levels must be at least 1")
    if opts.summary_part:
        try:
            aggregate.check_part(opts.summary_part)
        except ValueError as exc:
            raise SystemExit(f"pipelines.convert: {exc}") from exc


def settings_of(opts: ConvertOptions) -> ConvertSettings:
    shared = opts.view_as(JobOptions)
    return ConvertSettings(output=shared.output, overwrite=opts.overwrite, max_pixel_bytes=opts.view_as(PixelOptions).max_pixel_bytes,
                           compression_level=opts.compression_level, tilt=opts.tilt, irregular=opts.irregular,
                           store=opts.store,
                           four_d=not opts.stacks_3d, philips_scaling=opts.philips_scaling,
                           pyramid_levels=opts.pyramid_levels,
                           previews=previews.PreviewSettings(opts.previews, opts.preview_format, opts.preview_naming))


def build(pipeline: beam.Pipeline, opts: ConvertOptions) -> dict:
    """Attach the convert graph to `pipeline`; returns the written table PCollections."""
    shared = opts.view_as(JobOptions)
    settings = settings_of(opts)
    tables = pipeline | "Convert" >> ConvertToVolumes(
        input_uri=shared.input, settings=settings, manifest_column=shared.manifest_column,
        deid=deid_settings("convert", opts), label_column=settings.previews.label_column,
        processes=localrun.processes_per_worker(opts, shared.processes))
    written = tables | "WriteSummary" >> WriteSummaryTables(shared.output, table_sharding(opts))
    part = summary_part_of(opts)
    if part:
        tables | "WriteSummaryPart" >> WriteSummaryPart(shared.output, part, table_sharding(opts))
    return written


def summary_part_of(opts: ConvertOptions) -> str | None:
    """--summary_part, else series_shard_XX for a manifest shard --input (dicom_io.aggregate.default_part)."""
    return opts.summary_part or aggregate.default_part(opts.view_as(JobOptions).input or "")


def summarize(opts: ConvertOptions) -> None:
    print_summary(opts.view_as(JobOptions).output)


def run(argv: list[str] | None = None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Run the convert job; see pipelines.common.run_job."""
    return run_job(argv, ConvertOptions, validate, build, summarize, wait, extra=SHARED_OPTIONS)


def main() -> None:
    quiet_main(run, sys.argv[1:])


if __name__ == "__main__":
    main()
