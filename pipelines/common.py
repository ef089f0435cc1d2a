"""What every dicomflow job shares: the common flags (defined once) and the run skeleton.

Beam parses every registered PipelineOptions class on every run and argparse refuses a flag
defined twice, so --input, --output, --manifest_column and --table_shards live here only,
and no flag is argparse-required (each job validates its own in `validate`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, TypeVar

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from dicom_io import debris, progress, storage
from dicom_io.deid import DeidSettings
from dicom_io.errors import StorageError
from dicom_io.inputs import ManifestError, check_manifest
from dicom_io.pixels import DEFAULT_MAX_PIXEL_BYTES
from dicom_io.runlock import LockHeld, RunLock
from pipelines import cli, localrun
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
        parser.add_argument("--processes", type=int, default=None,
                            help="Processes per Beam worker for header parsing and volume assembly (default: "
                                 "every core on a local in-process run, 1 on Dataflow or with --direct_num_workers)")


class PixelOptions(PipelineOptions):
    """Bounds on decoding, shared by every job that decodes pixels (convert, verify)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--max_pixel_bytes", type=int, default=DEFAULT_MAX_PIXEL_BYTES,
                            help="Refuse instances whose decoded pixels would exceed this many bytes")


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
        raise cli.UsageError(f"pipelines.{job}: --deidentify needs a secret of at least 16 characters "
                         f"(--deid_key or {DEID_KEY_ENV})")
    return DeidSettings(key, deid.deid_keep_patient_characteristics, deid.deid_keep_descriptions,
                        deid.allow_burned_in)


def require(job: str, opts: PipelineOptions, *names: str) -> None:
    """Exit with a usage message when a needed shared flag is missing or out of range."""
    shared = opts.view_as(JobOptions)
    missing = [f"--{name}" for name in names if not getattr(shared, name)]
    if missing:
        raise cli.UsageError(f"pipelines.{job}: {' and '.join(missing)} required")
    if (shared.table_shards or 1) <= 0 or shared.rows_per_shard <= 0:
        raise cli.UsageError(f"pipelines.{job}: --table_shards and --rows_per_shard must be positive")
    if "input" in names and not _input_exists(shared.input):
        raise cli.UsageError(f"pipelines.{job}: --input {shared.input} does not exist")
    if "input" in names:
        try:
            check_manifest(shared.input, shared.manifest_column)
        except (ManifestError, OSError) as exc:
            raise cli.UsageError(f"pipelines.{job}: --input: {exc} (--manifest_column names the URI column)") from exc


def _input_exists(input_uri: str) -> bool:
    """A local folder, file or the folder of a glob must exist (a typo must not give empty tables)."""
    if "://" in input_uri and not input_uri.startswith("file://"):
        return True  # listed by the job itself; an empty bucket prefix is reported there
    path = input_uri.removeprefix("file://")
    while any(c in path for c in "*?["):
        path = os.path.dirname(path)
    return os.path.exists(path or ".")


def job_name(options_class: type[PipelineOptions]) -> str:
    """`convert` for ConvertOptions: the name in messages, the lock and `python -m pipelines.NAME`."""
    return options_class.__name__.removesuffix("Options").lower()


def _prog(job: str) -> str:
    base = os.path.basename(sys.argv[0] if sys.argv else "")
    if base == "dicomflow":
        return f"dicomflow {job}"
    return base if base.startswith("dicomflow-") else f"python -m pipelines.{job}"


def _parse(job: str, argv: list[str], groups: list[tuple[str, type[PipelineOptions]]]) -> PipelineOptions:
    """--help / --help_beam, then refuse unknown flags, then Beam's own parse."""
    if any(a in ("-h", "--help") for a in argv):
        description = (sys.modules[groups[0][1].__module__].__doc__ or "").strip()
        cli.help_parser(_prog(job), description, groups).print_help()
        raise SystemExit(0)
    if cli.BEAM_HELP_FLAG in argv:
        cli.print_beam_help(_prog(job))
        raise SystemExit(0)
    cli.check_flags(job, argv, [cls for _, cls in groups])
    return PipelineOptions(argv)


def check_output(job: str, output: str) -> None:
    """An --output that is a file, or a folder that cannot be written, is said before anything runs."""
    if storage.is_remote(output):
        return
    path = output.removeprefix("file://")
    if os.path.exists(path) and not os.path.isdir(path):
        raise cli.UsageError(f"pipelines.{job}: --output {output} is a file, not a folder")


def run_job(argv: list[str] | None, options_class: type[O], validate: Callable[[O], None],
            build: Callable[[beam.Pipeline, O], object], summarize: Callable[[O], None] | None,
            wait: bool = True, extra: tuple[tuple[str, type[PipelineOptions]], ...] = ()
            ) -> beam.runners.runner.PipelineResult:
    """Parse, validate, build and run; with `wait`, block, then print counters and (locally) a summary.

    A Flex Template launcher passes wait=False: it must submit the job and return.
    `extra`: the shared option groups this job reads besides JobOptions, as (title, class), for --help.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    job = job_name(options_class)
    options = _parse(job, argv, [(job, options_class), ("shared by every job", JobOptions), *extra])
    runner = localrun.runner_for(options, argv)
    opts = options.view_as(options_class)
    validate(opts)
    output = opts.view_as(JobOptions).output
    check_output(job, output)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline, opts)
    if not wait:  # a launcher that returns cannot hold the lock: one run per OUT is the caller's to ensure
        return pipeline.run()
    lock = _acquire(job, output)
    try:
        debris.sweep(output)
        with progress.display(opts.view_as(cli.CliOptions).progress, local=runner is not None):
            result = pipeline.run()
            result.wait_until_finish()
    finally:
        lock.release()
    if result.state != PipelineState.DONE:
        raise cli.JobFailed(f"the runner ended the job in state {result.state}")
    print_counters(result)
    if summarize is not None and runner is not None:
        summarize(opts)
    return result


def _acquire(job: str, output: str) -> RunLock:
    """OUT's run lock; a held lock or an unwritable OUT is one line, not a traceback."""
    lock = RunLock(output, job)
    try:
        return lock.acquire()
    except LockHeld as exc:
        raise cli.JobFailed(str(exc)) from exc
    except (StorageError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ else exc
        reason = getattr(cause, "strerror", None) or str(cause)
        raise cli.JobFailed(f"cannot write to --output {output}: {reason} ({lock.uri})") from exc


def quiet_main(run: Callable[[list[str]], object], argv: list[str],
               status: Callable[[list[str]], int] | None = None) -> None:
    """Console entry point: warnings only from libraries, then run and exit with the job's true status."""
    logging.getLogger().setLevel(logging.WARNING)
    if cli.DEBUG_FLAG not in argv:  # Beam logs a failed step's traceback; the one line below says it
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    module = run.__module__
    if module == "__main__":  # python -m pipelines.NAME
        module = getattr(sys.modules["__main__"].__spec__, "name", module)
    sys.exit(cli.main(module.rsplit(".", 1)[-1], run, argv, status))
