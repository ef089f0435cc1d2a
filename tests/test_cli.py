"""The command line as a user, cron or Composer meets it: exit status, first stderr line, files left.

Every job runs as its own process here (`python -m pipelines.NAME`, the console scripts), because
only a process shows the exit status a scheduler reads.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from dicom_io import debris, progress, schemas
from pipelines import cli
from tests import synthetic
from tests.conftest import REPO, RUNNER_ARGS, all_files

JOBS = ("convert", "manifest", "verify", "dataset")
BIN = os.path.dirname(sys.executable)


def _job(name: str, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipelines.{name}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


def _first_line(result: subprocess.CompletedProcess) -> str:
    return (result.stderr.strip().splitlines() or [""])[0]


@pytest.fixture(scope="module")
def small_input(tmp_path_factory) -> str:
    """Two small series (3 + 4 slices): enough for every job, quick to convert."""
    root = tmp_path_factory.mktemp("cli-in")
    for i, n in enumerate((3, 4)):
        spec = synthetic.SeriesSpec(
            series_uid=synthetic.uid_from("cli", i), study_uid=synthetic.uid_from("cli-study"), patient_id="CLI",
            modality="CT", positions=synthetic.axial_positions(n, 2.0), iop=synthetic.AXIAL_IOP,
            pixel_spacing=(1.0, 1.0), rows=16, cols=16, slice_thickness=2.0)
        synthetic.write_series(str(root), spec, seed=i)
    return str(root)


# ---------------------------------------------------------------------------------- help


@pytest.mark.parametrize("job", JOBS)
def test_help_lists_the_jobs_own_flags_first_with_defaults(job):
    own = {"convert": ["--previews", "--compression_level", "--max_pixel_bytes", "--deidentify"],
           "manifest": ["--all_tags", "--num_shards", "--previous"],
           "verify": ["--sample", "--report", "--max_pixel_bytes"],
           "dataset": ["--format", "--report_table", "--split"]}[job]
    result = _job(job, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert all(flag in text for flag in own + ["--input" if job in ("convert", "manifest") else "--output"]), text
    assert f"python -m pipelines.{job}" in text and "--help_beam" in text and "--runner" in text
    assert text.index(own[0]) < text.index("--runner"), "the job's flags come before the runner hint"
    assert "(default: " in text
    if job == "convert":
        assert "--previews {none,middle,all}" in text and "(default: none)" in text
        assert "--all_tags" not in text, "another job's flag in convert's help"


def test_help_beam_lists_beams_options():
    result = _job("convert", "--help_beam")
    assert result.returncode == 0, result.stderr
    assert all(flag in result.stdout for flag in ("--runner", "--direct_num_workers", "--project", "--temp_location"))


def test_console_scripts_and_the_umbrella_command_share_the_help():
    script = subprocess.run([os.path.join(BIN, "dicomflow-convert"), "--help"], capture_output=True, text=True)
    assert script.returncode == 0 and "--previews" in script.stdout and "usage: dicomflow-convert" in script.stdout
    umbrella = subprocess.run([os.path.join(BIN, "dicomflow"), "manifest", "--help"], capture_output=True, text=True)
    assert umbrella.returncode == 0 and "--all_tags" in umbrella.stdout and "usage: dicomflow manifest" in umbrella.stdout
    listing = subprocess.run([os.path.join(BIN, "dicomflow"), "--help"], capture_output=True, text=True)
    assert listing.returncode == 0 and all(job in listing.stdout for job in (*JOBS, "export", "aggregate"))
    export = subprocess.run([os.path.join(BIN, "dicomflow"), "export", "--help"], capture_output=True, text=True)
    assert export.returncode == 0 and "usage: dicomflow export" in export.stdout
    wrong = subprocess.run([os.path.join(BIN, "dicomflow"), "convrt"], capture_output=True, text=True)
    assert wrong.returncode == 2 and _first_line(wrong) == "dicomflow: unknown job 'convrt' (did you mean convert?)"


# ---------------------------------------------------------------------------------- usage errors: exit 2


def test_a_misspelt_flag_is_refused_before_anything_is_written(small_input, tmp_path):
    out = tmp_path / "out"
    result = _job("convert", "--input", small_input, "--output", str(out), "--preveiws", "middle")
    assert result.returncode == 2
    assert _first_line(result) == "pipelines.convert: unknown option --preveiws (did you mean --previews?)"
    assert not out.exists()


def test_another_jobs_flag_is_unknown_to_this_job(small_input, tmp_path):
    result = _job("manifest", "--input", small_input, "--output", str(tmp_path / "m"), "--previews", "middle")
    assert result.returncode == 2 and _first_line(result).startswith("pipelines.manifest: unknown option --previews")


def test_umbrella_command_refuses_a_typo_the_same_way(small_input, tmp_path):
    result = subprocess.run([os.path.join(BIN, "dicomflow"), "convert", "--input", small_input, "--output",
                             str(tmp_path / "o"), "--overwrit"], capture_output=True, text=True)
    assert result.returncode == 2
    assert _first_line(result) == "pipelines.convert: unknown option --overwrit (did you mean --overwrite?)"


@pytest.mark.parametrize("args, first_line", [
    (["--previews", "bogus"], "pipelines.convert: argument --previews: invalid choice: 'bogus'"),
    (["--compression_level", "12"], "pipelines.convert: --compression_level must be 1 to 9"),
    (["--table_shards", "x"], "pipelines.convert: argument --table_shards: invalid int value: 'x'"),
    (["stray"], "pipelines.convert: unexpected argument 'stray'"),
])
def test_a_bad_value_is_one_line_and_exit_2(small_input, tmp_path, args, first_line):
    result = _job("convert", "--input", small_input, "--output", str(tmp_path / "out"), *args)
    assert result.returncode == 2, result.stderr
    assert _first_line(result).startswith(first_line), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_input_and_output_that_is_a_file_name_the_path(tmp_path):
    missing = _job("convert", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"))
    assert missing.returncode == 2
    assert _first_line(missing) == f"pipelines.convert: --input {tmp_path / 'nope'} does not exist"
    afile = tmp_path / "a-file"
    afile.write_text("x")
    as_file = _job("manifest", "--input", str(tmp_path), "--output", str(afile))
    assert as_file.returncode == 2
    assert _first_line(as_file) == f"pipelines.manifest: --output {afile} is a file, not a folder"


def test_a_manifest_without_the_column_is_refused(small_input, tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in all_files(small_input)))
    result = _job("convert", "--input", str(manifest), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert _first_line(result).startswith(f"pipelines.convert: --input: manifest {manifest} has no column 'uri'")


# ---------------------------------------------------------------------------------- failures: exit 1


def test_a_held_lock_is_one_line_naming_the_holder(small_input, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    holder = {"job": "convert", "host": socket.gethostname(), "pid": os.getpid(), "token": "t",
              "heartbeat": time.time()}
    (out / "_dicomflow.lock").write_text(json.dumps(holder))
    result = _job("convert", "--input", small_input, "--output", str(out))
    assert result.returncode == 1
    assert _first_line(result).startswith(f"pipelines.convert: another dicomflow convert run writes to {out}")
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(out)) == ["_dicomflow.lock"]


def test_a_failure_inside_the_job_is_one_line_and_debug_shows_the_traceback(small_input, tmp_path):
    out = tmp_path / "blocked"
    out.mkdir()
    (out / schemas.VOLUMES_DIR).write_text("not a folder")
    plain = _job("convert", "--input", small_input, "--output", str(out))
    assert plain.returncode == 1
    assert _first_line(plain).startswith("pipelines.convert: failed: StorageError: cannot write "), plain.stderr
    assert str(out / schemas.VOLUMES_DIR) in _first_line(plain) and "Traceback" not in plain.stderr
    debug = _job("convert", "--input", small_input, "--output", str(out), "--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_one_line_reads_a_workers_traceback_text():
    text = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'a'\n\nDuring handling...\n"
            "dicom_io.errors.StorageError: cannot write /o/volumes/k.zarr: [Errno 28] No space left on device "
            "[while running 'Convert/AssembleVolumes']\n")
    line = cli.one_line(RuntimeError(text))
    assert line == ("StorageError: cannot write /o/volumes/k.zarr: [Errno 28] No space left on device "
                    "(in step Convert/AssembleVolumes)")


# ---------------------------------------------------------------------------------- success: exit 0


def test_every_job_exits_0_when_it_did_its_work(small_input, tmp_path):
    out, crawl = str(tmp_path / "out"), str(tmp_path / "crawl")
    for job, args in (("convert", ["--input", small_input, "--output", out]),
                      ("manifest", ["--input", small_input, "--output", crawl]),
                      ("verify", ["--output", out])):
        result = _job(job, *args, *RUNNER_ARGS)
        assert result.returncode == 0, f"{job}: exit {result.returncode}\n{result.stderr[-2000:]}"
        assert "counters:" in result.stdout


def test_flex_template_style_parameters_are_accepted(small_input, tmp_path):
    """Templates pass every parameter as --name=value, booleans as text."""
    result = _job("convert", f"--input={small_input}", f"--output={tmp_path / 'out'}", "--overwrite=false",
                  "--deidentify=false", "--table_shards=1", "--previews=none", "--runner=DirectRunner",
                  "--direct_num_workers=1")
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_local_run_leaves_no_grpc_server_behind(small_input, tmp_path):
    """The root cause of the SIGABRT at exit: Beam's DirectRunner tried Prism first and left that attempt's
    gRPC worker pool serving. The local runner is chosen explicitly now; nothing gRPC outlives the run."""
    from pipelines.convert import run

    run(["--input", small_input, "--output", str(tmp_path / "out")])
    serving = [t.name for t in threading.enumerate() if "_serve" in t.name]
    assert not serving, f"gRPC server threads still running after the job: {serving}"


def test_progress_is_shown_on_request_and_the_summary_stays(small_input, tmp_path):
    result = _job("convert", "--input", small_input, "--output", str(tmp_path / "out"), "--progress", "bar",
                  *RUNNER_ARGS)
    assert result.returncode == 0, result.stderr[-2000:]
    assert " files" in result.stderr, "no progress bar drawn"
    assert "counters:" in result.stdout and "series:" in result.stdout


def test_progress_lines_sum_every_process(tmp_path, monkeypatch, capsys):
    """The launcher sums what each worker process wrote; without a terminal it prints a line."""
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    with progress.display("log"):
        folder = os.environ[progress.ENV_DIR]
        with open(os.path.join(folder, "111.json"), "w") as handle:  # another worker process
            json.dump({"files_read": 5, "files_listed": 10}, handle)
        progress.add("files_read", 2)
        progress.flush()
        time.sleep(1.6)
    err = capsys.readouterr().err
    assert "progress: 7 of 10 files read" in err, err
    assert progress.ENV_DIR not in os.environ and not os.path.exists(folder)


# ---------------------------------------------------------------------------------- crash debris


def test_sweep_removes_what_a_crash_left_and_keeps_every_commit(tmp_path):
    out = tmp_path / "out"
    for folder in (schemas.SERIES_DIR, schemas.SLICES_DIR, schemas.SUMMARY_DIR):
        (out / folder).mkdir(parents=True)
    (out / schemas.SERIES_DIR / "good.json").write_text("{}")
    (out / schemas.SLICES_DIR / "good.csv").write_text("z_index\n")
    (out / schemas.VOLUMES_DIR / "good.zarr").mkdir(parents=True)
    (out / schemas.VOLUMES_DIR / "good.zarr" / "zarr.json").write_text("{}")
    (out / schemas.VOLUMES_DIR / "half.zarr" / "0").mkdir(parents=True)  # volume without its commit record
    (out / schemas.SLICES_DIR / "half.csv").write_text("z_index\n")
    (out / schemas.SLICES_DIR / ("half.csv.tmp-" + "a" * 32)).write_text("partial")
    (out / schemas.SUMMARY_DIR / "series").mkdir(parents=True, exist_ok=True)
    (out / schemas.SUMMARY_DIR / "series" / ("series-00000-of-00001.parquet.tmp-" + "b" * 32)).write_text("partial")
    swept = debris.sweep(str(out))
    assert swept == debris.Swept(temporary_files=2, partial_series=2)
    left = sorted(os.path.relpath(p, out) for p in all_files(str(out)))
    assert left == ["series/good.json", "slices/good.csv", "volumes/good.zarr/zarr.json"]
    assert debris.sweep(str(out)) == debris.Swept()
    shutil.rmtree(out)
    assert debris.sweep(str(out)) == debris.Swept()  # nothing there yet: nothing to do
