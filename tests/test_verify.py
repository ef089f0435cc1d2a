"""dicom_io.verify: each check passes on a clean conversion and names what differs when something changed."""

from __future__ import annotations

import copy
import os
import shutil

import numpy as np
import pytest
import zarr

from dicom_io import schemas, storage, tables, verify
from dicom_io.tables import read_table
from pipelines.convert import run as convert
from tests import synthetic
from tests.conftest import RUNNER_ARGS


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """This module's own corpus (32 x 32) and conversion: tests may alter it, then restore it."""
    corpus = synthetic.make_corpus(tmp_path_factory.mktemp("verify-in"), seed=3, rows=32, cols=32)
    out = str(tmp_path_factory.mktemp("verify-out"))
    convert(["--input", corpus.root, "--output", out, *RUNNER_ARGS])
    series = {r["series_key"]: r for r in read_table(out, "series").to_pylist()}
    instances = read_table(out, "instances").to_pylist()
    return corpus, out, series, instances


def _of(instances, key):
    return [r for r in instances if r["series_key"] == key]


def _check(out, series, instances, key, **settings):
    return verify.verify_series(series[key], _of(instances, key), verify.VerifySettings(out, **settings))


def _slices(out, key):
    return tables.parse_slices_csv(storage.read_bytes(schemas.slices_csv_uri(out, key)))


def test_a_clean_conversion_passes_every_check(clean):
    _, out, series, instances = clean
    assert {r["geometry"] for r in series.values()} >= {"regular", "irregular_spacing"}
    for key, row in series.items():
        result = _check(out, series, instances, key)
        assert result["status"] == "ok" and result["checks_failed"] == 0, result["failures"]
        n = row["n_slices"]
        # commit + shape + n volume MD5s + n source MD5s + n positions (irregular: 2 + n-1) + sources + render
        assert result["checks_passed"] >= 3 * n
        assert result["thumbnails"] == list(verify.thumbnail_names(key))
        for name in result["thumbnails"]:
            assert storage.read_bytes(schemas.thumbnail_uri(out, name))[:2] == b"\xff\xd8"


def test_a_changed_slice_in_zarr_is_detected(clean, tmp_path):
    _, out, series, instances = clean
    copy_out = str(tmp_path / "out")
    shutil.copytree(out, copy_out)
    key = next(k for k, r in series.items() if r["geometry"] == "regular" and r["n_volumes"] == 1)
    volume = zarr.open_group(schemas.zarr_uri(copy_out, key), mode="r+")["0"]
    plane = volume[2]
    plane[5, 5] += 1  # one value of one slice
    volume[2] = plane
    result = _check(copy_out, series, instances, key)
    assert result["status"] == "failed" and result["checks_failed"] == 1
    assert result["failures"][0].startswith("volume: z=2: stored slice MD5")


def test_a_modified_source_file_is_detected(clean):
    _, out, series, instances = clean
    key = next(k for k, r in series.items() if r["geometry"] == "irregular_spacing")
    source = _slices(out, key)[4]["source_uri"]
    original = storage.read_bytes(source)
    changed = bytearray(original)
    changed[-2] ^= 0x01  # the last pixel's low byte
    try:
        storage.write_bytes(source, bytes(changed))
        result = _check(out, series, instances, key, thumbnails=False)
    finally:
        storage.write_bytes(source, original)
    assert result["status"] == "failed" and result["checks_failed"] == 1
    [failure] = result["failures"]
    assert failure.startswith(f"source: z=4: {source} frame 0 decodes to MD5 ") and "!= slices CSV" in failure


def test_an_unreadable_or_missing_source_is_reported_with_its_reason(clean):
    _, out, series, instances = clean
    key = next(k for k, r in series.items() if r["geometry"] == "regular")
    rows = _slices(out, key)
    truncated, gone = rows[0]["source_uri"], rows[1]["source_uri"]
    saved = {uri: storage.read_bytes(uri) for uri in (truncated, gone)}
    try:
        storage.write_bytes(truncated, saved[truncated][:400])
        os.remove(gone)
        result = _check(out, series, instances, key, thumbnails=False)
        missing = verify.missing_rows(next(r for r in instances if r["source_uri"] == gone))
    finally:
        for uri, data in saved.items():
            storage.write_bytes(uri, data)
    failures = "\n".join(result["failures"])
    assert result["checks_failed"] == 2
    assert f"source: z=0: {truncated}: " in failures and f"source: z=1: {gone}: source missing" in failures
    assert missing[0]["check"] == "missing" and missing[0]["source_uri"] == gone


def test_missing_commit_record_or_volume_fails_without_raising(clean, tmp_path):
    _, out, series, instances = clean
    key = next(iter(series))
    copy_out = str(tmp_path / "out")
    shutil.copytree(out, copy_out)
    storage.remove_tree(schemas.zarr_uri(copy_out, key))
    result = _check(copy_out, series, instances, key)
    assert result["status"] == "failed" and result["failures"][0].startswith("commit: cannot read")
    storage.remove(schemas.series_json_uri(copy_out, key))
    result = _check(copy_out, series, instances, key)
    assert result["failures"][0].startswith("commit: no commit record")


def test_a_path_link_that_names_another_file_fails_the_commit_check(clean):
    _, out, series, instances = clean
    key = next(k for k, r in series.items() if r["status"] == "converted")
    assert series[key]["zarr_path"] == f"volumes/{key}.zarr"
    wrong = {**series, key: {**series[key], "zarr_path": "volumes/other.zarr"}}
    result = verify.verify_series(wrong[key], _of(instances, key), verify.VerifySettings(out, thumbnails=False))
    assert result["status"] == "failed"
    assert result["failures"] == [f"commit: zarr_path 'volumes/other.zarr' does not name {schemas.zarr_uri(out, key)}"]


def _record(geometry="regular", n=4, step=(0.0, 0.0, 2.0)):
    affine = np.eye(4)
    affine[:3, 2] = step
    affine[:3, 3] = (-10.0, -20.0, 5.0)
    slices = [{"z_index": z, "ipp_x": -10.0 + z * step[0], "ipp_y": -20.0 + z * step[1],
               "ipp_z": 5.0 + z * step[2]} for z in range(n)]
    return {"geometry": geometry, "affine_lps": affine.tolist()}, slices


def test_geometry_every_slice_placed_by_the_affine():
    record, slices = _record("tilted", step=(0.0, 0.5, 2.0))
    assert verify.check_geometry(record, slices).passed == 4
    slices[2]["ipp_z"] += 0.01
    result = verify.check_geometry(record, slices)
    assert result.failed == 1 and "z=2" in result.failures[0] and "0.01 mm off" in result.failures[0]
    assert verify.check_geometry(record, slices, tol_mm=0.02).failed == 0


def test_geometry_irregular_first_last_and_increasing():
    record, slices = _record("irregular_spacing", n=5)
    slices[2]["ipp_z"] += 0.7  # a gap: only first and last must be exact
    assert verify.check_geometry(record, slices).failed == 0
    slices[3]["ipp_z"] = slices[2]["ipp_z"] - 0.1  # out of order along the normal
    result = verify.check_geometry(record, slices)
    assert result.failed == 1 and result.failures[0].startswith("geometry: z=3: position along the normal")


def test_geometry_without_affine_or_positions():
    record, slices = _record()
    assert verify.check_geometry({**record, "affine_lps": None}, slices).failures == [
        "geometry: geometry regular but no affine_lps"]
    assert verify.check_geometry({"geometry": "no_geometry", "affine_lps": None}, slices).passed == 0
    projection = [{"z_index": 0, "ipp_x": None, "ipp_y": None, "ipp_z": None}]
    assert verify.check_geometry({"geometry": "single_slice", "affine_lps": None}, projection).failed == 0
    assert verify.check_geometry({"geometry": "warped", "affine_lps": record["affine_lps"]}, slices).failed == 1


def test_instances_accounting_per_series():
    slices = [{"source_uri": u} for u in ("a", "b", "b", "c")]  # b: a two-frame source
    rows = [{"source_uri": u, "status": "converted", "reason": ""} for u in ("a", "b", "c")]
    assert verify.check_instances("k", slices, rows).passed == 3
    bad = copy.deepcopy(rows)
    bad[1]["status"], bad[1]["reason"] = "failed", "decode error: x"
    bad.append({"source_uri": "c", "status": "converted", "reason": ""})
    bad.append({"source_uri": "d", "status": "converted", "reason": ""})
    result = verify.check_instances("k", slices, bad)
    assert result.failed == 3
    assert any("b: instances row says failed (decode error: x)" in f for f in result.failures)
    assert any("c: 2 instances rows" in f for f in result.failures)
    assert any("d: instances row says converted into k, but no slice" in f for f in result.failures)
    assert verify.check_instances("k", slices, rows[:2]).failures == [
        "instances: c: a slice source with no instances row for this series"]
    assert verify.check_instances("k", slices[:1], rows, resampled=True).failed == 0


def test_failures_are_listed_up_to_a_limit_and_counted():
    result = verify.CheckResult("volume")
    for z in range(verify.MAX_LISTED + 5):
        result.fail(f"z={z}")
    assert result.failed == verify.MAX_LISTED + 5
    assert result.lines()[-1] == "volume: ... and 5 more" and len(result.lines()) == verify.MAX_LISTED + 1


def test_file_rows_duplicates_and_missing():
    rows = [{"source_uri": "x", "status": "converted", "series_key": "k1"},
            {"source_uri": "x", "status": "failed", "series_key": None}]
    [dup] = verify.duplicate_rows("x", rows)
    assert dup["check"] == "duplicate" and dup["detail"] == "2 instances rows (converted:k1, failed:-)"
    assert verify.duplicate_rows("x", rows[:1]) == []
    assert verify.missing_rows({"source_uri": "/nope", "status": "failed", "reason": "source disappeared: x"}) == []
    assert verify.missing_rows({"source_uri": "/nope", "status": "skipped", "reason": ""}, exists=lambda u: False)


def test_sample_rank_is_deterministic_and_depends_on_the_seed():
    keys = [f"series-{i}" for i in range(50)]
    first = sorted(keys, key=lambda k: verify.sample_rank(k, 1))[:5]
    assert first == sorted(keys, key=lambda k: verify.sample_rank(k, 1))[:5]
    assert first != sorted(keys, key=lambda k: verify.sample_rank(k, 2))[:5]
