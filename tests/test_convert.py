"""convert_stack on real and generated files: dtype from the values, compressed sources."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil

import numpy as np
import pydicom
import pydicom.data
import pytest
import zarr

from dicom_io import storage
from dicom_io.convert import ConvertSettings, convert_stack
from dicom_io.header import read_header
from dicom_io.plan import plan_series
from tests import synthetic

CT5N = os.path.join(os.path.dirname(pydicom.data.get_testdata_file("CT_small.dcm", download=False)),
                    "dicomdirtests", "98892001", "CT5N")


def headers_of(paths):
    out = []
    for path in paths:
        with storage.open_source(path) as fp:
            out.append(read_header(fp, path, storage.size_of(path)))
    return out


def convert_files(paths, out):
    """Plan every file as one series and convert each stack; (results, plan)."""
    headers = headers_of(paths)
    plan = plan_series(headers[0].series_instance_uid, headers)
    return [convert_stack(stack, ConvertSettings(output=str(out))) for stack in plan.stacks], plan


def volume_of(result):
    return zarr.open_group(result.series["zarr_uri"], mode="r")["0"][:]


def test_ct5n_signed_16_bit_with_intercept_is_int16_hu(tmp_path):
    """pydicom's CT5N: the header allows -33792..31743, the values are -888..85: int16, exact HU."""
    paths = sorted(os.path.join(CT5N, f) for f in os.listdir(CT5N))
    [result], _ = convert_files(paths, tmp_path)
    assert result.series["status"] == "converted" and result.series["dtype"] == "int16"
    volume = volume_of(result)
    assert volume.dtype == np.int16
    expected = sorted((pydicom.dcmread(p) for p in paths), key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
                   for ds in expected])
    assert np.array_equal(volume, hu)


def _mr_spec(slope):
    return synthetic.SeriesSpec(series_uid=synthetic.uid_from("widen", slope), study_uid=synthetic.uid_from("st"),
                                patient_id="P", modality="MR", positions=synthetic.axial_positions(4, 2.0),
                                iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=(1.0, 1.0), rows=8, cols=8,
                                slope=slope, intercept=0.0)


def test_a_later_slice_that_does_not_fit_int16_redoes_the_stack_in_int32(tmp_path):
    spec = _mr_spec(10.0)
    paths = []
    for i in range(4):
        stored = np.full((8, 8), 100 + i, dtype=np.uint16)
        if i == 3:
            stored[2, 2] = 4000  # x10 = 40000: beyond int16, only in the last slice
        paths.append(str(tmp_path / "in" / f"{i}.dcm"))
        synthetic.write_instance(paths[-1], spec, i, seed=0, pixels=stored)
    [result], plan = convert_files(paths, tmp_path / "out")
    assert plan.stacks[0].dtype == "int16"  # planned int16, the values widened it
    assert result.series["status"] == "converted" and result.series["dtype"] == "int32"
    volume = volume_of(result)
    assert volume.dtype == np.int32 and volume[3, 2, 2] == 40000 and volume[0, 0, 0] == 1000
    record = json.loads(open(tmp_path / "out" / "series" / f"{result.series['series_key']}.json").read())
    assert record["dtype"] == "int32"
    # a re-run recognises the committed series although it was planned int16
    [again], _ = convert_files(paths, tmp_path / "out")
    assert again.reused


def test_gzipped_sources_read_transparently_with_their_own_uri(tmp_path):
    paths = sorted(os.path.join(CT5N, f) for f in os.listdir(CT5N))
    zipped = []
    for p in paths:
        target = tmp_path / "in" / f"{os.path.basename(p)}.dcm.gz"
        target.parent.mkdir(exist_ok=True)
        with open(p, "rb") as src, gzip.open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        zipped.append(str(target))
    [plain], _ = convert_files(paths, tmp_path / "plain")
    [result], _ = convert_files(zipped, tmp_path / "gz")
    assert result.series["status"] == "converted"
    assert np.array_equal(volume_of(result), volume_of(plain))
    assert sorted(r["source_uri"] for r in result.instances) == sorted(zipped)
    assert all(r["status"] == "converted" for r in result.instances)


def test_truncated_gzip_source_fails_with_a_reason(tmp_path):
    paths = sorted(os.path.join(CT5N, f) for f in os.listdir(CT5N))[:2]
    zipped = []
    for p in paths:
        target = tmp_path / f"{os.path.basename(p)}.dcm.gz"
        target.write_bytes(gzip.compress(open(p, "rb").read()))
        zipped.append(str(target))
    headers = headers_of(zipped)
    data = open(zipped[1], "rb").read()
    open(zipped[1], "wb").write(data[: len(data) // 2])  # cut after the header pass, same name
    headers = [headers[0], headers[1].__class__(**{**headers[1].__dict__, "size_bytes": len(data) // 2})]
    plan = plan_series(headers[0].series_instance_uid, headers)
    [result] = [convert_stack(s, ConvertSettings(output=str(tmp_path / "out"))) for s in plan.stacks]
    assert result.series["status"] == "failed"
    reasons = {r["source_uri"]: r["reason"] for r in result.instances}
    assert reasons[zipped[1]].startswith("decode error: compressed file unreadable: EOFError")


def _philips_files(tmp_path, scale_slope=2.5, rescale_slope=3.0):
    """Generated Philips MR slices with (2005,100E) ScaleSlope under its private creator, as scanners write it."""
    spec = synthetic.SeriesSpec(series_uid=synthetic.uid_from("philips"), study_uid=synthetic.uid_from("st"),
                                patient_id="P", modality="MR", positions=synthetic.axial_positions(3, 2.0),
                                iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=(1.0, 1.0), rows=8, cols=8,
                                slope=rescale_slope, intercept=-6.0)
    paths = []
    for i in range(3):
        path = str(tmp_path / "in" / f"{i}.dcm")
        synthetic.write_instance(path, spec, i, seed=0, pixels=np.full((8, 8), 10 * (i + 1), dtype=np.uint16))
        ds = pydicom.dcmread(path)
        ds.Manufacturer = "Philips Medical Systems"
        block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x0E, "FL", scale_slope)
        ds.save_as(path)
        paths.append(path)
    return paths


def test_philips_scaling_dv_is_the_dicom_rescale_and_fp_divides_by_rs_times_ss(tmp_path):
    paths = _philips_files(tmp_path)
    headers = headers_of(paths)
    assert headers[0].philips_scale == 2.5
    dv_plan = plan_series(headers[0].series_instance_uid, headers)
    fp_plan = plan_series(headers[0].series_instance_uid, headers, philips_scaling="fp")
    [dv] = [convert_stack(s, ConvertSettings(output=str(tmp_path / "dv"))) for s in dv_plan.stacks]
    [fp] = [convert_stack(s, ConvertSettings(output=str(tmp_path / "fp"), philips_scaling="fp"))
            for s in fp_plan.stacks]
    dv_values, fp_values = volume_of(dv), volume_of(fp)
    assert dv.series["dtype"] == "int16" and fp.series["dtype"] == "float32"
    assert dv_values[:, 0, 0].tolist() == [3 * 10 - 6, 3 * 20 - 6, 3 * 30 - 6]  # DV = PV x RS + RI
    assert np.allclose(fp_values, dv_values / (3.0 * 2.5))  # FP = DV / (RS x SS)
    record = json.loads(open(tmp_path / "fp" / "series" / f"{fp.series['series_key']}.json").read())
    assert record["philips_scaling"] == "fp"
    from dicom_io import verify

    slices = list(csv.DictReader(open(tmp_path / "fp" / "slices" / f"{fp.series['series_key']}.csv")))
    for row in slices:
        row["frame_index"] = int(row["frame_index"])
    assert verify.check_sources(slices, "float32", 2**30, scaling="fp").failed == 0  # verify re-scales too
    assert verify.check_sources(slices, "float32", 2**30).failed == len(slices)


def test_philips_scaling_fp_of_an_enhanced_file_is_per_frame(tmp_path):
    """Enhanced Philips MR keeps RS per frame (Pixel Value Transformation) and SS per frame in its
    private group (2005,140F), as IM_0027_fMAP of dcm2niix's dcm_qa_enh does (a magnitude and a
    field map in one file, each with its own factors): FP is computed frame by frame."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq

    spec = synthetic.SeriesSpec(series_uid=synthetic.uid_from("philips-enh"), study_uid=synthetic.uid_from("st"),
                                patient_id="P", modality="MR", positions=synthetic.axial_positions(3, 2.0),
                                iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=(1.0, 1.0), rows=8, cols=8)
    path = str(tmp_path / "in" / "enh.dcm")
    os.makedirs(os.path.dirname(path))
    expected_pv = synthetic.write_enhanced_mr(path, spec, (5.0, 10.0), seed=3)
    factors = {5.0: (1.5, -4.0, 8.0), 10.0: (0.25, 2.0, 0.5)}  # echo -> RS, RI, SS
    ds = pydicom.dcmread(path)
    ds.Manufacturer = "Philips Medical Systems"
    for fg in ds.PerFrameFunctionalGroupsSequence:
        rs, ri, ss = factors[float(fg.MREchoSequence[0].EffectiveEchoTime)]
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = str(rs), str(ri), "US"
        fg.PixelValueTransformationSequence = Seq([transform])
        private = Dataset()
        private.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", ss)
        fg.add_new(0x20050014, "LO", "Philips MR Imaging DD 005")  # the creator of (2005,14xx), as Philips writes it
        fg.private_block(0x2005, "Philips MR Imaging DD 005").add_new(0x0F, "SQ", Seq([private]))
    ds.save_as(path)
    [header] = headers_of([path])
    assert {(f.rescale[0], f.philips_scale) for f in header.frames} == {(1.5, 8.0), (0.25, 0.5)}
    volumes, echoes = {}, {}
    for scaling in ("dv", "fp"):
        [stack] = plan_series(header.series_instance_uid, [header], philips_scaling=scaling).stacks
        result = convert_stack(stack, ConvertSettings(output=str(tmp_path / scaling), philips_scaling=scaling))
        assert result.series["status"] == "converted", result.series
        volumes[scaling] = volume_of(result)
        record = json.loads(open(tmp_path / scaling / "series" / f"{result.series['series_key']}.json").read())
        echoes[scaling] = [v["echo_time"] for v in record["volumes"]]
    assert echoes["dv"] == echoes["fp"] and sorted(echoes["fp"]) == [5.0, 10.0]
    assert volumes["fp"].dtype == np.float32 and volumes["fp"].shape == (2, 3, 8, 8)
    for t, echo in enumerate(echoes["fp"]):
        rs, ri, ss = factors[echo]
        dv = expected_pv[echo] * rs + ri
        assert np.array_equal(volumes["dv"][t], dv)
        assert np.allclose(volumes["fp"][t], dv / (rs * ss), rtol=1e-6)


def _ge_files(tmp_path, name, modality, b_values, implicit=False):
    """Generated GE slices, 2 positions x len(b_values) volumes, identical pixels at each position,
    the b-value only in (0043,1039) under GEMS_PARM_01, as GE writes it (with its 1e9 bias)."""
    from pydicom.uid import ImplicitVRLittleEndian

    spec = synthetic.SeriesSpec(series_uid=synthetic.uid_from("ge", name), study_uid=synthetic.uid_from("st"),
                                patient_id="P", modality=modality, positions=synthetic.axial_positions(2, 2.0),
                                iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=(1.0, 1.0), rows=8, cols=8)
    paths = []
    for v, b in enumerate(b_values):
        for i in range(2):
            path = str(tmp_path / name / f"{v}_{i}.dcm")
            synthetic.write_instance(path, spec, i, seed=0, instance_number=1 + v * 2 + i,
                                     sop_uid=synthetic.uid_from("ge", name, v, i),
                                     transfer_syntax=ImplicitVRLittleEndian if implicit else synthetic.ExplicitVRLittleEndian,
                                     pixels=np.full((8, 8), 100 + i, dtype=np.uint16))
            ds = pydicom.dcmread(path)
            ds.Manufacturer = "GE MEDICAL SYSTEMS"
            ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", [str(b), "8", "0", "0"])
            ds.save_as(path, implicit_vr=implicit) if implicit else ds.save_as(path)
            paths.append(path)
    return paths


@pytest.mark.parametrize("implicit", [False, True])
def test_ge_b_value_from_0043_1039_without_its_bias_makes_a_4d_dwi(tmp_path, implicit):
    """GE keeps the b-value in (0043,1039), first value, plus 1e9 on some sequences (dcm2niix's
    set_bValGE): two volumes with identical pixels at the same positions are a 4D DWI, not duplicates."""
    paths = _ge_files(tmp_path, "dwi", "MR", [1_000_000_000, 1_000_001_000], implicit)
    headers = headers_of(paths)
    assert sorted(dict(h.volume)["b_value"] for h in headers) == [0, 0, 1000, 1000]
    plan = plan_series(headers[0].series_instance_uid, headers)
    assert plan.exclusions == () and len(plan.stacks) == 1
    [stack] = plan.stacks
    assert [v["b_value"] for v in stack.volumes] == [0, 1000]


def test_ge_private_0043_1039_of_a_ct_is_not_a_b_value(tmp_path):
    paths = _ge_files(tmp_path, "ct", "CT", [5, 7])
    headers = headers_of(paths)
    assert {dict(h.volume)["b_value"] for h in headers} == {None}


def test_philips_scaling_leaves_other_vendors_alone(tmp_path):
    paths = sorted(os.path.join(CT5N, f) for f in os.listdir(CT5N))
    headers = headers_of(paths)
    [stack] = plan_series(headers[0].series_instance_uid, headers, philips_scaling="fp").stacks
    assert stack.philips_scaling is None and stack.dtype == "int16"


# ---- duplicate rules on generated files (plan_series with the real pixel digest) -----------------

def _spec(name):
    return synthetic.SeriesSpec(series_uid=synthetic.uid_from("dup", name), study_uid=synthetic.uid_from("st"),
                                patient_id="P", modality="MR", positions=synthetic.axial_positions(2, 2.0),
                                iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=(1.0, 1.0), rows=8, cols=8,
                                intercept=0.0)


def _plan(paths):
    from dicom_io.convert import pixel_digest

    headers = headers_of(paths)
    return plan_series(headers[0].series_instance_uid, headers, pixel_digest)


def test_same_sop_uid_and_pixels_in_another_encoding_is_a_duplicate(tmp_path):
    spec = _spec("twin")
    plain, rle = str(tmp_path / "a.dcm"), str(tmp_path / "b_rle.dcm")
    synthetic.write_instance(plain, spec, 0, seed=0)
    ds = pydicom.dcmread(plain)
    ds.compress("1.2.840.10008.1.2.5", generate_instance_uid=False)  # RLE, the same SOPInstanceUID
    ds.save_as(rle)
    plan = _plan([plain, rle])
    [excluded] = plan.exclusions
    assert excluded.header.source_uri == rle and excluded.reason == f"duplicate: same SOPInstanceUID and pixels as {plain}"


def test_same_sop_uid_with_other_pixels_is_kept(tmp_path):
    spec = _spec("edited")
    first, edited = str(tmp_path / "a.dcm"), str(tmp_path / "b.dcm")
    synthetic.write_instance(first, spec, 0, seed=0)
    synthetic.write_instance(edited, spec, 0, seed=0, pixels=np.full((8, 8), 7, dtype=np.uint16))  # same UID
    plan = _plan([first, edited])
    assert plan.exclusions == ()
    assert sorted(s.slices[0].header.source_uri for s in plan.stacks) == [first, edited]


def _with_b_value(path, b_value):
    ds = pydicom.dcmread(path)
    ds.DiffusionBValue = b_value
    ds.save_as(path)


def test_identical_pixels_under_other_uids_are_duplicates_only_within_one_volume(tmp_path):
    spec = _spec("b0")
    same = np.full((8, 8), 100, dtype=np.uint16)
    paths = {}
    for name, b, uid in (("b0", 0, "2.25.1"), ("b0_again", 0, "2.25.2"), ("b1000", 1000, "2.25.3")):
        paths[name] = str(tmp_path / f"{name}.dcm")
        synthetic.write_instance(paths[name], spec, 0, seed=0, sop_uid=uid, pixels=same)
        _with_b_value(paths[name], b)
    plan = _plan(list(paths.values()))
    [excluded] = plan.exclusions  # b0_again: the same image at the same place in the same volume
    assert excluded.header.source_uri == paths["b0_again"]
    assert excluded.reason == f"duplicate: identical pixels at the same position as {paths['b0']}"
    [stack] = plan.stacks  # b=0 and b=1000 keep their identical pixels: two volumes of one 4D stack
    assert [v["b_value"] for v in stack.volumes] == [0, 1000]
