"""gs:// end to end against a real GCS API server on loopback (gcp-storage-emulator)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from dicom_io import readers, schemas
from dicom_io.tables import read_table
from pipelines.convert import run
from tests import synthetic
from tests.conftest import REPO, RUNNER_ARGS, all_files

MULTI_PROCESS = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
TEXT_SUFFIXES = (".json", ".csv")


@pytest.fixture(scope="module")
def gs_corpus(gcs, corpus):
    return gcs.upload_tree(corpus.root, "corpus")


@pytest.fixture(scope="module")
def gs_converted(gcs, gs_corpus):
    out = f"gs://{gcs.bucket}/out-clean"
    run(["--input", gs_corpus + "/", "--output", out, *RUNNER_ARGS])
    return out


def _gs_objects(gcs, out: str) -> dict[str, bytes]:
    prefix = out.split(f"gs://{gcs.bucket}/", 1)[1] + "/"
    return {name[len(prefix):]: gcs.read(name) for name in gcs.names(prefix)}


def _local_objects(out: str) -> dict[str, bytes]:
    return {os.path.relpath(p, out): open(p, "rb").read() for p in all_files(out)}


def _rows(out: str, name: str, replace: dict[str, str]) -> list[str]:
    rows = []
    for row in read_table(out, name).to_pylist():
        text = json.dumps(row, sort_keys=True, default=str)
        for old, new in replace.items():
            text = text.replace(old, new)
        rows.append(text)
    return sorted(rows)


def test_gs_to_gs_gives_the_same_volumes_and_tables_as_local(gcs, corpus, gs_corpus, gs_converted, converted):
    remote, local = _gs_objects(gcs, gs_converted), _local_objects(converted)
    assert set(remote) == set(local)
    replace = {gs_corpus: corpus.root, gs_converted: converted}
    for rel, data in local.items():
        if rel.startswith("summary/"):
            continue
        if rel.endswith(TEXT_SUFFIXES):
            text = remote[rel].decode()
            for old, new in replace.items():
                text = text.replace(old, new)
            if rel.startswith("series/"):  # the input fingerprint hashes the (different) source URIs
                a, b = json.loads(text), json.loads(data)
                a["provenance"].pop("input_fingerprint"), b["provenance"].pop("input_fingerprint")
                assert a == b, rel
            else:
                assert text.encode() == data, rel
        else:  # every Zarr object, chunks and metadata, byte for byte
            assert remote[rel] == data, rel
    for name in ("series", "instances"):
        assert _rows(gs_converted, name, replace) == _rows(converted, name, {})


def test_sharded_volumes_read_back_from_gcs(gs_converted, corpus):
    series = read_table(gs_converted, "series").to_pylist()
    uid = next(u for u, e in corpus.expected.items() if e["kind"] == "regular")
    row = next(r for r in series if r["series_instance_uid"] == uid)
    assert row["zarr_path"] == f"volumes/{row['series_key']}.zarr"  # contract 3: relative to OUT on gs:// too
    assert schemas.resolve_output_path(gs_converted, row["zarr_path"]) == row["zarr_uri"]
    with readers.open_series(gs_converted, row) as vol:
        assert vol.uri == row["zarr_uri"] and vol.shape == corpus.expected[uid]["shape"]
    volume = zarr.open_group(row["zarr_uri"], mode="r", storage_options={"use_listings_cache": False})["0"]
    spec = corpus.expected[uid]["spec"]
    first = synthetic.slice_pixels(spec, 0, 0).astype(np.int32) + int(spec.intercept)
    assert volume.shape == corpus.expected[uid]["shape"]
    assert np.array_equal(volume[0], first)  # z=0 is the lowest position = acquisition index 0 here


def test_multi_process_workers_write_byte_identical_outputs(gcs, gs_corpus, gs_converted):
    out = f"gs://{gcs.bucket}/out-multi"
    run(["--input", gs_corpus + "/", "--output", out, *MULTI_PROCESS])
    clean, multi = _gs_objects(gcs, gs_converted), _gs_objects(gcs, out)
    assert set(clean) == set(multi)
    for rel in clean:
        assert multi[rel].replace(b"out-multi", b"out-clean") == clean[rel] or rel.startswith("summary/"), rel
    assert _rows(out, "instances", {out: gs_converted}) == _rows(gs_converted, "instances", {})


def test_manifest_on_gcs_listing_gcs_uris(gcs, corpus, gs_corpus, tmp_path):
    regular = [p for e in corpus.expected.values() if e["kind"] == "regular" for p in e["files"]]
    lines = ["instance_id,file_url"] + [f"{i},{gs_corpus}/{os.path.relpath(p, corpus.root)}" for i, p in enumerate(regular)]
    gcs.client.bucket(gcs.bucket).blob("manifests/extract.csv").upload_from_string("\n".join(lines) + "\n")
    out = f"gs://{gcs.bucket}/out-manifest"
    run(["--input", f"gs://{gcs.bucket}/manifests/*.csv", "--manifest_column", "file_url", "--output", out,
         *RUNNER_ARGS])
    rows = read_table(out, "instances").to_pylist()
    assert len(rows) == len(regular) and {r["status"] for r in rows} == {"converted"}
    assert all(r["source_uri"].startswith(gs_corpus + "/") for r in rows)


def _convert_cmd(src: str, out: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.convert", "--input", src + "/", "--output", out, *RUNNER_ARGS]


def test_killed_run_resumes_to_the_clean_result(gcs, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-corpus")
    rng_specs = []
    for i in range(12):  # enough series that the job is still writing when it is killed
        spec = synthetic.SeriesSpec(
            series_uid=synthetic.uid_from("crash", i), study_uid=synthetic.uid_from("crash-study"),
            patient_id="CRASH", modality="CT", positions=synthetic.axial_positions(24, 2.0),
            iop=synthetic.AXIAL_IOP, pixel_spacing=(1.0, 1.0), rows=128, cols=128, slice_thickness=2.0)
        synthetic.write_series(str(root), spec, seed=i)
        rng_specs.append(spec)
    src = gcs.upload_tree(str(root), "crash-corpus")
    clean, crashed = f"gs://{gcs.bucket}/crash-clean", f"gs://{gcs.bucket}/crash-resumed"
    env = {**os.environ, **gcs.env}
    subprocess.run(_convert_cmd(src, clean), cwd=REPO, env=env, check=True, capture_output=True)

    proc = subprocess.Popen(_convert_cmd(src, crashed), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = []
    deadline = time.monotonic() + 120
    while not committed and time.monotonic() < deadline and proc.poll() is None:
        committed = [n for n in gcs.names("crash-resumed/series/") if n.endswith(".json")]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # a real kill of the whole process group, mid-write
    proc.wait()
    at_kill = [n for n in gcs.names("crash-resumed/series/") if n.endswith(".json")]
    assert 1 <= len(at_kill) < len(rng_specs), "the kill must land part-way through the job"
    assert not gcs.names("crash-resumed/summary/")

    result = subprocess.run(_convert_cmd(src, crashed), cwd=REPO, env=env, check=True, capture_output=True, text=True)
    assert "series_reused=" in result.stdout  # committed series were not redone
    a, b = _gs_objects(gcs, clean), _gs_objects(gcs, crashed)
    assert set(a) == set(b)
    for rel in a:
        if rel.startswith("summary/"):
            continue
        assert b[rel].replace(b"crash-resumed", b"crash-clean") == a[rel], rel
    for name in ("series", "instances"):
        assert _rows(crashed, name, {crashed: clean}) == _rows(clean, name, {})
