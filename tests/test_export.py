"""pipelines.export --format nifti and hdf5: read back with nibabel and h5py, against dcm2niix, 4D, append."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filter for reading --hdf5_compression zstd)
import nibabel as nib
import numpy as np
import pytest
import zarr

from dicom_io import export_hdf5, export_nifti, readers, schemas, tables
from pipelines import export
from pipelines.convert import run as convert
from tests.conftest import RUNNER_ARGS
from tests.export_corpus import exports_table, export_src, dcm2niix  # noqa: F401  (session fixture)
from tests.test_crosscheck import Nifti, _all_voxels, _nifti_indices, read_nifti


_exports = exports_table


@pytest.fixture(scope="module")
def nifti_dir(export_src, tmp_path_factory):
    to = tmp_path_factory.mktemp("nifti")
    export.run(["--output", export_src.out, "--to", str(to), "--format", "nifti", *RUNNER_ARGS])
    return to


# ---- nifti -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["axial", "oblique", "tilted", "irregular", "float", "pet", "mr", "monochrome1",
                                  "CT_small.dcm", "MR_small.dcm", "693_UNCI.dcm", "MR2_UNCI.dcm"])
def test_nifti_holds_the_volume_in_xyz_with_the_ras_affine(export_src, nifti_dir, name):
    key = export_src.key(name)
    row = _exports(nifti_dir)[key]
    assert row["status"] == "exported"
    assert row["reason"].startswith("irregular spacing") == (name == "irregular")
    image = nib.load(schemas.nifti_uri(str(nifti_dir), key))
    with readers.open_volume(export_src.out, key) as vol:
        volume, ras = vol.array[:], vol.affine_ras
    data = np.asanyarray(image.dataobj)
    assert data.dtype == volume.dtype and data.shape == volume.shape[::-1]
    assert np.array_equal(data, volume.transpose(2, 1, 0))
    np.testing.assert_allclose(image.affine, ras, atol=1e-4)  # the sform is float32
    assert int(image.header["sform_code"]) == 1
    assert int(image.header["qform_code"]) == (0 if name == "tilted" else 1)


def _world_equal(ours: Nifti, reference: Nifti, rtol: float = 0.0) -> None:
    """Every voxel of `ours`, placed in RAS by its sform, lands on a `reference` voxel of equal value."""
    shape_zyx = ours.data.shape[::-1]
    ras = ours.sform @ _all_voxels(shape_zyx)
    idx = _nifti_indices(reference, np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras)  # the helper takes LPS
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    np.testing.assert_allclose(reference.data[tuple(idx)], ours.data[i.ravel(), j.ravel(), k.ravel()], rtol=rtol, atol=0)


@pytest.mark.parametrize("name", ["axial", "oblique", "mr", "float", "CT_small.dcm", "MR_small.dcm", "693_UNCI.dcm",
                                  "MR2_UNCI.dcm"])
def test_nifti_agrees_with_dcm2niix_of_the_source_series(export_src, nifti_dir, tmp_path, name):
    reference = read_nifti(dcm2niix(export_src.folders[name], tmp_path / "dcm2niix"))
    image = nib.load(schemas.nifti_uri(str(nifti_dir), export_src.key(name)))
    ours = Nifti(np.asanyarray(image.dataobj).astype(np.float64), image.affine)
    assert reference.data.size == ours.data.size
    # float volumes: dcm2niix keeps the stored integers with scl_slope/inter rounded to float32, dicomflow rescales
    # in double and rounds once, so values agree to one float32 ulp; integer volumes agree exactly
    _world_equal(ours, reference, rtol=2.5e-7 if image.get_data_dtype().kind == "f" else 0.0)


def test_rgb_is_written_as_rgb24(export_src, nifti_dir):
    key = export_src.key("rgb")
    data = np.asanyarray(nib.load(schemas.nifti_uri(str(nifti_dir), key)).dataobj)
    with readers.open_volume(export_src.out, key) as vol:
        volume = vol.array[:]
    assert data.dtype == export_nifti.RGB24 and data.shape == volume.shape[2::-1]
    for c, channel in enumerate("RGB"):
        assert np.array_equal(data[channel], volume[..., c].transpose(2, 1, 0))


def test_a_volume_without_geometry_fails_with_a_reason_and_the_others_are_written(export_src, nifti_dir):
    rows = _exports(nifti_dir)
    dx = rows[export_src.key("dx")]
    assert dx["status"] == "failed" and "no geometry" in dx["reason"] and dx["outputs"] == []
    converted = {r["series_key"] for r in tables.read_table(export_src.out, "series").to_pylist()
                 if r["status"] == "converted"}
    assert set(rows) == converted
    assert not os.path.exists(schemas.nifti_uri(str(nifti_dir), export_src.key("dx")))


def test_nifti_bytes_are_deterministic(export_src, nifti_dir, tmp_path):
    key = export_src.key("axial")
    export.run(["--output", export_src.out, "--to", str(tmp_path), "--format", "nifti", "--series", key, *RUNNER_ARGS])
    assert open(schemas.nifti_uri(str(tmp_path), key), "rb").read() == \
        open(schemas.nifti_uri(str(nifti_dir), key), "rb").read()
    assert set(_exports(tmp_path)) == {key}


def test_unknown_series_is_a_failed_row(export_src, tmp_path):
    export.run(["--output", export_src.out, "--to", str(tmp_path), "--format", "nifti", "--series", "nope_s00",
                *RUNNER_ARGS])
    assert _exports(tmp_path)["nope_s00"]["reason"].startswith("unknown series")


# ---- 4D nifti (a hand-built (t, z, y, x) volume: 4D stacks come from the convert side) -----------

def _hand_built_4d(out: str, key: str, volume: np.ndarray, dicom: dict) -> None:
    group = zarr.open_group(schemas.zarr_uri(out, key), mode="w", zarr_format=3)
    group.attrs["dicom"] = dicom
    group.create_array("0", data=volume, chunks=(1,) + volume.shape[1:], dimension_names=("t", "z", "y", "x"))
    record = {**dicom, "status": "converted", "zarr_uri": schemas.zarr_uri(out, key)}
    os.makedirs(os.path.join(out, "series"), exist_ok=True)
    open(schemas.series_json_uri(out, key), "w").write(json.dumps(record))
    os.makedirs(os.path.join(out, "slices"), exist_ok=True)
    rows = "".join(f"{z},1.2.3.{z},{z + 1},0,0,{2.0 * z},/x/{z}.dcm,,0,\n" for z in range(volume.shape[1]))
    open(schemas.slices_csv_uri(out, key), "w").write(",".join(schemas.SLICE_COLUMNS) + "\n" + rows)
    row = schemas.series_row({**record, "n_slices": volume.shape[1]})
    data = tables.encode_parquet([row], schemas.SERIES_SCHEMA, ("series_key",))
    os.makedirs(os.path.join(out, "summary", "series"), exist_ok=True)
    open(tables.shard_file_uri(schemas.table_prefix(out, "series"), 0, 1, "parquet"), "wb").write(data)


def test_4d_volume_becomes_4d_nifti_with_bval_bvec(tmp_path):
    out, key = str(tmp_path / "out"), "dwi_0123456789ab_s00"
    volume = np.arange(3 * 4 * 5 * 6, dtype=np.int16).reshape(3, 4, 5, 6)
    affine = [[0.0, 0.0, 2.0, -5.0], [1.5, 0.0, 0.0, 3.0], [0.0, -1.5, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]]  # sagittal
    vectors = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]
    # convert's contract: `volumes`, one object per volume; here only the LPS direction (no
    # diffusion_direction_image), so export projects it itself (the real mosaics: tests/test_mosaic.py)
    volumes = [{"b_value": 0, "diffusion_direction": None}, {"b_value": 1000, "diffusion_direction": vectors[1]},
               {"b_value": 1000, "diffusion_direction": vectors[2]}]
    _hand_built_4d(out, key, volume, {"series_key": key, "affine_lps": affine, "n_volumes": 3, "volumes": volumes,
                                      "shape": list(volume.shape), "dtype": "int16"})
    to = str(tmp_path / "to")
    export.run(["--output", out, "--to", to, "--format", "nifti", *RUNNER_ARGS])
    assert _exports(to)[key]["status"] == "exported"
    image = nib.load(schemas.nifti_uri(to, key))
    assert image.shape == (6, 5, 4, 3)
    assert np.array_equal(np.asanyarray(image.dataobj), volume.transpose(3, 2, 1, 0))
    np.testing.assert_allclose(image.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array(affine), atol=1e-6)
    stem = schemas.nifti_uri(to, key).removesuffix(".nii.gz")
    assert open(stem + ".bval").read().split() == ["0", "1000", "1000"]
    bvec = np.loadtxt(stem + ".bvec")
    assert bvec.shape == (3, 3)
    # voxel axes: column = +y (P), row = -z (I), slice = +x (L); det(vox->RAS) > 0 so x is negated (FSL)
    lps = np.array(vectors).T
    axes = np.array(affine)[:3, :3] / np.linalg.norm(np.array(affine)[:3, :3], axis=0)
    expected = np.linalg.solve(axes, lps)
    expected[0] *= -1 if np.linalg.det(np.diag([-1.0, -1.0, 1.0]) @ np.array(affine)[:3, :3]) > 0 else 1
    np.testing.assert_allclose(bvec, expected, atol=1e-6)
    np.testing.assert_allclose(bvec[:, 1], [0.0, 0.0, 1.0], atol=1e-6)  # L gradient lies along the slice axis


def test_bval_bvec_only_when_every_volume_has_a_b_value_and_the_record_counts_the_array():
    eye = np.eye(4)
    assert export_nifti.fsl_gradients({}, eye, 2) is None  # no `volumes`: not DWI
    assert export_nifti.fsl_gradients({"volumes": [{"b_value": 0}, {"b_value": None}]}, eye, 2) is None
    bval, bvec = export_nifti.fsl_gradients({"volumes": [{"b_value": 0, "diffusion_direction_image": [1.0, 0, 0]},
                                                         {"b_value": 700, "diffusion_direction_image": [0.6, 0.8, 0]}]},
                                            eye, 2)
    # b = 0: zeros whatever the direction (as dcm2niix); identity LPS affine: det(vox->RAS) > 0, i negated
    assert bval == "0 700\n" and bvec == "0.000000 -0.600000\n0.000000 0.800000\n0.000000 0.000000\n"
    with pytest.raises(export_nifti.ExportError, match="1 volumes' values, the array 2 volumes"):
        export_nifti.fsl_gradients({"volumes": [{"b_value": 0}]}, eye, 2)


def test_4d_volume_in_hdf5_keeps_its_axes_and_dicom_refuses_an_inconsistent_record(tmp_path):
    out, key = str(tmp_path / "out"), "perf_0123456789ab_s00"
    volume = np.arange(2 * 3 * 4 * 3, dtype=np.int16).reshape(2, 3, 4, 3)  # x == 3: not colour, the names say so
    _hand_built_4d(out, key, volume, {"series_key": key, "affine_lps": np.eye(4).tolist(),
                                      "shape": list(volume.shape), "dtype": "int16"})
    to = str(tmp_path / "h5")
    export.run(["--output", out, "--to", to, "--format", "hdf5", *RUNNER_ARGS])
    with h5py.File(export_hdf5.shard_uri(to, 0, 1), "r") as h5:
        assert np.array_equal(h5[key]["volume"][()], volume)
        assert tuple(h5[key]["volume"].attrs["axes"]) == ("t", "z", "y", "x")
    dicom = str(tmp_path / "dicom")
    export.run(["--output", out, "--to", dicom, "--format", "dicom", *RUNNER_ARGS])
    row = _exports(dicom)[key]
    # the hand-built record lists one volume's slices: DICOM needs a row per plane (4D export: test_export_dicom)
    assert row["status"] == "failed" and row["reason"].endswith("slices CSV has 3 rows, the volume 6 planes")


# ---- hdf5 ------------------------------------------------------------------------------------------

def _h5(to) -> str:
    files = sorted(f for f in os.listdir(to) if f.endswith(".h5"))
    assert files == ["series-00000-of-00001.h5"]
    return os.path.join(to, files[0])


@pytest.fixture(scope="module")
def hdf5_dir(export_src, tmp_path_factory):
    to = tmp_path_factory.mktemp("hdf5")
    export.run(["--output", export_src.out, "--to", str(to), "--format", "hdf5", *RUNNER_ARGS])
    return to


def test_hdf5_one_group_per_series_with_volume_and_attributes(export_src, hdf5_dir):
    rows = _exports(hdf5_dir)
    assert {r["status"] for r in rows.values()} == {"exported"} and export_src.key("dx") in rows
    with h5py.File(_h5(hdf5_dir), "r") as h5:
        assert sorted(h5) == sorted(rows)
        for key in h5:
            with readers.open_volume(export_src.out, key) as vol:
                volume, dicom = vol.array[:], vol.dicom
            dataset = h5[key]["volume"]
            assert dataset.compression == "gzip" and dataset.chunks is not None
            assert dataset.dtype == volume.dtype and np.array_equal(dataset[()], volume)
            attrs = h5[key].attrs
            assert attrs["series_instance_uid"] == dicom["series_instance_uid"]
            assert attrs["frame_of_reference_uid"] == (dicom["tags"].get("FrameOfReferenceUID") or "")
            spacing = [np.nan if v is None else v for v in dicom["spacing"]]
            np.testing.assert_array_equal(attrs["spacing"], spacing)
            if dicom["affine_lps"] is not None:
                np.testing.assert_array_equal(attrs["affine_lps"], dicom["affine_lps"])
            assert json.loads(attrs["dicom_json"]) == dicom
            assert len(attrs["sop_instance_uids"]) == volume.shape[0] == attrs["image_position_patient"].shape[0]
        assert h5[export_src.key("dx")]["volume"].shape == (1, 24, 20)  # a single image is (1, rows, cols)


def test_hdf5_bytes_are_deterministic_and_rerun_appends_without_rewriting(export_src, hdf5_dir, tmp_path):
    keys = sorted(_exports(hdf5_dir))
    first, rest = keys[:3], keys[3:]
    to = str(tmp_path / "append")
    export.run(["--output", export_src.out, "--to", to, "--format", "hdf5", "--series", *first, *RUNNER_ARGS])
    with h5py.File(_h5(to), "r") as h5:
        assert sorted(h5) == first
        before = {k: (h5[k]["volume"].id.get_offset(), h5[k]["volume"][()].tobytes()) for k in first}
    export.run(["--output", export_src.out, "--to", to, "--format", "hdf5", *RUNNER_ARGS])  # new series: all
    rows = _exports(to)
    assert {rows[k]["reason"] for k in first} == {"already in the file"} and all(rows[k]["reason"] == "" for k in rest)
    with h5py.File(_h5(to), "r") as h5:
        assert sorted(h5) == keys
        assert {k: (h5[k]["volume"].id.get_offset(), h5[k]["volume"][()].tobytes()) for k in first} == before
    again = str(tmp_path / "again")
    export.run(["--output", export_src.out, "--to", again, "--format", "hdf5", *RUNNER_ARGS])
    assert open(_h5(again), "rb").read() == open(_h5(hdf5_dir), "rb").read()


def test_one_hdf5_file_per_summary_table_shard(export_src, tmp_path):
    out, to = str(tmp_path / "out"), str(tmp_path / "to")
    convert(["--input", str(export_src.root), "--output", out, "--table_shards", "3", *RUNNER_ARGS])
    export.run(["--output", out, "--to", to, "--format", "hdf5", *RUNNER_ARGS])
    keys = sorted(_exports(to))
    found = {}
    for index in range(3):
        with h5py.File(export_hdf5.shard_uri(to, index, 3), "r") as h5:
            found.update({key: index for key in h5})
            assert all(tuple(h5[key]["volume"].attrs["axes"]) == ("z", "y", "x") or key == export_src.key("rgb")
                       for key in h5)
    assert found == {key: tables.shard_of_key(key, 3) for key in keys} and len(set(found.values())) > 1


def test_hdf5_blosc_zstd(export_src, tmp_path):
    key = export_src.key("axial")
    export.run(["--output", export_src.out, "--to", str(tmp_path), "--format", "hdf5", "--series", key,
                "--hdf5_compression", "zstd", *RUNNER_ARGS])
    with h5py.File(_h5(tmp_path), "r") as h5, readers.open_volume(export_src.out, key) as vol:
        dataset = h5[key]["volume"]
        assert str(hdf5plugin.Blosc.filter_id) in {str(f) for f in dataset._filters}
        assert np.array_equal(dataset[()], vol.array[:])


def test_export_series_transform_routes_failures_to_rows(export_src, pipeline, tmp_path):
    from apache_beam.testing.util import assert_that, equal_to

    from dicom_io.exports import ExportSettings
    from transforms.export import ExportSeries

    key, dx = export_src.key("axial"), export_src.key("dx")
    settings = ExportSettings(output=export_src.out, to=str(tmp_path), fmt="nifti")
    with pipeline as p:
        rows = p | ExportSeries(settings, (key, dx, "nope_s00"))
        statuses = rows | "Status" >> beam.Map(lambda r: (r["series_key"], r["status"], r["reason"].split(":")[0]))
        assert_that(statuses, equal_to([(key, "exported", ""), (dx, "failed", "ExportError"),
                                        ("nope_s00", "failed", "unknown series")]))
    assert os.path.exists(schemas.nifti_uri(str(tmp_path), key))


def test_export_needs_to_and_format(export_src, tmp_path):
    with pytest.raises(SystemExit, match="--to and --format"):
        export.run(["--output", export_src.out, "--format", "nifti", *RUNNER_ARGS])
    with pytest.raises(SystemExit, match="no summary"):
        export.run(["--output", str(tmp_path), "--to", str(tmp_path / "x"), "--format", "nifti", *RUNNER_ARGS])
