"""Faults around the convert job: workers killed mid-write, sources that vanish or change between
the header pass and the pixel pass, an output store that is full or refuses writes, and two runs
writing the same output at once. Local output here; tests/test_gcs.py has the gs:// kill test.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter

import pytest
import zarr

from dicom_io import debris as debris_module
from dicom_io import failpoints, schemas
from dicom_io.convert import ConvertSettings, convert_stack
from dicom_io.header import read_header
from dicom_io.plan import plan_series
from dicom_io.tables import read_table
from dicom_io.volume import slice_md5
from pipelines.convert import run
from tests import synthetic
from tests.badcorpus import job_finished
from tests.conftest import REPO, RUNNER_ARGS, all_files

N_SERIES = 12
# Where the kill lands (dicom_io.failpoints): a slices CSV under its temporary name (its volume is
# written, uncommitted); a series JSON under its temporary name; just after a commit; mid-tables.
KILL_POINTS = ("before_replace:/slices/:2", "before_replace:/series/:5", "after_replace:/series/:8",
               "before_replace:/summary/:1")


def _cmd(src: str, out: str) -> list[str]:
    """One process (--processes 1): the kill points of dicom_io.failpoints count per process."""
    return [sys.executable, "-m", "pipelines.convert", "--input", src, "--output", out, *RUNNER_ARGS,
            "--processes", "1"]


def _env() -> dict:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore"}


def _spec(i: int, n: int = 24, size: int = 128) -> synthetic.SeriesSpec:
    return synthetic.SeriesSpec(
        series_uid=synthetic.uid_from("faults", i), study_uid=synthetic.uid_from("faults-study"), patient_id="FAULTS",
        modality="CT", positions=synthetic.axial_positions(n, 2.0), iop=synthetic.AXIAL_IOP, pixel_spacing=(1.0, 1.0),
        rows=size, cols=size, slice_thickness=2.0)


@pytest.fixture(scope="module")
def fault_corpus(tmp_path_factory) -> str:
    """12 regular CT series of 24 slices, 128 x 128: enough that a kill lands part-way."""
    root = tmp_path_factory.mktemp("fault-corpus")
    for i in range(N_SERIES):
        synthetic.write_series(str(root), _spec(i), seed=i)
    return str(root)


def _tree(out: str) -> dict[str, bytes]:
    return {os.path.relpath(p, out): open(p, "rb").read() for p in all_files(out)}


@pytest.fixture(scope="module")
def clean(fault_corpus, tmp_path_factory) -> tuple[str, dict[str, bytes]]:
    """(OUT path, every file of a clean run written there): later runs reuse the same OUT path, so
    even the summary tables, which hold output URIs, must come out byte-identical."""
    out = str(tmp_path_factory.mktemp("faults") / "out")
    result = subprocess.run(_cmd(fault_corpus, out), cwd=REPO, env=_env(), capture_output=True, text=True)
    assert job_finished(result.returncode, result.stdout), result.stderr[-3000:]
    files = _tree(out)
    shutil.rmtree(out)
    return out, files


def _committed(out: str) -> list[str]:
    folder = os.path.join(out, schemas.SERIES_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.endswith(".json") and os.path.isfile(os.path.join(folder, f)))


def assert_committed_series_are_valid(out: str) -> int:
    """Every series JSON (the commit record) has its volume and CSV, and every slice matches its MD5."""
    names = _committed(out)
    for name in names:
        key = name[:-len(".json")]
        record = json.loads(open(os.path.join(out, schemas.SERIES_DIR, name), "rb").read())
        volume = zarr.open_group(schemas.zarr_uri(out, key), mode="r")["0"]
        assert list(volume.shape) == record["shape"], key
        with open(schemas.slices_csv_uri(out, key), newline="") as handle:
            md5s = [row["pixel_md5"] for row in csv.DictReader(handle)]
        assert [slice_md5(plane) for plane in volume[:]] == md5s, f"{key}: volume does not match its slices CSV"
    return len(names)


# ---------------------------------------------------------------------------------- killed workers


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_killed_run_resumes_to_byte_identical_outputs(fault_corpus, clean, kill_at):
    """SIGKILL the job at a fixed point (dicom_io.failpoints), re-run it, and compare every file under OUT
    with a clean run, tables included: nothing the killed run left (temporary names, a volume and CSV
    without their commit record, half the tables) survives the re-run."""
    out, expected = clean
    shutil.rmtree(out, ignore_errors=True)
    killed = subprocess.run(_cmd(fault_corpus, out), cwd=REPO, env={**_env(), failpoints.ENV: kill_at},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, f"not killed at {kill_at}: exit {killed.returncode}"
    at_kill = _committed(out)
    debris = [p for p in all_files(out) if debris_module.TEMPORARY.search(p)]
    if kill_at.startswith("before_replace:"):
        assert debris, f"the kill at {kill_at} left no temporary file: the point was not reached mid-write"
    if "/summary/" not in kill_at:
        assert not os.path.exists(os.path.join(out, schemas.SUMMARY_DIR))
    assert at_kill and len(at_kill) <= N_SERIES
    assert_committed_series_are_valid(out)  # what was committed before the kill is complete

    result = subprocess.run(_cmd(fault_corpus, out), cwd=REPO, env=_env(), capture_output=True, text=True)
    assert job_finished(result.returncode, result.stdout), result.stderr[-3000:]
    assert f"series_reused={len(at_kill)}," in result.stdout.replace("\n", ","), result.stdout  # committed: not redone
    got = _tree(out)
    assert sorted(got) == sorted(expected), "files differ: " + str(sorted(set(got) ^ set(expected))[:10])
    different = [rel for rel in expected if got[rel] != expected[rel]]
    assert not different, different[:10]


# ---------------------------------------------------------------------------------- sources that change


def _series_files(root: str, spec: synthetic.SeriesSpec) -> list[str]:
    return synthetic.write_series(root, spec, seed=0)


def test_manifest_listing_a_missing_file_records_source_disappeared(tmp_path):
    spec = _spec(100, n=4, size=32)
    paths = _series_files(str(tmp_path / "src"), spec)
    gone = str(tmp_path / "src" / "never-existed.dcm")
    manifest = tmp_path / "list.csv"
    manifest.write_text("uri\n" + "".join(f"{p}\n" for p in paths + [gone]))
    out = str(tmp_path / "out")
    run(["--input", str(manifest), "--output", out, *RUNNER_ARGS])
    rows = {r["source_uri"]: r for r in read_table(out, "instances").to_pylist()}
    assert set(rows) == set(paths) | {gone}
    assert rows[gone]["status"] == "failed" and rows[gone]["reason"].startswith("source disappeared: "), rows[gone]
    assert {rows[p]["status"] for p in paths} == {"converted"}


def _headers_then(tmp_path, change) -> tuple[list[str], dict, str, object]:
    """Read the headers of a 6-slice series, apply `change(paths_in_z_order)`, then convert the stack."""
    spec = _spec(200, n=6, size=32)
    paths = _series_files(str(tmp_path / "src"), spec)
    headers = []
    for p in paths:
        with open(p, "rb") as fp:
            headers.append(read_header(fp, p, os.path.getsize(p)))
    plan = plan_series(spec.series_uid, headers)
    (stack,) = plan.stacks
    in_z = [h.source_uri for h in stack.instances]
    change(in_z)
    out = str(tmp_path / "out")
    result = convert_stack(stack, ConvertSettings(output=out))
    return in_z, {r["source_uri"]: r for r in result.instances}, out, result


def _nothing_committed(out: str) -> None:
    assert _committed(out) == []
    assert not os.path.exists(os.path.join(out, schemas.VOLUMES_DIR)) or not os.listdir(
        os.path.join(out, schemas.VOLUMES_DIR))


def test_source_deleted_after_header_pass_is_recorded(tmp_path):
    in_z, rows, out, result = _headers_then(tmp_path, lambda paths: os.remove(paths[2]))
    assert result.series["status"] == "failed"
    assert rows[in_z[2]]["reason"].startswith("source disappeared: ")
    assert all(rows[p]["reason"].startswith("stack not converted: ") for p in in_z if p != in_z[2])
    _nothing_committed(out)


def test_source_truncated_after_header_pass_is_recorded(tmp_path):
    def truncate(paths):
        with open(paths[4], "r+b") as handle:
            handle.truncate(os.path.getsize(paths[4]) // 2)

    in_z, rows, out, result = _headers_then(tmp_path, truncate)
    assert result.series["status"] == "failed"
    assert rows[in_z[4]]["status"] == "failed"
    assert rows[in_z[4]]["reason"].startswith(("decode error: ", "pixel data shorter than declared",
                                                "source changed since its header was read")), rows[in_z[4]]
    _nothing_committed(out)


def test_source_rewritten_after_header_pass_is_not_converted_silently(tmp_path):
    """The file is replaced by another valid instance whose pixel data starts 16 bytes later (a longer
    SeriesDescription) and holds other values: the bytes at the recorded offset are no longer this
    image's pixels. Converting them anyway would write a wrong slice under a right-looking CSV row."""
    def rewrite(paths):
        target = paths[3]
        spec = synthetic.SeriesSpec(**{**_spec(200, n=6, size=32).__dict__, "series_description": "x" * 16})
        synthetic.write_instance(target + ".new", spec, 5, seed=7)
        os.replace(target + ".new", target)

    in_z, rows, out, result = _headers_then(tmp_path, rewrite)
    assert result.series["status"] == "failed", "a source that changed since its header was read was converted"
    assert rows[in_z[3]]["status"] == "failed" and rows[in_z[3]]["reason"]


def _read_header_fn(reader, uri: str) -> list:
    """ReadHeaderFn's outputs for one listed file; its element is (uri, size[, label]) by version."""
    for element in ((uri, None, None), (uri, None)):
        try:
            return list(reader.process(element))
        except ValueError as exc:
            if "unpack" not in str(exc):
                raise
    raise AssertionError("ReadHeaderFn accepts neither (uri, size) nor (uri, size, label)")


def test_transforms_record_a_source_that_vanished_between_the_two_passes(tmp_path):
    """The same through the Beam DoFns: ReadHeaderFn, then the file goes, then ConvertSeriesFn."""
    from transforms.headers import ReadHeaderFn
    from transforms.series import ConvertSeriesFn

    spec = _spec(300, n=5, size=32)
    paths = _series_files(str(tmp_path / "src"), spec)
    reader = ReadHeaderFn()
    reader.setup()
    headers = [h for p in paths for h in _read_header_fn(reader, p)]
    os.remove(paths[1])
    converter = ConvertSeriesFn(ConvertSettings(output=str(tmp_path / "out")))
    converter.setup()
    try:
        emitted = list(converter.process((spec.series_uid, headers)))
    finally:
        converter.teardown()
    rows = {o.value["source_uri"]: o.value for o in emitted if getattr(o, "tag", None) == ConvertSeriesFn.INSTANCES}
    assert set(rows) == set(paths)
    assert rows[paths[1]]["reason"].startswith("source disappeared: ")


# ---------------------------------------------------------------------------------- output store errors


@contextlib.contextmanager
def _tmpfs(path: str, options: str):
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True, text=True)
    if mounted.returncode != 0:  # a developer machine without root; under CI (root) this must work
        if os.environ.get("CI"):
            raise AssertionError(f"cannot mount a tmpfs for the store-error tests: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def _fails_loudly(result: subprocess.CompletedProcess, path: str, words: tuple[str, ...]) -> None:
    assert result.returncode != 0, "the job succeeded although the output could not be written"
    assert path in result.stderr, f"the error does not name {path}:\n{result.stderr[-2500:]}"
    assert any(w in result.stderr for w in words), result.stderr[-2500:]


def test_disk_full_fails_loudly_and_keeps_committed_series_valid(fault_corpus, tmp_path):
    out = str(tmp_path / "full")
    with _tmpfs(out, "size=1m"):
        result = subprocess.run(_cmd(fault_corpus, out), cwd=REPO, env=_env(), capture_output=True, text=True,
                                timeout=300)
        _fails_loudly(result, out, ("No space left on device", "Errno 28"))
        assert_committed_series_are_valid(out)


def test_read_only_output_fails_loudly(fault_corpus, tmp_path):
    out = str(tmp_path / "readonly")
    with _tmpfs(out, "ro,size=1m"):
        result = subprocess.run(_cmd(fault_corpus, out), cwd=REPO, env=_env(), capture_output=True, text=True,
                                timeout=300)
        _fails_loudly(result, out, ("Read-only file system", "Errno 30"))


def test_a_file_where_the_volumes_folder_should_be_fails_loudly(fault_corpus, tmp_path):
    out = tmp_path / "blocked"
    out.mkdir()
    (out / schemas.VOLUMES_DIR).write_text("not a folder")
    result = subprocess.run(_cmd(fault_corpus, str(out)), cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=300)
    _fails_loudly(result, str(out / schemas.VOLUMES_DIR), ("Not a directory", "File exists", "Errno 20", "Errno 17"))


def test_one_unwritable_commit_record_fails_the_job_and_leaves_the_rest_valid(fault_corpus, clean, tmp_path):
    """OUT/series/{key}.json is a folder for one series: that commit fails, the job fails naming it, and
    the series committed before it are complete."""
    expected = sorted(rel for rel in clean[1] if rel.startswith(schemas.SERIES_DIR + "/"))
    victim = expected[len(expected) // 2]
    out = tmp_path / "one-blocked"
    (out / victim / "blocker").mkdir(parents=True)
    result = subprocess.run(_cmd(fault_corpus, str(out)), cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=300)
    _fails_loudly(result, str(out / victim), ("Is a directory", "Errno 21", "Directory not empty", "Errno 39"))
    committed = assert_committed_series_are_valid(str(out))
    print(f"committed before the failure: {committed} of {len(expected)}")


# ---------------------------------------------------------------------------------- concurrent runs


CONCURRENT_ROUNDS = 3  # the race is timing-dependent: a few rounds catch it far more often than one


def test_two_runs_on_the_same_output_leave_no_corrupt_series(fault_corpus, tmp_path):
    """Two jobs started together on the same input and OUT, a few rounds: after both finish, every series
    with a JSON has a volume whose slices match the CSV MD5s, and the tables account for every file.
    One of the two may fail (it must say why); neither may leave a corrupt commit."""
    for round_ in range(CONCURRENT_ROUNDS):
        out = str(tmp_path / f"shared-{round_}")
        procs = [subprocess.Popen(_cmd(fault_corpus, out), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
        codes = [code for code, _, _ in results]
        errors = [[line for line in err.splitlines() if "Error" in line][-1:] for code, _, err in results if code]
        print(f"round {round_}: exit codes {codes} {errors}")
        assert any(job_finished(code, stdout) for code, stdout, _ in results), "neither run finished: " + "\n".join(err[-1500:] for _, _, err in results)
        assert assert_committed_series_are_valid(out) == N_SERIES, f"round {round_}, exits {codes}: {errors}"
        rows = read_table(out, "instances").to_pylist()
        assert Counter(r["source_uri"] for r in rows) == Counter(all_files(fault_corpus))
        assert {r["status"] for r in rows} == {"converted"}
        series = read_table(out, "series").to_pylist()
        assert len(series) == N_SERIES and {r["status"] for r in series} == {"converted"}


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_a_commit_made_between_another_writers_check_and_cleanup_is_not_left_pointing_at_nothing(
        tmp_path, monkeypatch):
    """The interleaving the concurrent test hits by chance, made deterministic: writer B finds no
    commit record, writer A then commits the same series, B deletes the volume as a partial one and
    is killed before it rewrites it. A's JSON must not be left describing a volume that is gone."""
    from dicom_io import convert as convert_module
    from dicom_io import storage

    spec = _spec(400, n=6, size=32)
    paths = _series_files(str(tmp_path / "src"), spec)
    headers = [read_header(open(p, "rb"), p, os.path.getsize(p)) for p in paths]
    (stack,) = plan_series(spec.series_uid, headers).stacks
    settings = ConvertSettings(output=str(tmp_path / "out"))
    real_remove_tree, real_writer = storage.remove_tree, convert_module.VolumeWriter
    state = {"a_started": False, "a_committed": False}

    def remove_tree(uri):
        if uri.endswith(".zarr") and not state["a_started"]:
            state["a_started"] = True
            convert_stack(stack, settings)  # writer A, start to commit, inside B's window
            assert storage.exists(schemas.series_json_uri(settings.output, stack.series_key))
            state["a_committed"] = True
        return real_remove_tree(uri)

    def writer(*args, **kwargs):
        if state["a_committed"]:
            raise _Killed()  # B dies right after its cleanup, before it rewrites anything
        return real_writer(*args, **kwargs)

    monkeypatch.setattr(storage, "remove_tree", remove_tree)
    monkeypatch.setattr(convert_module, "VolumeWriter", writer)
    with pytest.raises(_Killed):
        convert_stack(stack, settings)  # writer B
    monkeypatch.undo()
    assert state["a_committed"]
    assert assert_committed_series_are_valid(settings.output) in (0, 1)
