"""Issue-3 rules on generated series, end to end through pipelines.convert."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
import zarr

from dicom_io import schemas
from dicom_io.tables import read_table
from pipelines.convert import run
from tests import synthetic
from tests.conftest import RUNNER_ARGS

SEED = 7


def _spec(name: str, **changes) -> synthetic.SeriesSpec:
    fields = dict(series_uid=synthetic.uid_from("case", name), study_uid=synthetic.uid_from("case-study"),
                  patient_id="CASES", modality="CT", positions=synthetic.axial_positions(8, 2.0),
                  iop=synthetic.AXIAL_IOP, pixel_spacing=(0.8, 0.8), rows=32, cols=32, slice_thickness=2.0)
    fields.update(changes)
    return synthetic.SeriesSpec(**fields)


def _hu(spec, order=None):
    normal = synthetic.slice_normal(spec.iop)
    order = order or sorted(range(len(spec.positions)), key=lambda i: float(np.dot(spec.positions[i], normal)))
    return np.stack([synthetic.slice_pixels(spec, i, SEED).astype(np.float64) + spec.intercept for i in order])


TILT = 15.0
CASES = {
    "tilted": _spec("tilted", positions=[(-12.0, -12.0 + 2.0 * k * math.tan(math.radians(TILT)), 2.0 * k)
                                         for k in range(8)]),
    "monochrome1": _spec("monochrome1"),
    "rgb": _spec("rgb", positions=synthetic.axial_positions(3, 2.0)),
    "big_endian": _spec("big_endian"),
    "dx": _spec("dx", positions=synthetic.axial_positions(1, 1.0), modality="CT"),
    "pixel_duplicate": _spec("pixel_duplicate", positions=synthetic.axial_positions(5, 2.0)),
    "radial": _spec("radial", positions=[(0.0, 0.0, 0.0)] * 4),
    "enhanced": _spec("enhanced", modality="MR", intercept=0.0, positions=synthetic.axial_positions(6, 3.0),
                      slice_thickness=3.0),
}
ECHOES = (12.0, 90.0)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    expected = {}
    for name in ("tilted", "pixel_duplicate"):
        synthetic.write_series(root / name, CASES[name], seed=SEED)
    expected["tilted"] = _hu(CASES["tilted"])
    for name in ("monochrome1", "rgb", "big_endian", "dx"):
        spec = CASES[name]
        planes = [synthetic.write_variant(root / name / f"{i:03d}", spec, i, seed=SEED, variant=name)
                  for i in range(len(spec.positions))]
        expected[name] = np.stack(planes)
    # the same image again under a new SOPInstanceUID at the same position: a duplicate by pixels
    dup_src = CASES["pixel_duplicate"]
    synthetic.write_instance(root / "pixel_duplicate" / "copy", dup_src, 2, seed=SEED,
                             sop_uid=synthetic.uid_from("other-sop"), instance_number=99)
    # radial: one position, four orientations rotating about the vertical axis
    radial = CASES["radial"]
    for k in range(4):
        a = math.radians(45 * k)
        spec = synthetic.SeriesSpec(**{**radial.__dict__, "iop": (math.cos(a), math.sin(a), 0.0, 0.0, 0.0, -1.0)})
        synthetic.write_instance(root / "radial" / f"{k}", spec, 0, seed=SEED, instance_number=k + 1,
                                 sop_uid=synthetic.uid_from("radial", k))
    os.makedirs(root / "enhanced")
    expected["enhanced"] = synthetic.write_enhanced_mr(root / "enhanced" / "multi.dcm", CASES["enhanced"], ECHOES,
                                                       seed=SEED)
    out = tmp_path_factory.mktemp("cases-out")
    run(["--input", str(root), "--output", str(out), *RUNNER_ARGS])
    series = read_table(str(out), "series").to_pylist()
    rows = {name: sorted((r for r in series if r["series_instance_uid"] == spec.series_uid),
                         key=lambda r: r["stack_index"]) for name, spec in CASES.items()}
    return root, str(out), rows, expected


def _volume(row):
    return zarr.open_group(row["zarr_uri"], mode="r")["0"][:]


def _dicom(row):
    return zarr.open_group(row["zarr_uri"], mode="r").attrs["dicom"]


def test_gantry_tilt_is_classified_and_keeps_its_sheared_affine(cases):
    root, out, rows, expected = cases
    [row] = rows["tilted"]
    assert row["geometry"] == "tilted" and row["tilt_degrees"] == pytest.approx(TILT, abs=0.05)
    assert np.array_equal(_volume(row), expected["tilted"])
    affine = np.array(_dicom(row)["affine_lps"])
    for k, p in enumerate(CASES["tilted"].positions):
        assert affine @ [0, 0, k, 1] == pytest.approx([*p, 1], abs=1e-3)  # every slice exactly where it was
    # SimpleITK ignores the tilt: it places slice k along the normal, so slice 7 is off by
    # 7 * 2.0 * tan(15 deg) = 3.75 mm in y. The correct answer is the sheared affine above.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(root / "tilted")))
    image = reader.Execute()
    itk_last = np.array(image.TransformIndexToPhysicalPoint((0, 0, 7)))
    assert abs(itk_last[1] - CASES["tilted"].positions[7][1]) == pytest.approx(3.75, abs=0.01)


def test_monochrome1_is_flagged_not_inverted(cases):
    _, _, rows, expected = cases
    [row] = rows["monochrome1"]
    assert _dicom(row)["monochrome1"] is True
    assert np.array_equal(_volume(row), expected["monochrome1"])


def test_rgb_gets_a_trailing_channel_axis(cases):
    _, _, rows, expected = cases
    [row] = rows["rgb"]
    volume = _volume(row)
    assert row["dtype"] == "uint8" and volume.shape == (3, 32, 32, 3)
    assert np.array_equal(volume, expected["rgb"])
    assert "ome" not in zarr.open_group(row["zarr_uri"], mode="r").attrs  # NGFF has no trailing channel axis


def test_big_endian_decodes_like_little_endian(cases):
    _, _, rows, expected = cases
    [row] = rows["big_endian"]
    assert np.array_equal(_volume(row), expected["big_endian"])


def test_projection_radiograph_is_a_single_slice_with_imager_spacing(cases):
    _, _, rows, _ = cases
    [row] = rows["dx"]
    assert row["geometry"] == "single_slice" and row["spacing"][1:] == [0.8, 0.8]


def test_same_position_identical_pixels_is_a_duplicate(cases):
    root, out, rows, _ = cases
    [row] = rows["pixel_duplicate"]
    assert row["n_slices"] == 5 and row["geometry"] == "regular"
    instances = {os.path.basename(r["source_uri"]): r for r in read_table(out, "instances").to_pylist()
                 if r["series_instance_uid"] == CASES["pixel_duplicate"].series_uid}
    skipped = [r for r in instances.values() if r["status"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["reason"].startswith("duplicate: identical pixels at the same position")


def test_radial_series_is_never_one_volume(cases):
    _, _, rows, _ = cases
    assert len(rows["radial"]) == 4
    assert all(r["n_slices"] == 1 and r["split_by"] == ["orientation"] for r in rows["radial"])


def test_enhanced_multiframe_is_ordered_and_split_by_echo_into_4d(cases):
    _, out, rows, expected = cases
    [row] = rows["enhanced"]  # the echoes lie on one grid: one (t, z, y, x) array
    assert row["split_by"] == ["echo"] and row["geometry"] == "regular" and row["n_volumes"] == len(ECHOES)
    assert [v["echo"] for v in json.loads(row["volumes"])] == list(ECHOES)
    assert row["spacing"][0] == pytest.approx(3.0) and row["spacing"][1:] == [0.8, 0.8]
    volume = _volume(row)
    for t, echo in enumerate(ECHOES):
        assert np.array_equal(volume[t], expected["enhanced"][echo])
    with open(schemas.slices_csv_uri(out, row["series_key"])) as fh:
        frames = [(r["t_index"], r["frame_index"]) for r in csv.DictReader(fh)]
    assert len({f for _, f in frames}) == 6 * len(ECHOES)  # every frame of the one file, once
    rows = [r for r in read_table(out, "instances").to_pylist() if r["source_uri"].endswith("multi.dcm")]
    assert len(rows) == 1 and rows[0]["status"] == "converted" and rows[0]["series_key"] == row["series_key"]


@pytest.fixture(scope="module")
def resampled(tmp_path_factory):
    """A tilt of exactly one 0.8 mm row per 2 mm slice, and a stack with one slice missing."""
    root = tmp_path_factory.mktemp("resample-in")
    tilt = _spec("tilt-one-row", positions=[(-12.0, -12.0 + 0.8 * k, 2.0 * k) for k in range(6)])
    gap = _spec("gap", positions=synthetic.axial_positions(8, 1.25, skip=(3,)))
    synthetic.write_series(root / "tilt", tilt, seed=SEED)
    synthetic.write_series(root / "gap", gap, seed=SEED)
    outs = {}
    for name, flags in {"resample": ["--tilt", "resample", "--irregular", "resample"],
                        "fail": ["--irregular", "fail"]}.items():
        outs[name] = str(tmp_path_factory.mktemp(f"resample-{name}"))
        run(["--input", str(root), "--output", outs[name], *flags, *RUNNER_ARGS])
    rows = {mode: {r["series_instance_uid"]: r for r in read_table(out, "series").to_pylist()}
            for mode, out in outs.items()}
    return tilt, gap, rows, outs


def test_tilt_resample_shifts_each_slice_back_onto_the_normal(resampled):
    tilt, _, rows, _ = resampled
    row = rows["resample"][tilt.series_uid]
    assert row["geometry"] == "regular" and row["resampled_from"] == "tilted" and row["dtype"] == "float32"
    volume, original = _volume(row), _hu(tilt)
    for k in range(6):  # slice k drifted k rows along +y: row r of the output is row r - k of the input
        assert np.array_equal(volume[k, k:], original[k, : 32 - k])
    affine = np.array(_dicom(row)["affine_lps"])
    assert affine[:3, 2] == pytest.approx([0.0, 0.0, 2.0])  # no shear left
    assert row["spacing"][0] == pytest.approx(2.0)


def test_irregular_resample_interpolates_the_missing_slice(resampled):
    _, gap, rows, _ = resampled
    row = rows["resample"][gap.series_uid]
    assert row["resampled_from"] == "irregular_spacing" and row["n_slices"] == 8
    assert row["spacing"][0] == pytest.approx(1.25)
    volume, original = _volume(row), _hu(gap)  # 7 acquired slices, index 3 of 8 missing
    assert np.array_equal(volume[[0, 1, 2, 4, 5, 6, 7]], original.astype(np.float32))
    assert np.allclose(volume[3], (original[2] + original[3]) / 2)  # an estimate, and flagged as one


def test_irregular_fail_records_the_stack_as_failed(resampled):
    tilt, gap, rows, outs = resampled
    assert rows["fail"][gap.series_uid]["status"] == "failed"
    assert rows["fail"][gap.series_uid]["reason"].startswith("irregular spacing (largest step 2.500 mm)")
    assert rows["fail"][tilt.series_uid]["geometry"] == "tilted"  # --tilt keeps by default
    failed = [r for r in read_table(outs["fail"], "instances").to_pylist() if r["status"] == "failed"]
    assert len(failed) == 7 and all(r["reason"].startswith("irregular spacing") for r in failed)
