"""End to end: pipelines.convert over the generated corpus, every output of the contract checked."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter

import numpy as np
import pytest
import zarr

from dicom_io import schemas
from dicom_io.tables import read_table
from dicom_io.volume import slice_md5
from pipelines.convert import run
from tests import synthetic
from tests.conftest import RUNNER_ARGS, all_files


def _series(out):
    return {(r["series_instance_uid"], r["stack_index"]): r for r in read_table(out, "series").to_pylist()}


def _expected_hu(spec, seed=0):
    """The volume a correct converter writes: slices sorted along +normal, in HU."""
    normal = synthetic.slice_normal(spec.iop)
    order = sorted(range(len(spec.positions)), key=lambda i: float(np.dot(spec.positions[i], normal)))
    return np.stack([synthetic.slice_pixels(spec, i, seed).astype(np.float64) * spec.slope + spec.intercept
                     for i in order])


def test_every_input_file_is_in_the_instances_table_exactly_once(corpus, converted):
    uris = read_table(converted, "instances").column("source_uri").to_pylist()
    assert Counter(uris) == Counter(all_files(corpus.root))


def test_instance_statuses_and_reasons(corpus, converted):
    rows = {r["source_uri"]: r for r in read_table(converted, "instances").to_pylist()}
    assert rows[corpus.localizers[0]]["status"] == "skipped"
    assert rows[corpus.localizers[0]]["reason"].startswith("localizer")
    for path in corpus.not_dicom + corpus.broken:
        assert rows[path]["status"] == "failed" and rows[path]["reason"].startswith("not dicom"), rows[path]
    dup_pairs = [(d, o) for e in corpus.expected.values() for d, o in e.get("duplicate_of", {}).items()]
    for dup, original in dup_pairs:  # one of the two byte-identical files is kept, the other recorded
        pair = sorted([rows[dup], rows[original]], key=lambda r: r["status"])
        assert [r["status"] for r in pair] == ["converted", "skipped"]
        assert pair[1]["reason"].startswith("duplicate")
    converted_n = sum(1 for r in rows.values() if r["status"] == "converted")
    expected_n = sum(e["n_files"] for e in corpus.expected.values() if e["kind"] != "localizer")
    assert converted_n == expected_n


@pytest.mark.parametrize("kind", ["regular", "irregular"])
def test_volumes_hold_hu_in_geometric_order(corpus, converted, kind):
    series = _series(converted)
    matching = {uid: exp for uid, exp in corpus.expected.items() if exp["kind"] == kind}
    assert matching
    for uid, exp in matching.items():
        row = series[(uid, 0)]
        assert row["status"] == "converted" and row["dtype"] == "int16"
        volume = zarr.open_group(row["zarr_uri"], mode="r")["0"]
        assert volume.shape == exp["shape"]
        assert np.array_equal(volume[:], _expected_hu(exp["spec"]))


def test_geometry_and_spacing_are_what_the_positions_show(corpus, converted):
    series = _series(converted)
    for uid, exp in corpus.expected.items():
        if exp["kind"] == "regular":
            row = series[(uid, 0)]
            assert row["geometry"] == "regular"
            assert row["spacing"][0] == pytest.approx(exp["spacing"])
            assert row["spacing"][1:] == pytest.approx(list(exp["spec"].pixel_spacing))
        elif exp["kind"] == "irregular":
            row = series[(uid, 0)]
            assert row["geometry"] == "irregular_spacing" and row["spacing"][0] is None
            assert row["max_gap"] == pytest.approx(2 * exp["spacing"])


def test_multi_echo_series_becomes_one_4d_array_of_echoes(corpus, converted):
    series = _series(converted)
    uid = next(u for u, e in corpus.expected.items() if e["kind"] == "multi_echo")
    [row] = [r for (u, _), r in series.items() if u == uid]
    assert row["split_by"] == ["echo"] and row["n_slices"] == 10 and row["n_volumes"] == 2
    assert [v["echo"] for v in json.loads(row["volumes"])] == [1, 2] and schemas.stack_attributes_of(row) == {}
    volume = zarr.open_group(row["zarr_uri"], mode="r")["0"][:]
    assert volume.shape[:2] == (2, 10)
    for t, spec in enumerate(corpus.expected[uid]["spec"]):
        assert np.array_equal(volume[t], _expected_hu(spec))


def test_zarr_attributes_series_json_and_slices_csv_agree(corpus, converted):
    for row in read_table(converted, "series").to_pylist():
        key = row["series_key"]
        group = zarr.open_group(row["zarr_uri"], mode="r")
        dicom = group.attrs["dicom"]
        record = json.loads(open(schemas.series_json_uri(converted, key)).read())
        assert record["series_key"] == key == dicom["series_key"]
        assert record["affine_lps"] == dicom["affine_lps"] and record["geometry"] == row["geometry"]
        assert record["provenance"]["source_count"] == row["n_slices"] * row["n_volumes"]
        ome = group.attrs["ome"]["multiscales"][0]
        assert [a["name"] for a in ome["axes"]] == ["t", "z", "y", "x"][(row["n_volumes"] == 1):]
        with open(schemas.slices_csv_uri(converted, key)) as fh:
            slices = list(csv.DictReader(fh))
        volume = group["0"][:]
        if row["n_volumes"] == 1:
            volume = volume[np.newaxis]  # (t, z, y, x) either way
        assert [(int(s["t_index"]), int(s["z_index"])) for s in slices] == [
            (t, z) for t in range(volume.shape[0]) for z in range(volume.shape[1])]
        affine = np.array(dicom["affine_lps"])
        for s in slices:
            z = int(s["z_index"])
            assert s["pixel_md5"] == slice_md5(volume[int(s["t_index"]), z])
            # the affine puts voxel (0, 0, z) exactly at that slice's ImagePositionPatient
            assert affine @ [0, 0, z, 1] == pytest.approx([float(s["ipp_x"]), float(s["ipp_y"]), float(s["ipp_z"]), 1],
                                                          abs=1e-3 if row["geometry"] == "regular" else 1.5)


def test_series_tags_are_carried(converted):
    rows = read_table(converted, "series").to_pylist()
    ct = [r for r in rows if r["modality"] == "CT"]
    assert ct and all(r["kvp"] == 120.0 and r["patient_id"] == "SYNTH0000" for r in ct)
    assert all(r["manufacturer"] == "dicomflow-synthetic" and r["window_center"] == [40.0] for r in ct)


def test_rerun_reuses_committed_series_and_redoes_partial_ones(corpus, tmp_path):
    out = str(tmp_path / "out")
    run(["--input", corpus.root, "--output", out, *RUNNER_ARGS])
    before = _snapshot(out)
    series = read_table(out, "series").to_pylist()
    victim = series[0]["series_key"]
    os.remove(schemas.series_json_uri(out, victim))  # a crash before the commit record
    with open(os.path.join(out, "volumes", f"{victim}.zarr", "0", "zarr.json"), "w") as fh:
        fh.write("{ partial")  # ... left a damaged volume behind
    result = run(["--input", corpus.root, "--output", out, *RUNNER_ARGS])
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    assert counters["series_converted"] == 1 and counters["series_reused"] == len(series) - 1
    assert _snapshot(out) == before


def _snapshot(out):
    """Bytes of every file under OUT, tables included (their shards are deterministic)."""
    return {os.path.relpath(path, out): open(path, "rb").read() for path in all_files(out)}


def test_manifest_input_with_named_column(corpus, tmp_path):
    manifest = tmp_path / "extract.csv"
    keep = [p for e in corpus.expected.values() if e["kind"] == "regular" for p in e["files"]]
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["instance_id", "local_file_path"])
        writer.writerows([i, p] for i, p in enumerate(keep + corpus.not_dicom))
    out = str(tmp_path / "out")
    run(["--input", str(manifest), "--manifest_column", "local_file_path", "--output", out, *RUNNER_ARGS])
    instances = read_table(out, "instances").to_pylist()
    assert sorted(r["source_uri"] for r in instances) == sorted(keep + corpus.not_dicom)
    assert Counter(r["status"] for r in instances) == {"converted": len(keep), "failed": 1}


def test_a_missing_input_folder_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        run(["--input", str(tmp_path / "no-such-folder"), "--output", str(tmp_path / "out"), *RUNNER_ARGS])
    assert not (tmp_path / "out").exists()
