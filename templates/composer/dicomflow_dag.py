"""Cloud Composer 3 (Airflow 3) DAGs that run the dicomflow Flex Templates on Dataflow.

Two DAGs from one factory:
- `dicomflow_convert`: convert INPUT into OUT, then check OUT/summary/instances/instances-*.parquet;
- `dicomflow_crawl_then_convert`: run the `manifest` template into OUT/manifest/ first, then
  convert from OUT/manifest/instances/instances-*.parquet, then the same check.

Every setting is a DAG param (editable per run in the trigger form); an empty param falls back
to an Airflow Variable `dicomflow_<name>`, read through Jinja when a task renders, so this file
parses without a metadata database. Upload this file and `summary_check.py` to the
environment's dags/ folder (see templates/README.md).
"""

from __future__ import annotations

import datetime

from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.sdk import DAG, Param, task

# Job names must match [a-z]([-a-z0-9]*[a-z0-9])?: the logical timestamp lowercased (the `T`),
# or, for a run triggered without a logical date, when it was scheduled to run; plus the try
# number so that a retry never collides with the job of the failed try.
JOB_SUFFIX = ("{{ (ts_nodash if ts_nodash is defined else dag_run.run_after.strftime('%Y%m%dT%H%M%S'))"
              " | lower }}-{{ ti.try_number }}")

# The column of pipelines.manifest's instances table (dicom_io.schemas.MANIFEST_INSTANCES_SCHEMA)
# that holds the file URIs: what convert reads when it runs from a crawl.
MANIFEST_URI_COLUMN = "uri"

# Dataflow worker settings for big archives; README "Worker settings" explains each.
WORKER_DEFAULTS = {
    "machine_type": "n2-highmem-4",
    "max_workers": 50,
    "disk_size_gb": 30,
    "number_of_worker_harness_threads": 8,
}


def setting(name: str, default: str = "", *, folder: bool = False) -> str:
    """Jinja for param `name`, else Variable `dicomflow_<name>`, else `default`; rendered at run time.

    `folder` drops trailing slashes so that paths can be joined with "/".
    """
    value = f"(params.{name} or var.value.get('dicomflow_{name}', {default!r}))"
    return f"{{{{ {value}.rstrip('/') }}}}" if folder else f"{{{{ {value} }}}}"


def _text_param(description: str, default: str = "") -> Param:
    return Param(default, type="string", description=description)


def _params(crawl_first: bool) -> dict[str, Param]:
    """The trigger form: job parameters, where things live, worker settings, the check threshold."""
    params = {
        "input": _text_param("DICOM archive (gs:// prefix or glob); empty: Variable dicomflow_input"
                             if crawl_first else
                             "gs:// prefix, glob or manifest table; empty: Variable dicomflow_input"),
        "output": _text_param("Output root gs://...; empty: Variable dicomflow_output"),
        "manifest_column": _text_param("Column with file URIs when the input is a manifest table; "
                                       "empty: Variable dicomflow_manifest_column, else uri"),
        "overwrite": Param(False, type="boolean", description="Rewrite series already committed"),
        "max_pixel_bytes": Param(4294967296, type="integer", minimum=1,
                                 description="Refuse instances decoding to more bytes than this"),
        "rows_per_shard": Param(500000, type="integer", minimum=1,
                                description="Most rows per table file; the shard count of each table follows "
                                            "from its rows (no hot key at the end of the job)"),
        "template_path": _text_param("gs:// path of the convert template spec; empty: Variable "
                                     "dicomflow_template_path"),
        "project": _text_param("GCP project; empty: Variable dicomflow_project, else the connection's"),
        "region": _text_param("Dataflow region; empty: Variable dicomflow_region, else us-central1"),
        "service_account": _text_param("Worker service account email; empty: Variable "
                                       "dicomflow_service_account"),
        "temp_location": _text_param("gs:// temp and staging folder; empty: Variable dicomflow_temp_location"),
        "sdk_container_image": _text_param("The template's image (also the worker container); "
                                           "empty: Variable dicomflow_sdk_container_image"),
        "machine_type": _text_param(f"Worker machine type; empty: Variable dicomflow_machine_type, "
                                    f"else {WORKER_DEFAULTS['machine_type']}"),
        "max_workers": Param(WORKER_DEFAULTS["max_workers"], type="integer", minimum=1,
                             description="Autoscaling ceiling"),
        "disk_size_gb": Param(WORKER_DEFAULTS["disk_size_gb"], type="integer", minimum=10,
                              description="Worker boot disk (only shuffle spill lands on disk)"),
        "number_of_worker_harness_threads": Param(WORKER_DEFAULTS["number_of_worker_harness_threads"],
                                                  type="integer", minimum=1,
                                                  description="DoFn threads per worker process"),
        "max_failed_share": Param(0.05, type="number", minimum=0, maximum=1,
                                  description="Fail the run when more than this share of input files failed"),
    }
    if crawl_first:
        params["manifest_template_path"] = _text_param(
            "gs:// path of the manifest template spec; empty: Variable dicomflow_manifest_template_path")
    return params


def _environment() -> dict:
    """FlexTemplateRuntimeEnvironment shared by both launches."""
    return {
        "serviceAccountEmail": setting("service_account"),
        "tempLocation": setting("temp_location"),
        "stagingLocation": setting("temp_location"),
        "sdkContainerImage": setting("sdk_container_image"),
        "machineType": setting("machine_type", WORKER_DEFAULTS["machine_type"]),
        "maxWorkers": "{{ params.max_workers }}",
        "diskSizeGb": "{{ params.disk_size_gb }}",
        "additionalExperiments": ["use_runner_v2"],
    }


def _launch(task_id: str, job: str, template_path: str, parameters: dict[str, str]) -> DataflowStartFlexTemplateOperator:
    """One Flex Template launch that waits (deferred, no worker slot held) for the job to end."""
    return DataflowStartFlexTemplateOperator(
        task_id=task_id,
        project_id=setting("project"),
        location=setting("region", "us-central1"),
        body={"launchParameter": {
            "jobName": f"{job}-{JOB_SUFFIX}",
            "containerSpecGcsPath": template_path,
            "parameters": {**parameters,
                           "number_of_worker_harness_threads": "{{ params.number_of_worker_harness_threads }}"},
            "environment": _environment(),
        }},
        append_job_name=False,  # the name is already unique per logical date and try
        deferrable=True,
    )


@task(retries=0)
def check_summary(output: str, max_failed_share: str) -> dict[str, int]:
    """Fail the DAG run when too many input files failed (counts by status go to XCom)."""
    from summary_check import check_failed_share  # beside this file in dags/; imported at run time only

    return check_failed_share(output, float(max_failed_share))


def make_dag(dag_id: str, *, crawl_first: bool, schedule: str | None = "@daily") -> DAG:
    """The convert DAG, optionally preceded by a manifest crawl whose table becomes the input."""
    output = setting("output", folder=True)
    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        catchup=False,
        max_active_runs=1,  # two runs into one OUT would race on the summary tables
        params=_params(crawl_first),
        default_args={"retries": 1, "retry_delay": datetime.timedelta(minutes=10)},
        tags=["dicomflow", "dataflow"],
        doc_md=__doc__,
    ) as dag:
        convert_input = setting("input")
        manifest_column = setting("manifest_column", "uri")
        crawl = None
        if crawl_first:
            manifest_out = f"{output}/manifest"
            crawl = _launch("crawl_manifest", "dicomflow-manifest", setting("manifest_template_path"), {
                "input": setting("input"),
                "output": manifest_out,
                "manifest_column": manifest_column,  # only used if the crawl's own input is a manifest
                "rows_per_shard": "{{ params.rows_per_shard }}",
            })
            # pipelines.manifest writes OUT/instances/instances-*.parquet, file URIs in column `uri`.
            convert_input = f"{manifest_out}/instances/instances-*.parquet"
            manifest_column = MANIFEST_URI_COLUMN
        convert = _launch("convert", "dicomflow-convert", setting("template_path"), {
            "input": convert_input,
            "output": output,
            "manifest_column": manifest_column,
            "overwrite": "{{ params.overwrite | string | lower }}",
            "max_pixel_bytes": "{{ params.max_pixel_bytes }}",
            "rows_per_shard": "{{ params.rows_per_shard }}",
        })
        check = check_summary(output=output, max_failed_share="{{ params.max_failed_share }}")
        if crawl is not None:
            crawl >> convert
        convert >> check
    return dag


convert_dag = make_dag("dicomflow_convert", crawl_first=False)
crawl_then_convert_dag = make_dag("dicomflow_crawl_then_convert", crawl_first=True)
