"""The Composer DAGs: they parse, have the expected tasks, and render the right launch bodies.

Runs only in the Airflow venv (`make test-dag`); `make test` never collects this folder.
No metadata database: the DAGs are parsed with DagBag and templates rendered with a hand-built
context (params, Variables, logical date, try number), as a task run would render them.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import sys
import tempfile
from types import SimpleNamespace

HERE = pathlib.Path(__file__).resolve().parent
# Before Airflow is imported: its configuration is read once, at import.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(HERE)
sys.path.insert(0, str(HERE))  # as Composer puts dags/ on sys.path, for summary_check

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from google.cloud.dataflow_v1beta3.types import LaunchFlexTemplateParameter  # noqa: E402

try:
    from airflow.dag_processing.dagbag import DagBag  # Airflow 3
except ImportError:  # pragma: no cover - Airflow 2
    from airflow.models import DagBag

JOB_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # Dataflow's rule for job names
VARIABLES = {
    "dicomflow_input": "gs://archive/pacs/",
    "dicomflow_output": "gs://results/dicomflow/out/",
    "dicomflow_template_path": "gs://results/templates/dicomflow-convert.json",
    "dicomflow_manifest_template_path": "gs://results/templates/dicomflow-manifest.json",
    "dicomflow_project": "my-project",
    "dicomflow_region": "europe-west4",
    "dicomflow_service_account": "dicomflow-worker@my-project.iam.gserviceaccount.com",
    "dicomflow_temp_location": "gs://results/tmp",
    "dicomflow_sdk_container_image": "europe-west4-docker.pkg.dev/my-project/dicomflow/dicomflow:v1",
}


class FakeVariables:
    """Stands in for the `var.value` accessor: Variable lookups without a database."""

    def __init__(self, values: dict[str, str]):
        self._values = values

    def get(self, key: str, default=None):
        return self._values.get(key, default)


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(dag_folder=str(HERE))


def context(dag, *, variables=VARIABLES, conf=None, logical_date="2026-03-01", try_number=1) -> dict:
    """What a task run puts in the template context, for one DAG run."""
    ctx = {
        "params": {**dag.params.validate(), **(conf or {})},
        "var": {"value": FakeVariables(variables)},
        "ti": SimpleNamespace(try_number=try_number),
        "dag_run": SimpleNamespace(run_after=datetime.datetime(2026, 3, 2, 13, 5, 9)),
    }
    if logical_date:
        stamp = datetime.datetime.fromisoformat(logical_date)
        ctx.update(ds=stamp.strftime("%Y-%m-%d"), ds_nodash=stamp.strftime("%Y%m%d"),
                   ts_nodash=stamp.strftime("%Y%m%dT%H%M%S"))
    return ctx


def rendered(dag, task_id: str, **kwargs) -> dict:
    task = dag.get_task(task_id)
    ctx = context(dag, **kwargs)
    return {field: task.render_template(getattr(task, field), ctx) for field in task.template_fields}


def test_dags_load_without_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"dicomflow_convert", "dicomflow_crawl_then_convert"}


def test_convert_dag_tasks(dagbag):
    dag = dagbag.dags["dicomflow_convert"]
    assert dag.task_ids == ["convert", "check_summary"]
    assert dag.get_task("convert").downstream_task_ids == {"check_summary"}
    assert type(dag.get_task("convert")).__name__ == "DataflowStartFlexTemplateOperator"
    assert dag.schedule == "@daily"
    assert dag.max_active_runs == 1


def test_crawl_dag_runs_manifest_then_convert(dagbag):
    dag = dagbag.dags["dicomflow_crawl_then_convert"]
    assert set(dag.task_ids) == {"crawl_manifest", "convert", "check_summary"}
    assert dag.get_task("crawl_manifest").downstream_task_ids == {"convert"}
    assert dag.get_task("convert").downstream_task_ids == {"check_summary"}


def test_convert_body_from_variables(dagbag):
    dag = dagbag.dags["dicomflow_convert"]
    fields = rendered(dag, "convert")
    launch = fields["body"]["launchParameter"]
    assert fields["project_id"] == "my-project"
    assert fields["location"] == "europe-west4"
    assert launch["containerSpecGcsPath"] == "gs://results/templates/dicomflow-convert.json"
    assert launch["parameters"] == {
        "input": "gs://archive/pacs/",
        "output": "gs://results/dicomflow/out",
        "manifest_column": "uri",
        "overwrite": "false",
        "max_pixel_bytes": "4294967296",
        "rows_per_shard": "500000",
        "number_of_worker_harness_threads": "8",
    }
    env = launch["environment"]
    assert env["serviceAccountEmail"] == VARIABLES["dicomflow_service_account"]
    assert env["tempLocation"] == env["stagingLocation"] == "gs://results/tmp"
    assert env["sdkContainerImage"] == VARIABLES["dicomflow_sdk_container_image"]
    assert env["machineType"] == "n2-highmem-4"
    assert env["maxWorkers"] == "50" and env["diskSizeGb"] == "30"
    assert env["additionalExperiments"] == ["use_runner_v2"]
    # Nothing left unrendered, and the body is what the launch API accepts: known field names,
    # string parameters (a misspelled key or an int parameter fails to parse here).
    assert "{{" not in repr(fields)
    parsed = LaunchFlexTemplateParameter.from_json(json.dumps(launch), ignore_unknown_fields=False)
    assert parsed.environment.max_workers == 50 and parsed.environment.disk_size_gb == 30


def test_params_override_variables(dagbag):
    dag = dagbag.dags["dicomflow_convert"]
    conf = {"input": "gs://other/archive.parquet", "output": "gs://other/out", "overwrite": True,
            "manifest_column": "local_file_path", "max_workers": 200, "machine_type": "n2-highmem-8"}
    launch = rendered(dag, "convert", conf=conf)["body"]["launchParameter"]
    assert launch["parameters"]["input"] == "gs://other/archive.parquet"
    assert launch["parameters"]["output"] == "gs://other/out"
    assert launch["parameters"]["overwrite"] == "true"
    assert launch["parameters"]["manifest_column"] == "local_file_path"
    assert launch["environment"]["maxWorkers"] == "200"
    assert launch["environment"]["machineType"] == "n2-highmem-8"


def test_job_name_unique_per_logical_date_and_try(dagbag):
    dag = dagbag.dags["dicomflow_convert"]
    names = {
        rendered(dag, "convert", logical_date=day, try_number=attempt)["body"]["launchParameter"]["jobName"]
        for day in ("2026-03-01", "2026-03-02") for attempt in (1, 2)
    }
    assert names == {"dicomflow-convert-20260301t000000-1", "dicomflow-convert-20260301t000000-2",
                     "dicomflow-convert-20260302t000000-1", "dicomflow-convert-20260302t000000-2"}
    assert all(JOB_NAME.match(name) for name in names)
    assert dag.get_task("convert").append_job_name is False  # no random suffix on top


def test_job_name_without_logical_date(dagbag):
    """Airflow 3 runs triggered without a logical date have no ts_nodash: use run_after."""
    dag = dagbag.dags["dicomflow_convert"]
    name = rendered(dag, "convert", logical_date=None)["body"]["launchParameter"]["jobName"]
    assert name == "dicomflow-convert-20260302t130509-1"
    assert JOB_NAME.match(name)


def test_crawl_dag_converts_from_the_manifest(dagbag):
    dag = dagbag.dags["dicomflow_crawl_then_convert"]
    crawl = rendered(dag, "crawl_manifest")["body"]["launchParameter"]
    assert crawl["containerSpecGcsPath"] == "gs://results/templates/dicomflow-manifest.json"
    assert crawl["parameters"]["input"] == "gs://archive/pacs/"
    assert crawl["parameters"]["output"] == "gs://results/dicomflow/out/manifest"
    assert crawl["jobName"] == "dicomflow-manifest-20260301t000000-1"
    convert = rendered(dag, "convert", conf={"manifest_column": "local_file_path"})["body"]["launchParameter"]
    assert convert["containerSpecGcsPath"] == "gs://results/templates/dicomflow-convert.json"
    assert convert["parameters"]["input"] == "gs://results/dicomflow/out/manifest/instances/instances-*.parquet"
    assert convert["parameters"]["output"] == "gs://results/dicomflow/out"
    # The crawl's table names its files in `uri`, whatever column the crawl's own input used.
    assert convert["parameters"]["manifest_column"] == "uri"
    for launch in (crawl, convert):
        LaunchFlexTemplateParameter.from_json(json.dumps(launch), ignore_unknown_fields=False)
    crawl = rendered(dag, "crawl_manifest", conf={"manifest_column": "local_file_path"})["body"]["launchParameter"]
    assert crawl["parameters"]["manifest_column"] == "local_file_path"


def test_defaults_when_no_variable_is_set(dagbag):
    """Parsing and rendering never need a Variable to exist; region falls back to us-central1."""
    dag = dagbag.dags["dicomflow_convert"]
    fields = rendered(dag, "convert", variables={})
    assert fields["location"] == "us-central1"
    assert fields["project_id"] == ""  # the hook then uses the connection's project
    assert fields["body"]["launchParameter"]["environment"]["machineType"] == "n2-highmem-4"


def write_instances(root: pathlib.Path, statuses: list[str]) -> str:
    summary = root / "summary" / "instances"
    summary.mkdir(parents=True)
    table = pa.table({"source_uri": [f"gs://a/{i}.dcm" for i in range(len(statuses))], "status": statuses})
    pq.write_table(table, summary / "instances-00000-of-00001.parquet")
    return str(root)


def test_check_task_fails_the_run_past_the_threshold(dagbag, tmp_path):
    dag = dagbag.dags["dicomflow_convert"]
    check = dag.get_task("check_summary")
    kwargs = check.render_template(check.op_kwargs, context(dag, conf={"output": str(tmp_path)}))
    assert kwargs == {"output": str(tmp_path), "max_failed_share": "0.05"}
    write_instances(tmp_path, ["converted"] * 18 + ["failed"] * 2)
    with pytest.raises(ValueError, match="2 of 20 input files failed"):
        check.python_callable(**kwargs)
    assert check.python_callable(output=str(tmp_path), max_failed_share="0.1") == {"converted": 18, "failed": 2}
