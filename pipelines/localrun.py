"""The local runner, chosen explicitly: Beam's FnApiRunner, the one every test runs.

Beam 2.77's DirectRunner first tries the Prism runner, a Go binary it downloads; on a machine
without that download the attempt fails, but the gRPC worker pool it started for Prism stays up,
and its C++ threads abort the interpreter at exit now and then (SIGABRT after a complete run).
On a machine with the download the job runs on a runner no test runs. So `--runner` unset or
DirectRunner means the FnApiRunner (what DirectRunner falls back to), built here the same way;
`--runner PrismRunner` opts into Prism.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

from dicom_io.workers import default_processes

LOCAL_RUNNER_NAMES = ("", "direct", "directrunner")


def is_local(options: PipelineOptions) -> bool:
    """True when --runner is unset or names the DirectRunner."""
    runner = options.view_as(StandardOptions).runner
    return isinstance(runner, str | None) and (runner or "").lower() in LOCAL_RUNNER_NAMES


def processes_per_worker(options: PipelineOptions, requested: int | None) -> int:
    """Forked processes per Beam worker (dicom_io.workers): `requested`, else every core when the run is
    local and in-process, else 1 (Dataflow runs one SDK process per core; Beam's multi-process mode has
    its own worker processes)."""
    if requested:
        return requested
    direct = options.view_as(DirectOptions)
    in_process = direct.direct_num_workers == 1 and direct.direct_running_mode in (None, "in_memory")
    return default_processes() if is_local(options) and in_process else 1


def runner_for(options: PipelineOptions, argv: list[str]) -> fn_runner.FnApiRunner | None:
    """The FnApiRunner for a local run (None: Beam builds the runner --runner names)."""
    if not is_local(options):
        return None
    options.view_as(StandardOptions).runner = "DirectRunner"  # what the job reports
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=provision)
