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
