"""pipelines.export --format dicom: convert -> export -> convert is pixel- and affine-identical; dcm2niix and
SimpleITK read the exported series; UIDs derived or kept; DICOM SEG read back with highdicom; de-identified
OUT exports no PHI; gs://."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import zarr

from dicom_io import export_dicom, readers, schemas, tables
from pipelines import export
from pipelines.convert import run as convert
from tests import synthetic
from tests.conftest import RUNNER_ARGS, all_files
from tests.export_corpus import ORIGIN, SERIES, dcm2niix, export_src, exports_table  # noqa: F401  (session fixture)
from tests.test_crosscheck import _all_voxels, _dcm2niix_binary, _nifti_indices, read_nifti

ROUND_TRIP = ["axial", "oblique", "tilted", "irregular", "float", "pet", "mr", "rgb", "monochrome1", "dx",
              "CT_small.dcm", "MR_small.dcm", "693_UNCI.dcm", "MR2_UNCI.dcm"]


_exports = exports_table


@pytest.fixture(scope="module")
def exported(export_src, tmp_path_factory):
    """Every converted series exported as DICOM, then the export converted again."""
    to = tmp_path_factory.mktemp("dicom")
    export.run(["--output", export_src.out, "--to", str(to), "--format", "dicom", *RUNNER_ARGS])
    back = str(tmp_path_factory.mktemp("back"))
    convert(["--input", str(to), "--output", back, *RUNNER_ARGS])
    return to, back


def _first(to, key) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(glob.glob(os.path.join(str(to), key, "*.dcm")))[0])


def _reconverted(back: str, to, key: str) -> dict:
    uid = _first(to, key).SeriesInstanceUID
    found = [r for r in tables.read_table(back, "series").to_pylist() if r["series_instance_uid"] == uid]
    assert len(found) == 1 and found[0]["status"] == "converted", found
    return found[0]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_convert_export_convert_is_byte_equal_with_the_same_affine(export_src, exported, name):
    to, back = exported
    key = export_src.key(name)
    assert _exports(to)[key]["status"] == "exported"
    row = _reconverted(back, to, key)
    with readers.open_volume(export_src.out, key) as a, readers.open_volume(back, row["series_key"]) as b:
        first, second = a.array[:], b.array[:]
        assert first.dtype == second.dtype and first.shape == second.shape
        assert first.tobytes() == second.tobytes()
        assert b.dicom["geometry"] == a.dicom["geometry"]
        if a.affine_lps is None:
            assert b.affine_lps is None
        else:
            np.testing.assert_allclose(b.affine_lps, a.affine_lps, rtol=0, atol=1e-6)
        assert b.dicom["monochrome1"] == a.dicom["monochrome1"]
    src_slices = tables.parse_slices_csv(open(schemas.slices_csv_uri(export_src.out, key), "rb").read())
    new_slices = tables.parse_slices_csv(open(schemas.slices_csv_uri(back, row["series_key"]), "rb").read())
    assert [s["pixel_md5"] for s in new_slices] == [s["pixel_md5"] for s in src_slices]


def test_float_volumes_use_rescaled_integers_with_per_slice_slopes(export_src, exported):
    to, _ = exported
    slopes = set()
    for path in sorted(glob.glob(os.path.join(str(to), export_src.key("pet"), "*.dcm"))):
        ds = pydicom.dcmread(path)
        assert "PixelData" in ds and "FloatPixelData" not in ds and ds.BitsAllocated == 16
        slopes.add(str(ds.RescaleSlope))
    assert len(slopes) == 6


def test_headers_come_from_the_record_with_derived_uids_and_source_references(export_src, exported):
    to, _ = exported
    key = export_src.key("axial")
    slices = tables.parse_slices_csv(open(schemas.slices_csv_uri(export_src.out, key), "rb").read())
    record_tags = readers.open_volume(export_src.out, key).dicom["tags"]
    files = sorted(glob.glob(os.path.join(str(to), key, "*.dcm")))
    assert [os.path.basename(f) for f in files] == [f"{z:05d}.dcm" for z in range(len(slices))]
    for z, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID != slices[z]["sop_instance_uid"]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == slices[z]["sop_instance_uid"]
        assert ds.SOPInstanceUID == export_dicom.derived_uid("sop", slices[z]["sop_instance_uid"], key, z)
        assert ds.SeriesInstanceUID != SERIES["axial"].series_uid and ds.StudyInstanceUID == SERIES["axial"].study_uid
        assert ds.FrameOfReferenceUID == record_tags["FrameOfReferenceUID"]
        assert ds.PatientID == "EXPORT" and ds.Manufacturer == "dicomflow-synthetic" and ds.KVP == 120
        assert [float(v) for v in ds.ImagePositionPatient] == [slices[z]["ipp_x"], slices[z]["ipp_y"], slices[z]["ipp_z"]]
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.InstanceNumber == z + 1


def test_keep_uids_and_deterministic_bytes(export_src, exported, tmp_path):
    to, _ = exported
    key = export_src.key("axial")
    again, kept = tmp_path / "again", tmp_path / "kept"
    export.run(["--output", export_src.out, "--to", str(again), "--format", "dicom", "--series", key, *RUNNER_ARGS])
    export.run(["--output", export_src.out, "--to", str(kept), "--format", "dicom", "--series", key, "--keep_uids",
                *RUNNER_ARGS])
    for z, path in enumerate(sorted(glob.glob(os.path.join(str(to), key, "*.dcm")))):
        assert open(path, "rb").read() == open(again / key / os.path.basename(path), "rb").read()
    slices = tables.parse_slices_csv(open(schemas.slices_csv_uri(export_src.out, key), "rb").read())
    kept_files = sorted(glob.glob(os.path.join(str(kept), key, "*.dcm")))
    assert [pydicom.dcmread(p).SOPInstanceUID for p in kept_files] == [s["sop_instance_uid"] for s in slices]
    assert {pydicom.dcmread(p).SeriesInstanceUID for p in kept_files} == {SERIES["axial"].series_uid}


# ---- independent readers of the exported series ------------------------------------------------------

@pytest.mark.parametrize("name", ["axial", "oblique", "float", "pet", "mr", "CT_small.dcm", "693_UNCI.dcm",
                                  "MR2_UNCI.dcm"])
def test_simpleitk_reads_the_exported_series_to_the_same_voxels_and_affine(export_src, exported, name):
    to, _ = exported
    key = export_src.key(name)
    folder = os.path.join(str(to), key)
    uid = _first(to, key).SeriesInstanceUID
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
    image = reader.Execute()
    with readers.open_volume(export_src.out, key) as vol:
        volume, affine = vol.array[:], vol.affine_lps
    array = sitk.GetArrayFromImage(image)
    assert array.shape == volume.shape
    np.testing.assert_array_equal(array.astype(volume.dtype), volume)  # ITK rescales in double: equal at float32
    itk = np.eye(4)
    itk[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    itk[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(itk[:, [0, 1, 3]], affine[:, [0, 1, 3]], atol=1e-4)
    if volume.shape[0] > 1:
        np.testing.assert_allclose(itk[:, 2], affine[:, 2], atol=1e-4)


@pytest.mark.parametrize("name", ["axial", "oblique", "mr", "float", "pet"])
def test_dcm2niix_reads_the_exported_series_to_the_same_voxels_and_affine(export_src, exported, tmp_path, name):
    to, _ = exported
    key = export_src.key(name)
    nii = read_nifti(dcm2niix(os.path.join(str(to), key), tmp_path))
    with readers.open_volume(export_src.out, key) as vol:
        volume, affine = vol.array[:], vol.affine_lps
    idx = _nifti_indices(nii, affine @ _all_voxels(volume.shape))
    expected = volume.ravel().astype(np.float64)
    if name == "pet":  # per-slice slopes: dcm2niix rescales every slice to one float32 scl_slope (2 ulp)
        np.testing.assert_allclose(nii.data[tuple(idx)], expected, rtol=2.5e-7, atol=0)
    elif volume.dtype.kind == "f":  # stored integers x a float32 scl_slope: equal at float32
        np.testing.assert_array_equal(nii.data[tuple(idx)].astype(np.float32), expected.astype(np.float32))
    else:
        np.testing.assert_array_equal(nii.data[tuple(idx)], expected)


# ---- Float Pixel Data: float volumes no integer grid holds (resampled) ---------------------------------

def test_resampled_float_volume_round_trips_through_float_pixel_data(export_src, tmp_path):
    out, to, back = str(tmp_path / "out"), tmp_path / "to", str(tmp_path / "back")
    convert(["--input", str(export_src.folders["tilted"]), "--output", out, "--tilt", "resample", *RUNNER_ARGS])
    (row,) = tables.read_table(out, "series").to_pylist()
    assert row["dtype"] == "float32" and row["resampled_from"] == "tilted"
    export.run(["--output", out, "--to", str(to), "--format", "dicom", *RUNNER_ARGS])
    ds = _first(to, row["series_key"])
    assert "FloatPixelData" in ds and ds.BitsAllocated == 32 and "PixelData" not in ds
    convert(["--input", str(to), "--output", back, *RUNNER_ARGS])
    again = _reconverted(back, to, row["series_key"])
    with readers.open_volume(out, row["series_key"]) as a, readers.open_volume(back, again["series_key"]) as b:
        assert a.array[:].tobytes() == b.array[:].tobytes() and b.array.dtype == np.float32
        np.testing.assert_allclose(b.affine_lps, a.affine_lps, atol=1e-6)


def test_rescaled_integers_finds_exact_decimal_scales_or_refuses():
    plane = (np.arange(12, dtype=np.float64).reshape(3, 4) * 0.013 - 7.5).astype(np.float32)
    slope, intercept = export_dicom.rescaled_integers(plane)
    k = np.rint((plane - float(intercept)) / float(slope))
    assert np.array_equal((k * float(slope) + float(intercept)).astype(np.float32), plane)
    assert export_dicom.rescaled_integers(np.random.default_rng(0).random((8, 8)).astype(np.float32)) is None


# ---- DICOM SEG --------------------------------------------------------------------------------------

def test_labels_become_a_dicom_seg_referencing_the_exported_images(export_src, tmp_path):
    key = export_src.key("axial")
    with readers.open_volume(export_src.out, key) as vol:
        volume = vol.array[:]
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[volume > np.percentile(volume, 60)] = 1
    labels[volume > np.percentile(volume, 90)] = 2
    labels[0] = 0  # an empty slice
    labels_uri = str(tmp_path / "labels.zarr")
    zarr.open_group(labels_uri, mode="w", zarr_format=3).create_array("0", data=labels)
    to = tmp_path / "to"
    export.run(["--output", export_src.out, "--to", str(to), "--format", "dicom", "--series", key,
                "--labels", labels_uri, *RUNNER_ARGS])
    row = _exports(to)[key]
    seg_uri = schemas.dicom_seg_uri(str(to), key)
    assert row["status"] == "exported" and row["outputs"][-1] == seg_uri
    seg = hd.seg.segread(seg_uri)
    assert seg.number_of_segments == 2
    images = [pydicom.dcmread(p) for p in sorted(glob.glob(os.path.join(str(to), key, "0*.dcm")))]
    referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in images}
    assert seg.FrameOfReferenceUID == images[0].FrameOfReferenceUID
    again = tmp_path / "again"
    export.run(["--output", export_src.out, "--to", str(again), "--format", "dicom", "--series", key,
                "--labels", labels_uri, *RUNNER_ARGS])
    assert open(schemas.dicom_seg_uri(str(again), key), "rb").read() == open(seg_uri, "rb").read()
    for z, ds in enumerate(images):
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID],
                                                   combine_segments=True, skip_overlap_checks=True,
                                                   ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
        assert np.array_equal(pixels[0], labels[z]), z


def test_labels_from_nifti_on_the_same_grid_and_refused_on_another(export_src, tmp_path):
    import nibabel as nib

    key = export_src.key("oblique")
    with readers.open_volume(export_src.out, key) as vol:
        shape, ras = vol.shape, vol.affine_ras
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:4, 5:10, 3:8] = 1
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0).copy(), ras), str(tmp_path / "labels.nii.gz"))
    to = tmp_path / "to"
    export.run(["--output", export_src.out, "--to", str(to), "--format", "dicom", "--series", key,
                "--labels", str(tmp_path / "labels.nii.gz"), *RUNNER_ARGS])
    seg = hd.seg.segread(schemas.dicom_seg_uri(str(to), key))
    assert seg.number_of_segments == 1 and seg.NumberOfFrames == 2  # empty frames omitted
    shifted = ras.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0).copy(), shifted), str(tmp_path / "off.nii.gz"))
    off = tmp_path / "off"
    export.run(["--output", export_src.out, "--to", str(off), "--format", "dicom", "--series", key,
                "--labels", str(tmp_path / "off.nii.gz"), *RUNNER_ARGS])
    row = _exports(off)[key]
    assert row["status"] == "failed" and "not the series' grid" in row["reason"]


def test_labels_need_one_series(export_src, tmp_path):
    with pytest.raises(SystemExit, match="exactly one --series"):
        export.run(["--output", export_src.out, "--to", str(tmp_path), "--format", "dicom", "--labels",
                    str(tmp_path), *RUNNER_ARGS])


# ---- de-identified OUT, gs:// -------------------------------------------------------------------------

def test_deidentified_out_exports_no_phi(tmp_path):
    from tests.test_deid import KEY, PHI, _leaks

    root = tmp_path / "phi"
    spec = synthetic.SeriesSpec(series_uid=synthetic.uid_from("phi-x"), study_uid=synthetic.uid_from("phi-xs"),
                                patient_id=PHI["PatientID"], modality="CT", positions=synthetic.axial_positions(3, 2.0),
                                iop=synthetic.AXIAL_IOP, pixel_spacing=(1.0, 1.0), rows=8, cols=8, slice_thickness=2.0)
    uids = set()
    for path in synthetic.write_series(root, spec, seed=1):
        ds = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        uids |= {ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID}
        ds.save_as(path, enforce_file_format=True)
    out, to = str(tmp_path / "out"), str(tmp_path / "to")
    convert(["--input", str(root), "--output", out, "--deidentify", "--deid_key", KEY, *RUNNER_ARGS])
    export.run(["--output", out, "--to", to, "--format", "dicom", *RUNNER_ARGS])
    files = [f for f in all_files(to) if f.endswith(".dcm")]
    assert len(files) == 3
    needles = set(PHI.values()) | {PHI["PatientName"].split("^")[1]} | uids
    assert _leaks(to, needles) == []
    assert pydicom.dcmread(files[0]).PatientID.startswith("ANON-")


def test_export_from_and_to_gs(gcs, export_src, tmp_path):
    key = export_src.key("axial")
    out = gcs.upload_tree(export_src.out, "export-out")
    for fmt in ("dicom", "nifti", "hdf5"):
        to = f"gs://{gcs.bucket}/export-{fmt}"
        export.run(["--output", out, "--to", to, "--format", fmt, "--series", key, *RUNNER_ARGS])
        assert _exports(to)[key]["status"] == "exported", _exports(to)[key]
    names = gcs.names(f"export-dicom/{key}/")
    assert len(names) == 6
    local = tmp_path / "dicom"
    local.mkdir()
    for name in names:
        (local / os.path.basename(name)).write_bytes(gcs.read(name))
    back = str(tmp_path / "back")
    convert(["--input", str(local), "--output", back, *RUNNER_ARGS])
    (row,) = tables.read_table(back, "series").to_pylist()
    with readers.open_volume(export_src.out, key) as a, readers.open_volume(back, row["series_key"]) as b:
        assert a.array[:].tobytes() == b.array[:].tobytes()
    assert gcs.names("export-nifti/") == sorted([f"export-nifti/{key}.nii.gz", "export-nifti/exports-00000-of-00001.parquet"])
    assert "export-hdf5/series-00000-of-00001.h5" in gcs.names("export-hdf5/")


# ---- 4D arrays: one series, every plane with its volume's values -------------------------------------

FOUR_D_ECHOES = ((1, 12.0), (2, 90.0))
FOUR_D_TIMES = 3


def _mr4d_spec(name: str, **changes) -> synthetic.SeriesSpec:
    fields = dict(series_uid=synthetic.uid_from("export-4d", name), study_uid=synthetic.uid_from("export-study"),
                  patient_id="EXPORT", modality="MR", positions=synthetic.axial_positions(5, 3.0, origin=ORIGIN),
                  slope=1.0, intercept=0.0, iop=synthetic.AXIAL_IOP, pixel_spacing=(4.0, 3.5), rows=24, cols=20,
                  slice_thickness=3.0)
    fields.update(changes)
    return synthetic.SeriesSpec(**fields)


def _write_time_series(folder, spec: synthetic.SeriesSpec) -> None:
    """FOUR_D_TIMES volumes on one grid told apart by (0020,0100) TemporalPositionIdentifier only."""
    n = len(spec.positions)
    for t in range(FOUR_D_TIMES):
        for i in range(n):
            path = os.path.join(str(folder), f"t{t}_{i}.dcm")
            synthetic.write_instance(path, spec, i, seed=5, instance_number=t * n + i + 1,
                                     sop_uid=synthetic.uid_from("export-4d-sop", t, i),
                                     pixels=(synthetic.slice_pixels(spec, i, 5) + 40 * t).astype(np.uint16))
            ds = pydicom.dcmread(path)
            ds.TemporalPositionIdentifier, ds.NumberOfTemporalPositions = t + 1, FOUR_D_TIMES
            ds.AcquisitionTime = f"{101500 + 7 * t:06d}"
            ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def four_d(tmp_path_factory):
    """nibabel's Siemens DWI mosaics (patterned), a dual-echo and a time series: converted, exported as DICOM,
    converted again. {name: (source key, re-converted key)}, OUT, DIR, BACK, the plain mosaics' folder."""
    from tests.test_mosaic import write_patterned

    root = tmp_path_factory.mktemp("src4d")
    mosaics = write_patterned(tmp_path_factory.mktemp("mosaics"))
    shutil.copytree(os.path.dirname(mosaics[0][1]), root / "dwi")
    for number, echo_time in FOUR_D_ECHOES:
        synthetic.write_series(root / "echo", _mr4d_spec("echo", echo_number=number, echo_time=echo_time),
                               seed=5, names=[f"e{number}_{i}.dcm" for i in range(5)],
                               first_instance_number=1 + 5 * (number - 1))
    _write_time_series(root / "time", _mr4d_spec("time", series_description="PERFUSION"))
    _write_time_series(root / "float", _mr4d_spec("float", slope=0.25))  # float32: rescaled per plane
    os.makedirs(root / "enhanced")  # echoes as frames of one Enhanced MR file: values from functional groups
    synthetic.write_enhanced_mr(root / "enhanced" / "multi.dcm", _mr4d_spec("enhanced"),
                                [e for _, e in FOUR_D_ECHOES], seed=5)
    out, to, back = (str(tmp_path_factory.mktemp(n)) for n in ("out4d", "to4d", "back4d"))
    convert(["--input", str(root), "--output", out, *RUNNER_ARGS])
    export.run(["--output", out, "--to", to, "--format", "dicom", *RUNNER_ARGS])
    convert(["--input", to, "--output", back, *RUNNER_ARGS])
    keys = {}
    for name in ("dwi", "echo", "time", "float", "enhanced"):
        uid = _uid_of_folder(root / name)
        [row] = [r for r in tables.read_table(out, "series").to_pylist() if r["series_instance_uid"] == uid]
        assert row["status"] == "converted" and row["n_volumes"] > 1, row
        volume = zarr.open_group(row["zarr_uri"], mode="r")["0"][:]
        assert all(len(np.unique(plane)) > 3 for plane in volume.reshape(-1, *volume.shape[2:])), name
        keys[name] = (row["series_key"], _reconverted(back, to, row["series_key"])["series_key"])
    return keys, out, to, back, root / "dwi"


def _uid_of_folder(folder) -> str:
    return str(pydicom.dcmread(sorted(glob.glob(os.path.join(str(folder), "*")))[0]).SeriesInstanceUID)


@pytest.mark.parametrize("name", ["dwi", "echo", "time", "float", "enhanced"])
def test_4d_convert_export_convert_keeps_array_volume_order_affine_and_volume_values(four_d, name):
    keys, out, to, back, _ = four_d
    key, again = keys[name]
    assert _exports(to)[key]["status"] == "exported"
    with readers.open_volume(out, key) as a, readers.open_volume(back, again) as b:
        assert a.array.metadata.dimension_names == b.array.metadata.dimension_names == ("t", "z", "y", "x")
        assert a.shape == b.shape and a.array.dtype == b.array.dtype
        assert a.array[:].tobytes() == b.array[:].tobytes()  # same volumes in the same order
        np.testing.assert_allclose(b.affine_lps, a.affine_lps, rtol=0, atol=1e-6)
        assert [v["b_value"] for v in b.dicom["volumes"]] == [v["b_value"] for v in a.dicom["volumes"]]
        assert [v["echo_time"] for v in b.dicom["volumes"]] == [v["echo_time"] for v in a.dicom["volumes"]]
        assert b.dicom["volumes"] == a.dicom["volumes"]  # every per-volume value, directions included
        assert b.dicom["split_by"] == a.dicom["split_by"] and b.dicom["geometry"] == a.dicom["geometry"]
    expected = {"dwi": ("b_value", [0, 1000]), "echo": ("echo", [1, 2]), "time": ("temporal_position", [1, 2, 3]),
                "float": ("temporal_position", [1, 2, 3]), "enhanced": ("echo_time", [12, 90])}
    field, values = expected[name]
    assert [v[field] for v in a.dicom["volumes"]] == values
    src = tables.parse_slices_csv(open(schemas.slices_csv_uri(out, key), "rb").read())
    new = tables.parse_slices_csv(open(schemas.slices_csv_uri(back, again), "rb").read())
    assert [(s["t_index"], s["z_index"], s["pixel_md5"]) for s in new] == \
        [(s["t_index"], s["z_index"], s["pixel_md5"]) for s in src]


def test_4d_export_is_one_series_named_by_volume_and_slice_in_acquisition_order(four_d):
    keys, out, to, _, _ = four_d
    key = keys["time"][0]
    files = sorted(glob.glob(os.path.join(to, key, "*.dcm")))
    assert [os.path.basename(f) for f in files] == [f"{t:03d}_{z:05d}.dcm" for t in range(FOUR_D_TIMES)
                                                   for z in range(5)]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert len({ds.SeriesInstanceUID for ds in headers}) == 1
    assert len({ds.SOPInstanceUID for ds in headers}) == len(files)
    assert [int(ds.InstanceNumber) for ds in headers] == list(range(1, len(files) + 1))
    assert [int(ds.TemporalPositionIdentifier) for ds in headers] == [t + 1 for t in range(FOUR_D_TIMES)
                                                                      for _ in range(5)]
    dwi = sorted(glob.glob(os.path.join(to, keys["dwi"][0], "*.dcm")))
    last = pydicom.dcmread(dwi[-1], stop_before_pixels=True)
    assert len(dwi) == 2 * 48 and float(last.DiffusionBValue) == 1000.0
    assert np.allclose([float(v) for v in last.DiffusionGradientOrientation], [0.99997449, 0.00505012, -0.00505012])


def test_dcm2niix_reads_the_exported_dwi_as_it_reads_the_mosaics(four_d, tmp_path):
    """Same 4D voxels, .bval and .bvec; the affine within 1e-3 mm (dcm2niix places mosaic tiles itself, in
    float32: 2.5e-4 mm from dicomflow's positions, which the exported slices carry; `matches` has it)."""
    import nibabel

    from benchmarks.crosscheck_dcm2niix import Nifti, dicomflow_volumes, matches

    keys, out, to, _, mosaics = four_d
    read = {}
    for name, folder in (("mosaic", str(mosaics)), ("export", os.path.join(to, keys["dwi"][0]))):
        (tmp_path / name).mkdir()
        subprocess.run([_dcm2niix_binary(), "-z", "n", "-f", "dwi", "-o", str(tmp_path / name), folder],
                       check=True, capture_output=True)
        image = nibabel.load(str(tmp_path / name / "dwi.nii"))
        read[name] = (np.asarray(image.dataobj), image.affine, open(tmp_path / name / "dwi.bval").read().split(),
                      np.loadtxt(str(tmp_path / name / "dwi.bvec")))
    (data, affine, bval, bvec), (data2, affine2, bval2, bvec2) = read["mosaic"], read["export"]
    assert data2.shape == data.shape == (128, 128, 48, 2) and np.array_equal(data2, data)
    assert bval2 == bval == ["0", "1000"]
    np.testing.assert_allclose(bvec2, bvec, atol=1e-6)
    np.testing.assert_allclose(affine2, affine, atol=1e-3)
    [volume] = [v for v in dicomflow_volumes(out) if v.key == keys["dwi"][0]]
    assert matches(Nifti(data2, affine2, [float(b) for b in bval2]), volume) is None


def test_4d_float_array_is_rescaled_integers_and_seg_is_refused(four_d, tmp_path):
    keys, out, to, _, _ = four_d
    assert readers.open_volume(out, keys["float"][0]).array.dtype == np.float32
    first = pydicom.dcmread(sorted(glob.glob(os.path.join(to, keys["float"][0], "*.dcm")))[-1])
    assert first.BitsAllocated == 16 and "FloatPixelData" not in first
    labels = str(tmp_path / "labels.zarr")
    zarr.open_group(labels, mode="w", zarr_format=3).create_array("0", data=np.ones((5, 24, 20), dtype=np.uint8))
    export.run(["--output", out, "--to", str(tmp_path / "seg"), "--format", "dicom", "--series", keys["time"][0],
                "--labels", labels, *RUNNER_ARGS])
    row = _exports(tmp_path / "seg")[keys["time"][0]]
    assert row["status"] == "failed" and "4D" in row["reason"]


def test_volume_values_are_written_in_the_tags_convert_reads_first():
    ds = pydicom.Dataset()
    export_dicom.volume_module(ds, {"b_value": 0, "diffusion_direction": None, "echo": 2, "echo_time": 90,
                                    "temporal_position": 3, "trigger_time": 412.5, "acquisition_number": 7,
                                    "acquisition_time": "101507.25"})
    assert (ds.DiffusionBValue, ds.EchoNumbers, ds.EchoTime, ds.TemporalPositionIdentifier) == (0.0, 2, 90, 3)
    assert (ds.TriggerTime, ds.AcquisitionNumber, ds.AcquisitionTime) == (412.5, 7, "101507.25")
    assert "DiffusionGradientOrientation" not in ds
    same = pydicom.Dataset()
    export_dicom.volume_module(same, {"echo": 12.5, "echo_time": 12.5, "acquisition_time": "20240101101507"})
    assert "EchoNumbers" not in same and same.EchoTime == 12.5  # the echo was the echo time: EchoTime alone
    assert "AcquisitionTime" not in same and same.AcquisitionDateTime == "20240101101507"
    with pytest.raises(export_dicom.ExportError, match="neither an echo number"):
        export_dicom.volume_module(pydicom.Dataset(), {"echo": 12.5, "echo_time": None})


def test_4d_keep_uids_keeps_the_series_and_derives_what_planes_of_one_source_share(four_d, tmp_path):
    keys, out, _, _, mosaics = four_d
    export.run(["--output", out, "--to", str(tmp_path), "--format", "dicom", "--series", keys["dwi"][0],
                "--series", keys["time"][0], "--keep_uids", *RUNNER_ARGS])
    for name, folder in (("dwi", mosaics), ("time", None)):
        files = sorted(glob.glob(os.path.join(str(tmp_path), keys[name][0], "*.dcm")))
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        assert len({ds.SOPInstanceUID for ds in headers}) == len(files)  # 48 tiles of one mosaic: 48 UIDs
        slices = tables.parse_slices_csv(open(schemas.slices_csv_uri(out, keys[name][0]), "rb").read())
        if name == "time":  # one source per plane: its UID kept
            assert [ds.SOPInstanceUID for ds in headers] == [s["sop_instance_uid"] for s in slices]
        else:
            assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in headers} == \
                {s["sop_instance_uid"] for s in slices}
            assert {ds.SeriesInstanceUID for ds in headers} == {_uid_of_folder(folder)}
