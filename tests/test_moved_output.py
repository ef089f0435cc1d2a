"""Contract 3: an OUT moved to another folder keeps every link (the `*_path` columns, relative to OUT).

One small corpus is converted with previews, turned into a labels and a vlm dataset, then the whole OUT is
moved with shutil.move: readers, loaders, MONAI and verify are pointed at the new place only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImaged

from dicom_io import readers, schemas, storage, tables
from dicom_io.monai_reader import DicomflowReader
from dicom_io.tables import read_table
from pipelines import dataset as dataset_job
from pipelines import verify as verify_job
from pipelines.convert import run as convert
from tests import synthetic
from tests.conftest import RUNNER_ARGS

SEED = 5
DESCRIPTIONS = {1: ("Sagittal T1", (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)), 2: ("Axial T2", synthetic.AXIAL_IOP)}


def _write_csv(path, header, rows) -> str:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return str(path)


def _make_out(tmp_path_factory) -> tuple[str, str, list[dict]]:
    """Three patients x two MR series, converted with --previews all, then a labels and a vlm dataset."""
    root, tables_dir = tmp_path_factory.mktemp("moved-in"), tmp_path_factory.mktemp("moved-tables")
    for k in range(3):
        study = synthetic.uid_from("moved-study", k)
        for number, (description, iop) in DESCRIPTIONS.items():
            spec = synthetic.SeriesSpec(
                series_uid=synthetic.uid_from("moved-series", k, number), study_uid=study, patient_id=f"P{k}",
                modality="MR", positions=synthetic.stack_positions(3, 4.0, (-20.0, -20.0, 0.0), iop), iop=iop,
                pixel_spacing=(5.0, 5.0), rows=8, cols=8, intercept=0.0, series_number=number,
                series_description=description, slice_thickness=4.0)
            synthetic.write_series(root / f"P{k}" / str(number), spec, seed=SEED)
    out = str(tmp_path_factory.mktemp("moved-first") / "OUT")
    convert(["--input", str(root), "--output", out, "--previews", "all", *RUNNER_ARGS])
    series = [r for r in read_table(out, "series").to_pylist() if r["status"] == schemas.CONVERTED]
    studies = sorted({s["study_instance_uid"] for s in series})
    train = _write_csv(tables_dir / "train.csv", ["study_id", "grade"],
                       [[st, f"g{i % 2}"] for i, st in enumerate(studies)])
    described = _write_csv(tables_dir / "descriptions.csv", ["study_id", "series_id", "series_description"],
                           [[s["study_instance_uid"], s["series_instance_uid"], s["series_description"]]
                            for s in series])
    reports = _write_csv(tables_dir / "reports.csv", ["study_id", "report_value"],
                         [[st, f"report {st}"] for st in studies])
    dataset_job.run(["--output", out, "--format", "labels", "--labels_table", train, "--series_descriptions", described,
                     "--split", "0.5,0.5,0", *RUNNER_ARGS])
    dataset_job.run(["--output", out, "--format", "vlm", "--report_table", reports, *RUNNER_ARGS])
    return str(root), out, series


def _csv(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def links(out: str) -> list[tuple[str, str | None, str]]:
    """(where, URI column value, path column value) for every URI of something under OUT, in every table,
    CSV and JSON that has one."""
    found = []
    for row in read_table(out, "series").to_pylist():
        if row["status"] == schemas.CONVERTED:
            found.append(("series table zarr", row["zarr_uri"], row["zarr_path"]))
            record = json.loads(storage.read_bytes(schemas.series_json_uri(out, row["series_key"])))
            found += [("series JSON zarr", record["zarr_uri"], record["zarr_path"]),
                      ("series JSON slices", record["slices_uri"], record["slices_path"])]
            slices = _csv(storage.read_bytes(schemas.slices_csv_uri(out, row["series_key"])))
            found += [("slices CSV preview", s["preview_uri"], s["preview_path"]) for s in slices]
    pairs = tables.read_shards(schemas.dataset_prefix(out, schemas.VLM, schemas.PAIRS_PREFIX), schemas.VLM_PAIRS_SCHEMA)
    images = pairs.to_pylist()
    for uri in storage.glob(schemas.dataset_prefix(out, schemas.LABELS, schemas.TRAIN_PREFIX) + "-*.csv"):
        images += _csv(storage.read_bytes(uri))
    for uri in storage.glob(schemas.dataset_prefix(out, schemas.LABELS, schemas.LABELS_PREFIX) + "-*.json"):
        images += [s for entry in json.loads(storage.read_bytes(uri)) for ss in entry["series"].values() for s in ss]
    for image in images:
        found += [(f"dataset {name}", image[f"{name}_uri"], image[f"{name}_path"]) for name in ("volume", "slices")]
        found.append(("dataset preview", image["preview_uri"], image["preview_path"]))
        found += [("dataset image", u, p) for u, p in zip(image.get("image_uris", []), image.get("image_paths", []))]
    return found


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """(OUT before, its links before, OUT after shutil.move, the voxels of every series before, the input)."""
    root, first, series = _make_out(tmp_path_factory)
    before_links = links(first)
    voxels = {}
    for row in series:
        with readers.open_volume(first, row["series_key"]) as vol:
            voxels[row["series_key"]] = np.asarray(vol.array[...])
    new = str(tmp_path_factory.mktemp("moved-second") / "OUT")
    shutil.move(first, new)
    assert not os.path.exists(first)
    return first, before_links, new, voxels, root


def test_every_path_column_names_the_object_its_uri_column_names(moved):
    first, before, _, _, _ = moved
    kinds = {where for where, _, _ in before}
    assert {"series table zarr", "series JSON slices", "slices CSV preview", "dataset volume", "dataset image"} <= kinds
    previews = [(u, p) for where, u, p in before if where == "slices CSV preview"]
    assert previews and all(u and p for u, p in previews)  # --previews all: every slice has one
    for where, uri, path in before:
        assert (uri or None) == (schemas.resolve_output_path(first, path) if path else None), where
        if path:
            assert not os.path.isabs(path) and ".." not in path.split("/"), (where, path)


def test_after_the_move_every_path_resolves_and_the_uris_are_stale(moved):
    _, _, new, _, _ = moved
    after = links(new)
    assert after
    for where, uri, path in after:
        if path:
            assert storage.exists(schemas.resolve_output_path(new, path)), (where, path)
            assert not os.path.exists(uri), (where, uri)  # the absolute column still names the old place


def test_open_volume_and_the_series_table_links_read_the_same_voxels(moved):
    _, _, new, voxels, _ = moved
    rows = readers.converted_rows(new)
    assert {r["series_key"] for r in rows} == set(voxels)
    for row in rows:
        key = row["series_key"]
        with readers.open_volume(new, key) as vol:
            assert np.array_equal(vol.array[...], voxels[key])
        with readers.open_series(new, row) as vol:
            assert vol.uri == schemas.resolve_output_path(new, row["zarr_path"])
            assert np.array_equal(vol.array[...], voxels[key])
        with readers.open_series(new, {**row, "zarr_path": None}) as vol:  # a contract-2 row: found by key
            assert np.array_equal(vol.array[...], voxels[key])


def test_volume_dataset_over_the_moved_out(moved):
    _, _, new, voxels, _ = moved
    data = readers.VolumeDataset(new, dtype=None)
    assert len(data) == len(voxels)
    for i in range(len(data)):
        item = data[i]
        assert np.array_equal(item["image"], voxels[item["series_key"]][np.newaxis])


def test_monai_reads_the_moved_datalist_and_the_path_columns(moved):
    _, _, new, voxels, _ = moved
    path = schemas.dataset_uri(new, schemas.LABELS, schemas.DATALIST_JSON)
    folder = os.path.dirname(path)
    items = [i for key in ("training", "validation") for i in load_decathlon_datalist(path, data_list_key=key)]
    explicit = [i for key in ("training", "validation")
                for i in load_decathlon_datalist(path, data_list_key=key, base_dir=folder)]
    assert len(items) == len(voxels) and items == explicit
    load = LoadImaged(keys="image", reader=DicomflowReader(), image_only=True)
    for item in items:
        assert item["image"] == schemas.zarr_uri(new, item["series_key"])
        image = load(item)["image"]
        assert np.array_equal(image.numpy(), voxels[item["series_key"]].transpose(2, 1, 0))
    by_path = LoadImaged(keys="image", reader=DicomflowReader(output=new), image_only=True)
    row = readers.converted_rows(new)[0]
    image = by_path({"image": row["zarr_path"]})["image"]
    assert np.array_equal(image.numpy(), voxels[row["series_key"]].transpose(2, 1, 0))


def test_verify_passes_over_the_moved_out(moved):
    _, _, new, voxels, _ = moved
    verify_job.run(["--output", new, *RUNNER_ARGS])
    rows = tables.read_shards(schemas.verify_prefix(new, schemas.VERIFY_PREFIX), schemas.VERIFY_SCHEMA).to_pylist()
    assert {r["series_key"] for r in rows} == set(voxels)
    assert all(r["status"] == schemas.OK for r in rows), [r["failures"] for r in rows]


def test_converting_again_into_a_copy_reuses_the_commits_and_links_the_rows_to_the_copy(moved, tmp_path):
    _, _, new, voxels, root = moved
    copy = str(tmp_path / "OUT")
    shutil.copytree(new, copy)
    records = {key: storage.read_bytes(schemas.series_json_uri(copy, key)) for key in voxels}
    convert(["--input", root, "--output", copy, "--previews", "all", *RUNNER_ARGS])
    assert {key: storage.read_bytes(schemas.series_json_uri(copy, key)) for key in voxels} == records  # reused
    rows = readers.converted_rows(copy)
    assert {r["series_key"] for r in rows} == set(voxels)
    for row in rows:
        assert row["zarr_uri"] == schemas.zarr_uri(copy, row["series_key"])
        assert row["zarr_path"] == f"volumes/{row['series_key']}.zarr"
