"""templates/: the Flex Template (Dockerfile, launcher, metadata) and the summary check of the DAG.

Everything offline: the Dataflow job is translated with `--dry_run`, which builds the
Dataflow-adjusted pipeline proto (and the staged setup.py package) and stops before any
upload or API call.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import runpy
import shutil
import sys
import tarfile
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import setuptools
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2

from dicom_io import schemas
from pipelines import convert

ROOT = Path(__file__).resolve().parent.parent
FLEX = ROOT / "templates" / "flex"
IMAGE = "europe-west4-docker.pkg.dev/my-project/dicomflow/dicomflow:test"


# ---- helpers ----------------------------------------------------------------------------
def metadata() -> dict:
    return json.loads((FLEX / "metadata.json").read_text())


def option_actions() -> dict[str, argparse.Action]:
    """Every flag pipelines.convert reads (its own and the shared groups), by dest."""
    parser = argparse.ArgumentParser()
    for cls in convert.OPTION_CLASSES:
        cls._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile line, comments and continuations handled."""
    text = re.sub(r"\\\n", " ", (FLEX / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for ins, arg in dockerfile_instructions() if ins == "ARG" and "=" in arg)


def dockerfile_env() -> dict[str, str]:
    args = dockerfile_args()
    env = {}
    for ins, rest in dockerfile_instructions():
        if ins == "ENV":
            key, value = rest.split("=", 1)
            env[key] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value.strip('"'))
    return env


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not --from=stage)."""
    copies = []
    for ins, rest in dockerfile_instructions():
        if ins == "COPY" and "--from" not in rest:
            *sources, dest = rest.split()
            copies.append((sources, dest))
    return copies


def image_path_source(path: str) -> Path:
    """The repository file that the Dockerfile copies to `path` inside the image."""
    workdir = dockerfile_args()["WORKDIR"]
    for sources, dest in dockerfile_copies():
        target = dest if dest.startswith("/") else f"{workdir}/{dest}"
        if len(sources) == 1 and target.rstrip("/") == path:
            return ROOT / sources[0]
        if target.endswith("/") or target.rstrip("/") in (workdir, f"{workdir}/."):
            for source in sources:
                if f"{workdir}/{Path(source).name}" == path:
                    return ROOT / source
    raise AssertionError(f"nothing in the Dockerfile is copied to {path}")


def requirement_pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(3)
    return pins


def summary_check():
    spec = importlib.util.spec_from_file_location("summary_check", ROOT / "templates/composer/summary_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- metadata.json <-> ConvertOptions -----------------------------------------------------
def test_metadata_declares_exactly_the_convert_options():
    declared = [p["name"] for p in metadata()["parameters"]]
    assert len(declared) == len(set(declared))
    assert set(declared) == set(option_actions())


def _is_required(dest: str) -> bool:
    """Required as the job behaves: validate() refuses a run without it."""
    complete = {"input": "gs://in/x", "output": "gs://out/y"}
    argv = [f"--{k}={v}" for k, v in complete.items() if k != dest]
    try:
        convert.validate(PipelineOptions(argv).view_as(convert.ConvertOptions))
    except SystemExit:
        return True
    return False


@pytest.mark.parametrize("param", metadata()["parameters"], ids=lambda p: p["name"])
def test_metadata_parameter_agrees_with_its_option(param):
    action = option_actions()[param["name"]]
    assert param["label"].strip() and param["helpText"].strip()
    assert param["regexes"], "every parameter is validated before a launcher VM starts"
    assert param["isOptional"] is not _is_required(param["name"])
    if isinstance(action, argparse._StoreTrueAction) or action.type is convert.parse_bool:
        assert param["paramType"] == "BOOLEAN"
        assert param["regexes"] == ["^(true|false)$"]
    elif action.type is int:
        assert param["paramType"] == "NUMBER"
    else:
        assert action.type in (None, str)
        assert param.get("paramType", "TEXT") not in ("BOOLEAN", "NUMBER")
    if param["isOptional"] and action.default is not None:  # (deid_key has no default)
        expected = str(action.default).lower() if isinstance(action.default, bool) else str(action.default)
        assert param["defaultValue"] == expected
        for pattern in param["regexes"]:
            assert re.fullmatch(pattern, param["defaultValue"]), "the default must pass its own regex"


REGEX_SAMPLES = {
    "input": (["gs://archive/pacs/", "gs://b/export/**/*.dcm", "gs://b/out/manifest/instances-*.parquet",
               "gs://b/with space/x"],
              ["/local/folder", "s3://b/x", "gs://", "gs:/b/x", "gs://b/x\ny", "https://storage.googleapis.com/b"]),
    "output": (["gs://results/dicomflow/out", "gs://results/out/"], ["out", "/tmp/out", "gs://", "gcs://b/out"]),
    "manifest_column": (["uri", "local_file_path", "Source URI"], ["", "a\nb"]),
    "overwrite": (["true", "false"], ["True", "1", "yes", "", "truefalse"]),
    "max_pixel_bytes": (["4294967296", "1"], ["0", "-1", "4GiB", "1e9", "", "1.5"]),
    "table_shards": (["1", "128"], ["0", "-1", "auto", "", "1.0"]),
    "rows_per_shard": (["500000", "1000"], ["0", "-1", "", "5e5"]),
    "tilt": (["keep", "resample"], ["", "KEEP", "fail"]),
    "compression_level": (["1", "3", "9"], ["0", "10", "", "3.5"]),
    "previews": (["none", "middle", "all"], ["", "some"]),
    "preview_format": (["jpeg", "png"], ["jpg", ""]),
    "preview_naming": (["key", "sop", "manifest:instance_id"], ["manifest:", "name", ""]),
    "deid_key": (["a-long-enough-secret"], ["short", ""]),
    "irregular": (["keep", "resample", "fail"], ["", "drop"]),
    "store": (["directory", "zip"], ["", "sqlite", "ZIP"]),
}


@pytest.mark.parametrize("name", sorted(REGEX_SAMPLES))
def test_metadata_regexes_on_sample_values(name):
    param = next(p for p in metadata()["parameters"] if p["name"] == name)
    valid, invalid = REGEX_SAMPLES[name]
    # The service requires a parameter to match its regexes: all of them.
    for value in valid:
        assert all(re.fullmatch(p, value) for p in param["regexes"]), value
    for value in invalid:
        assert not all(re.fullmatch(p, value) for p in param["regexes"]), value


def test_metadata_numbers_parse_as_their_options_do():
    actions = option_actions()
    numbers = [p for p in metadata()["parameters"] if p.get("paramType") == "NUMBER"]
    argv = [f"--{p['name']}={p['defaultValue']}" for p in numbers if "defaultValue" in p]
    opts = PipelineOptions(argv).get_all_options()  # shared (JobOptions) and convert flags alike
    for param in numbers:  # a number without a default (table_shards: chosen from the rows) has none
        assert opts[param["name"]] == actions[param["name"]].default


# ---- Dockerfile -------------------------------------------------------------------------
def test_every_copied_path_exists():
    copies = dockerfile_copies()
    assert copies
    for sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), source


def test_image_holds_what_the_package_and_launcher_need():
    copied = {source.rstrip("/") for sources, _ in dockerfile_copies() for source in sources}
    assert {"setup.py", "requirements.txt", "MANIFEST.in", "dicom_io", "transforms", "pipelines",
            "templates/flex/main.py"} <= copied


def test_beam_version_is_pinned_identically_everywhere(monkeypatch):
    froms = [rest for ins, rest in dockerfile_instructions() if ins == "FROM"]
    sdk = [f for f in froms if f.startswith("apache/beam_python3.11_sdk:")]
    assert len(sdk) == 1, froms
    image_beam = sdk[0].split()[0].split(":", 1)[1]
    assert froms[-1].startswith("apache/beam_python3.11_sdk:"), "the SDK image is the final stage"
    pins = requirement_pins((ROOT / "requirements.txt").read_text().splitlines())
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    runpy.run_path(str(ROOT / "setup.py"))  # setup.py's own requirement list, as pip would see it
    setup_pins = requirement_pins(captured["install_requires"])
    assert image_beam == pins["apache-beam"] == setup_pins["apache-beam"] == beam.__version__


def test_launcher_binary_comes_from_the_python311_launcher_image():
    instructions = dockerfile_instructions()
    launcher_from = next(rest for ins, rest in instructions if ins == "FROM" and "AS launcher" in rest)
    assert dockerfile_args()["LAUNCHER_IMAGE"].startswith("gcr.io/dataflow-templates-base/python311-template-launcher-base")
    assert launcher_from.startswith("${LAUNCHER_IMAGE}")
    assert ("COPY", "--from=launcher /opt/google/dataflow/python_template_launcher "
                    "/opt/google/dataflow/python_template_launcher") in instructions
    assert instructions[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')


def test_flex_template_environment():
    env = dockerfile_env()
    assert image_path_source(env["FLEX_TEMPLATE_PYTHON_PY_FILE"]) == FLEX / "main.py"
    assert image_path_source(env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"]) == ROOT / "setup.py"
    assert (FLEX / "main.py").is_file() and (ROOT / "setup.py").is_file()
    assert "FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE" not in env  # dependencies are preinstalled
    assert env["PIP_NO_DEPS"] == "True"


def test_installs_resolve_dependencies_before_pip_no_deps_is_set():
    instructions = dockerfile_instructions()
    runs = [i for i, (ins, rest) in enumerate(instructions) if ins == "RUN"]
    no_deps = next(i for i, (ins, rest) in enumerate(instructions) if ins == "ENV" and rest.startswith("PIP_NO_DEPS"))
    commands = [instructions[i][1] for i in runs]
    assert "pip install --no-cache-dir -r requirements.txt" in commands
    assert "pip install --no-cache-dir --no-deps ." in commands
    assert commands.index("pip check") > commands.index("pip install --no-cache-dir --no-deps .")
    assert max(runs) < no_deps


def test_cloudbuild_builds_this_dockerfile_from_the_repository_root():
    text = (FLEX / "cloudbuild.yaml").read_text()
    assert '"-f", "templates/flex/Dockerfile"' in text and '"."]' in text


# ---- launcher ---------------------------------------------------------------------------
def test_launcher_runs_pipelines_convert_with_its_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(convert, "run", lambda argv, wait=True: calls.append((argv, wait)))
    monkeypatch.setattr(sys, "argv", ["main.py", "--input=gs://a/b", "--output=gs://c/d", "--runner=DataflowRunner"])
    runpy.run_path(str(FLEX / "main.py"), run_name="__main__")
    # a launcher must submit and return, not wait for the job
    assert calls == [(["--input=gs://a/b", "--output=gs://c/d", "--runner=DataflowRunner"], False)]


# ---- the Dataflow job, translated offline ---------------------------------------------------
@pytest.fixture
def image_workdir(tmp_path):
    """The files the Dockerfile copies into /template, laid out as in the image."""
    workdir = tmp_path / "template"
    workdir.mkdir()
    for sources, dest in dockerfile_copies():
        for source in sources:
            target = workdir / (Path(source).name if dest.endswith("/") or dest == "." else dest)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target)
    return workdir


def test_pipeline_translates_into_a_dataflow_job(image_workdir, tmp_path, monkeypatch):
    fake = tmp_path / "credentials.json"
    fake.write_text(json.dumps({"type": "authorized_user", "client_id": "x", "client_secret": "x",
                                "refresh_token": "x"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(fake))
    options = PipelineOptions([
        "--runner=DataflowRunner", "--project=dicomflow-test", "--region=europe-west4",
        "--temp_location=gs://dicomflow-test/tmp", "--no_auth", "--dry_run=True",
        f"--sdk_container_image={IMAGE}", "--experiments=use_runner_v2",
        f"--setup_file={image_workdir / 'setup.py'}",  # what FLEX_TEMPLATE_PYTHON_SETUP_FILE makes the launcher pass
        "--input=gs://archive/pacs/", "--output=gs://results/out", "--table_shards=0",
    ])
    pipeline = beam.Pipeline(options=options)
    convert.build(pipeline, options.view_as(convert.ConvertOptions))
    job = pipeline.run().job  # --dry_run: the job is built, nothing is staged or submitted

    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for step in ("Convert/ListInputs", "Convert/ReadHeaders", "Convert/DropLocalizers", "Convert/ConvertSeries",
                 "WriteSummary"):
        assert step in names, sorted(n for n in names if n.count("/") < 2)
    assert any(n.startswith("Convert/ConvertSeries/") and "GroupBySeries" in n for n in names)

    environments = list(job.proto_pipeline.components.environments.values())
    assert environments
    staged = {}
    for environment in environments:
        assert environment.urn == "beam:env:docker:v1"
        assert beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image == IMAGE
        for artifact in environment.dependencies:
            role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload)
            staged[role.staged_name] = beam_runner_api_pb2.ArtifactFilePayload.FromString(artifact.type_payload).path
    # The setup.py package the workers install carries requirements.txt, which setup.py reads.
    with tarfile.open(staged["workflow.tar.gz"]) as sdist:
        members = {Path(m).relative_to(Path(m).parts[0]).as_posix() for m in sdist.getnames() if "/" in m}
    assert {"setup.py", "requirements.txt", "pipelines/convert.py", "dicom_io/schemas.py",
            "transforms/convert.py"} <= members


# ---- the DAG's summary check ------------------------------------------------------------
def _write_instances(output: Path, statuses: list[str]) -> None:
    rows = [schemas.instance_row(f"gs://archive/{i}.dcm", status, reason="" if status != "failed" else "not dicom: x",
                                 sop_instance_uid=f"1.2.{i}") for i, status in enumerate(statuses)]
    summary = output / schemas.SUMMARY_DIR / schemas.SUMMARY_INSTANCES_PREFIX
    summary.mkdir(parents=True)
    half = len(rows) // 2  # two shards, as --table_shards=0 may write
    for index, part in enumerate((rows[:half], rows[half:])):
        table = pa.Table.from_pylist(part, schema=schemas.INSTANCES_SCHEMA)
        pq.write_table(table, summary / f"{schemas.SUMMARY_INSTANCES_PREFIX}-{index:05d}-of-00002.parquet")


def test_summary_check_mirrors_the_output_contract():
    check = summary_check()
    name = schemas.SUMMARY_INSTANCES_PREFIX
    assert check.INSTANCES_GLOB == f"{schemas.SUMMARY_DIR}/{name}/{name}-*.parquet"
    assert check.FAILED == schemas.FAILED
    assert check.STATUS_COLUMN in schemas.INSTANCES_SCHEMA.names


def test_summary_check_counts_statuses(tmp_path):
    _write_instances(tmp_path, ["converted"] * 90 + ["skipped"] * 5 + ["failed"] * 5)
    check = summary_check()
    assert check.status_counts(str(tmp_path)) == {"converted": 90, "skipped": 5, "failed": 5}
    assert check.check_failed_share(str(tmp_path) + "/", 0.05) == {"converted": 90, "skipped": 5, "failed": 5}


def test_summary_check_fails_past_the_threshold(tmp_path):
    _write_instances(tmp_path, ["converted"] * 94 + ["failed"] * 6)
    check = summary_check()
    with pytest.raises(ValueError, match=r"6 of 100 input files failed \(6\.0%\)"):
        check.check_failed_share(str(tmp_path), 0.05)
    assert check.check_failed_share(str(tmp_path), 0.06)["failed"] == 6


def test_summary_check_fails_without_a_table_or_rows(tmp_path):
    check = summary_check()
    with pytest.raises(ValueError, match="no instances table"):
        check.check_failed_share(str(tmp_path / "missing"))
    _write_instances(tmp_path, [])
    with pytest.raises(ValueError, match="no rows"):
        check.check_failed_share(str(tmp_path))
    with pytest.raises(ValueError, match="within"):
        check.check_failed_share(str(tmp_path), 5)
