import io
import os

import pytest
from pydicom.data import get_testdata_file

from dicom_io.errors import NoPixelDataError, NotDicomError
from dicom_io.header import read_header


def _read(path):
    with open(path, "rb") as fp:
        return read_header(fp, path, os.path.getsize(path))


def test_ct_header_record():
    h = _read(get_testdata_file("CT_small.dcm", download=False))
    assert (h.rows, h.columns, h.modality, h.pixel_element) == (128, 128, "CT", "PixelData")
    assert h.image_position == pytest.approx((-158.135803, -179.035797, -75.699997))
    assert h.series_tags["Modality"] == "CT" and h.series_tags["KVP"] == 120.0
    assert not h.is_localizer


@pytest.mark.parametrize("name", ["image_dfl.dcm", "emri_small_big_endian.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"])
def test_pixel_data_found_in_every_encoding(name):
    assert _read(get_testdata_file(name, download=False)).pixel_element == "PixelData"


@pytest.mark.parametrize("name,reason", [("rtplan.dcm", "RT Plan Storage"), ("DICOMDIR", "Media Storage Directory")])
def test_objects_without_pixels_are_reported(name, reason):
    with pytest.raises(NoPixelDataError, match=reason):
        _read(get_testdata_file(name, download=False))


@pytest.mark.parametrize("data,match", [
    (b"", "empty file"), (b"hello, I am a text file\n" * 10, "not dicom"), (b"\x89PNG\r\n\x1a\n" + bytes(200), "not dicom"),
])
def test_foreign_bytes_are_not_dicom(data, match):
    with pytest.raises(NotDicomError, match=match):
        read_header(io.BytesIO(data), "mem://x", len(data))


def test_truncated_file_is_not_silently_an_image(corpus):
    path = [p for p in corpus.broken if os.path.getsize(p) > 0][0]
    with pytest.raises(NotDicomError, match="truncated"):
        _read(path)


def test_localizer_flag(corpus):
    assert _read(corpus.localizers[0]).is_localizer


def test_volume_attributes_come_from_the_one_table(tmp_path):
    """Every VOLUME_ATTRIBUTES row is read (top-level keyword or private tag), nothing else to wire."""
    import numpy as np
    import pydicom

    from dicom_io import attributes, header
    from tests import synthetic

    spec = synthetic.SeriesSpec(series_uid="1.2.3", study_uid="1.2", patient_id="P", modality="MR",
                                positions=[(0.0, 0.0, 0.0)], iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=(1.0, 1.0),
                                rows=4, cols=4, echo_number=2, echo_time=30.0)
    path = str(tmp_path / "a.dcm")
    synthetic.write_instance(path, spec, 0, seed=0, pixels=np.zeros((4, 4), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.TriggerTime, ds.TemporalPositionIdentifier, ds.AcquisitionTime = "412.5", 3, "101501.25"
    ds.DiffusionBValue, ds.DiffusionGradientOrientation = 800.0, [0.0, 0.6, 0.8]
    ds.save_as(path)
    h = _read(path)
    assert dict(h.volume) == {"image_type": "ORIGINAL\\PRIMARY\\AXIAL", "echo": 2, "temporal_position": 3, "b_value": 800, "diffusion_direction": (0.0, 0.6, 0.8),
                              "acquisition_number": 1, "trigger_time": 412.5, "echo_time": 30, "acquisition_time":
                              "101501.25", "stack_id": None}
    assert [name for name, _ in h.volume] == [a.name for a in attributes.VOLUME_ATTRIBUTES]
    assert set(attributes.KEYWORDS) <= set(header._RECORD_KEYWORDS)


def test_one_parse_one_record():
    from dicom_io.header import header_record, parse_header

    path = get_testdata_file("CT_small.dcm", download=False)
    with open(path, "rb") as fp:
        parsed = parse_header(fp, path, os.path.getsize(path))
    assert parsed.pixel_element == "PixelData" and parsed.pixel_offset is not None
    assert header_record(parsed, path, os.path.getsize(path)) == _read(path)


def test_private_siemens_b_value_and_direction_when_the_standard_ones_are_absent():
    import nibabel

    from dicom_io import storage

    path = os.path.join(os.path.dirname(nibabel.__file__), "nicom", "tests", "data", "siemens_dwi_1000.dcm.gz")
    with storage.open_source(path) as fp:
        h = read_header(fp, path, storage.size_of(path))
    assert h.value("b_value") == 1000 and h.value("diffusion_direction") == pytest.approx((0.99997449, 0.00505012, -0.00505012))


# ---- the record's element decoding: the fast path gives exactly pydicom's values -------------

def _test_files():
    import glob

    import nibabel

    root = os.path.dirname(get_testdata_file("CT_small.dcm", download=False))
    files = glob.glob(os.path.join(root, "**", "*"), recursive=True)
    files += glob.glob(os.path.join(os.path.dirname(root), "charset_files", "*.dcm"))  # every character set
    files += glob.glob(os.path.join(os.path.dirname(nibabel.__file__), "nicom", "tests", "data", "*"))
    return sorted(f for f in files if os.path.isfile(f))


def _same_value(fast, slow):
    import math

    from pydicom.multival import MultiValue

    from dicom_io.header import json_value

    if isinstance(slow, (MultiValue, list, tuple)):
        return isinstance(fast, (MultiValue, list)) and len(fast) == len(slow) and all(
            _same_value(a, b) for a, b in zip(fast, slow))
    if isinstance(slow, float) and math.isnan(slow):
        return isinstance(fast, float) and math.isnan(fast)
    return fast == slow and json_value(fast) == json_value(slow) and type(json_value(fast)) is type(json_value(slow))


def test_element_values_equal_pydicoms_own_decoding_on_every_test_file():
    """element_values decodes numbers, UIDs, codes and dates from raw bytes itself (a third of the
    record's cost); on every file pydicom-data and nibabel ship, explicit and implicit VR, both
    endiannesses, pydicom's character-set files, the values (and their JSON) are pydicom's."""
    import gzip
    import warnings

    import pydicom

    from pydicom.dataelem import RawDataElement

    from dicom_io.header import _RECORD_TAGS, element_values

    compared = fast_elements = 0
    for path in _test_files():
        data = open(path, "rb").read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ours = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
                theirs = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            except Exception:  # not DICOM at all (pydicom-data ships other files too)
                continue
            fast_elements += sum(1 for _, tag in _RECORD_TAGS if type(ours._dict.get(tag)) is RawDataElement)
            try:
                fast = element_values(ours)
            except Exception as exc:  # then pydicom fails on the same element
                fast = type(exc)
            try:
                slow = {key: theirs[tag].value for key, tag in _RECORD_TAGS if tag in theirs._dict}
            except Exception as exc:
                slow = type(exc)
        compared += 1
        if isinstance(slow, type) or isinstance(fast, type):
            assert fast == slow, path
            continue
        assert fast.keys() == slow.keys(), path
        for key in slow:
            assert _same_value(fast[key], slow[key]), (path, key, fast[key], slow[key])
    assert compared > 150 and fast_elements > 3000
