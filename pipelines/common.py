"""What every dicomflow job shares: the common flags (defined once) and the run skeleton.

Beam parses every registered PipelineOptions class on every run and argparse refuses a flag
defined twice, so --input, --output, --manifest_column and --table_shards live here only,
and no flag is argparse-required (each job validates its own in `validate`).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Callable, TypeVar

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from dicom_io.deid import DeidSettings
from dicom_io.runlock import LockHeld, RunLock
from pipelines.report import print_counters

DEID_KEY_ENV = "DICOMFLOW_DEID_KEY"

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
        parser.add_argument("--table_shards", type=int, default=None,
                            help="Files per table, forced (default: as few as keep --rows_per_shard)")
        parser.add_argument("--rows_per_shard", type=int, default=500_000, help="Most rows per table file")


class DeidOptions(PipelineOptions):
    """De-identification flags, shared by every job that writes header values."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--deidentify", type=parse_bool, nargs="?", const=True, default=False,
                            help="Apply the DICOM PS3.15 Basic Confidentiality Profile to everything written")
        parser.add_argument("--deid_key", default=None,
                            help=f"Secret for the keyed pseudonyms (or set {DEID_KEY_ENV}; keep it out of logs)")
        parser.add_argument("--deid_keep_patient_characteristics", type=parse_bool, nargs="?", const=True,
                            default=False, help="Retain Patient Characteristics Option: keep PatientSex/PatientAge")
        parser.add_argument("--deid_keep_descriptions", type=parse_bool, nargs="?", const=True, default=False,
                            help="Retain Description Option: keep SeriesDescription")
        parser.add_argument("--allow_burned_in", type=parse_bool, nargs="?", const=True, default=False,
                            help="Convert instances whose BurnedInAnnotation is YES even when de-identifying")


def deid_settings(job: str, opts: PipelineOptions) -> DeidSettings | None:
    """DeidSettings when --deidentify is set (the key from --deid_key or the environment), else None."""
    deid = opts.view_as(DeidOptions)
    if not deid.deidentify:
        return None
    key = deid.deid_key or os.environ.get(DEID_KEY_ENV, "")
    if len(key) < 16:
        raise SystemExit(f"pipelines.{job}: --deidentify needs a secret of at least 16 characters "
                         f"(--deid_key or {DEID_KEY_ENV})")
    return DeidSettings(key, deid.deid_keep_patient_characteristics, deid.deid_keep_descriptions,
                        deid.allow_burned_in)


def require(job: str, opts: PipelineOptions, *names: str) -> None:
    """Exit with a usage message when a needed shared flag is missing or out of range."""
    shared = opts.view_as(JobOptions)
    missing = [f"--{name}" for name in names if not getattr(shared, name)]
    if missing:
        raise SystemExit(f"pipelines.{job}: {' and '.join(missing)} required")
    if (shared.table_shards or 1) <= 0 or shared.rows_per_shard <= 0:
        raise SystemExit(f"pipelines.{job}: --table_shards and --rows_per_shard must be positive")
    if "input" in names and not _input_exists(shared.input):
        raise SystemExit(f"pipelines.{job}: --input {shared.input} does not exist")


def _input_exists(input_uri: str) -> bool:
    """A local folder, file or the folder of a glob must exist (a typo must not give empty tables)."""
    if "://" in input_uri and not input_uri.startswith("file://"):
        return True  # listed by the job itself; an empty bucket prefix is reported there
    path = input_uri.removeprefix("file://")
    while any(c in path for c in "*?["):
        path = os.path.dirname(path)
    return os.path.exists(path or ".")


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
    if not wait:  # a launcher that returns cannot hold the lock: one run per OUT is the caller's to ensure
        return pipeline.run()
    lock = RunLock(opts.view_as(JobOptions).output, options_class.__name__.removesuffix("Options").lower())
    try:
        lock.acquire()
    except LockHeld as exc:
        raise SystemExit(f"dicomflow: {exc}") from exc
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        lock.release()
    print_counters(result)
    if summarize is not None and standard.runner in ("DirectRunner", "direct"):
        summarize(opts)
    return result


def quiet_main(run: Callable[[list[str]], object], argv: list[str]) -> None:
    """Console entry point: warnings only from libraries, then run."""
    logging.getLogger().setLevel(logging.WARNING)
    run(argv)
