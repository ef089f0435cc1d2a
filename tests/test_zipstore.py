"""pipelines.convert --store zip: one ZIP object per series, read with zarr's ZipStore, deterministic,
reused on re-runs, verified, and on gs://."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
import zarr
import zarr.storage

from dicom_io import readers, schemas, zipstore
from dicom_io.tables import read_table
from pipelines import verify as verify_job
from pipelines.convert import run
from tests.conftest import RUNNER_ARGS, all_files


def _counters(result) -> dict:
    return {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}


@pytest.fixture(scope="module")
def zipped(corpus, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("zip") / "out")
    run(["--input", corpus.root, "--output", out, "--store", "zip", *RUNNER_ARGS])
    return out


def _converted_keys(out):
    return sorted(r["series_key"] for r in read_table(out, "series").to_pylist() if r["status"] == "converted")


def test_zip_store_holds_the_same_volumes_as_the_directory_store(zipped, converted):
    keys = _converted_keys(zipped)
    assert keys == _converted_keys(converted) and keys
    assert sorted(os.listdir(os.path.join(zipped, "volumes"))) == [f"{k}.zarr.zip" for k in keys]
    for key in keys:
        uri = schemas.volume_uri(zipped, key, schemas.STORE_ZIP)
        store = zarr.storage.ZipStore(uri, mode="r")
        group = zarr.open_group(store, mode="r")
        reference = zarr.open_group(schemas.zarr_uri(converted, key), mode="r")
        assert np.array_equal(group["0"][:], reference["0"][:])
        assert group["0"].dtype == reference["0"].dtype
        assert dict(group.attrs) == dict(reference.attrs)
        store.close()
        record = json.loads(open(schemas.series_json_uri(zipped, key)).read())
        assert record["zarr_uri"] == uri
        with zipfile.ZipFile(uri) as archive:  # chunks are compressed already: stored, fixed timestamp
            assert all(i.compress_type == zipfile.ZIP_STORED and i.date_time == zipstore.ZIP_EPOCH
                       for i in archive.infolist())
        with readers.open_volume(zipped, key) as vol:
            assert vol.store_kind == schemas.STORE_ZIP
            assert np.array_equal(vol.array[:], reference["0"][:])


def test_slices_csv_and_tables_equal_the_directory_run_but_for_the_volume_uri_and_path(zipped, converted):
    for key in _converted_keys(zipped):
        assert open(schemas.slices_csv_uri(zipped, key), "rb").read() == \
            open(schemas.slices_csv_uri(converted, key), "rb").read()
    zip_rows = {r["series_key"]: r for r in read_table(zipped, "series").to_pylist()}
    for row in read_table(converted, "series").to_pylist():
        other = dict(zip_rows[row["series_key"]])
        if row["zarr_uri"]:
            assert other.pop("zarr_uri") == row["zarr_uri"].replace(converted, zipped) + ".zip"
            assert other.pop("zarr_path") == row["zarr_path"] + ".zip" == f"volumes/{row['series_key']}.zarr.zip"
            row.pop("zarr_uri"), row.pop("zarr_path")
        else:
            assert other.pop("zarr_uri") is None and row.pop("zarr_uri") is None
            assert other.pop("zarr_path") is None and row.pop("zarr_path") is None
        assert other == row


def _snapshot(out):
    return {os.path.relpath(p, out): open(p, "rb").read() for p in all_files(out)}


def test_zip_rerun_reuses_overwrite_rewrites_same_bytes_and_store_switch_redoes(corpus, tmp_path):
    out = str(tmp_path / "out")
    run(["--input", corpus.root, "--output", out, "--store", "zip", *RUNNER_ARGS])
    before = _snapshot(out)
    n = len(_converted_keys(out))
    again = run(["--input", corpus.root, "--output", out, "--store", "zip", *RUNNER_ARGS])
    assert _counters(again)["series_reused"] == n
    run(["--input", corpus.root, "--output", out, "--store", "zip", "--overwrite", *RUNNER_ARGS])
    assert _snapshot(out) == before  # deterministic bytes: the zips included
    switched = run(["--input", corpus.root, "--output", out, "--store", "directory", *RUNNER_ARGS])
    assert _counters(switched)["series_converted"] == n
    names = os.listdir(os.path.join(out, "volumes"))
    assert sorted(names) == [f"{k}.zarr" for k in _converted_keys(out)]  # the zips are gone


def test_verify_passes_on_a_zip_store(zipped):
    verify_job.run(["--output", zipped, *RUNNER_ARGS])
    assert verify_job.exit_status(["--output", zipped]) == 0
    failed, files = verify_job.problems(zipped)
    assert failed == [] and files == []


def test_a_failed_write_leaves_no_zip(tmp_path, monkeypatch):
    target = str(tmp_path / "volumes" / "k.zarr.zip")
    with pytest.raises(RuntimeError):
        with zipstore.staged_zip(target) as tree:
            os.makedirs(tree)
            open(os.path.join(tree, "zarr.json"), "w").write("{}")
            raise RuntimeError("stack failed part-way")
    assert not os.path.exists(target)


def test_gs_zip_store_round_trip(gcs, corpus, converted):
    src = gcs.upload_tree(corpus.root, "zip-corpus")
    out = f"gs://{gcs.bucket}/zip-out"
    run(["--input", src + "/", "--output", out, "--store", "zip", *RUNNER_ARGS])
    keys = _converted_keys(out)
    assert keys == _converted_keys(converted)
    names = gcs.names("zip-out/volumes/")
    assert names == sorted(f"zip-out/volumes/{k}.zarr.zip" for k in keys)  # one object per series
    for key in keys:
        with readers.open_volume(out, key) as vol:
            reference = zarr.open_group(schemas.zarr_uri(converted, key), mode="r")["0"][:]
            assert vol.store_kind == schemas.STORE_ZIP and np.array_equal(vol.array[:], reference)


def test_dataset_rows_point_at_the_zip_volume(zipped):
    from dicom_io import datasets

    for key in _converted_keys(zipped):
        assert datasets.series_images(zipped, key)["volume_uri"] == schemas.volume_uri(zipped, key, schemas.STORE_ZIP)


def test_zip_store_with_middle_previews_reads_the_scratch_volume(corpus, converted, tmp_path):
    import csv as csv_module

    uid, expected = next((u, e) for u, e in corpus.expected.items() if e["kind"] == "regular")
    manifest = tmp_path / "one.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv_module.writer(fh)
        writer.writerow(["uri"])
        writer.writerows([p] for p in expected["files"])
    out = str(tmp_path / "out")
    run(["--input", str(manifest), "--output", out, "--store", "zip", "--previews", "middle", *RUNNER_ARGS])
    (row,) = read_table(out, "series").to_pylist()
    key = row["series_key"]
    assert row["zarr_uri"] == schemas.volume_uri(out, key, schemas.STORE_ZIP)
    previews = sorted(os.listdir(os.path.join(out, "previews")))
    assert previews == [f"{key}.jpg", f"{key}_montage.jpg"]
    with readers.open_volume(out, key) as vol:
        assert np.array_equal(vol.array[:], zarr.open_group(schemas.zarr_uri(converted, key), mode="r")["0"][:])
    assert not any(name.startswith("dicomflow-zip-") for name in os.listdir(os.environ.get("TMPDIR", "/tmp")))


def test_dataset_job_over_a_zip_store_points_pairs_at_the_zip_objects(zipped, tmp_path):
    import csv as csv_module

    from pipelines import dataset as dataset_job

    series = [r for r in read_table(zipped, "series").to_pylist() if r["status"] == "converted"]
    table = tmp_path / "reports.csv"
    with open(table, "w", newline="") as fh:
        writer = csv_module.writer(fh)
        writer.writerow(["study_id", "series_number", "instance_id", "report_value"])
        writer.writerows([s["study_instance_uid"], s["series_number"], s["series_key"], "Findings."] for s in series)
    dataset_job.run(["--output", zipped, "--format", "vlm", "--report_table", str(table), *RUNNER_ARGS])
    pairs = [json.loads(line) for line in
             open(schemas.dataset_prefix(zipped, schemas.VLM, schemas.PAIRS_PREFIX) + "-00000-of-00001.jsonl").read().splitlines()]
    assert pairs and {p["series_key"] for p in pairs} == {s["series_key"] for s in series}
    for pair in pairs:
        assert pair["volume_uri"] == schemas.volume_uri(zipped, pair["series_key"], schemas.STORE_ZIP)
        assert pair["volume_path"] == f"volumes/{pair['series_key']}.zarr.zip"
        assert os.path.isfile(pair["volume_uri"])
