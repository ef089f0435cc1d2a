"""Every real file that pydicom and pydicom-data ship, through the whole job (nothing downloaded)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pydicom.data
import pytest
import zarr

from dicom_io.tables import read_table
from pipelines.convert import run
from tests.conftest import RUNNER_ARGS, all_files

PYDICOM_FILES = os.path.dirname(pydicom.data.get_testdata_file("CT_small.dcm", download=False))
PYDICOM_DATA_FILES = os.path.dirname(pydicom.data.get_testdata_file("liver.dcm", download=False))


class _StartsWith(str):
    """Compares equal to any reason that starts with it."""

    def __eq__(self, other):
        return isinstance(other, str) and other.startswith(str(self))

    __hash__ = str.__hash__


_RUNS: dict[str, str] = {}


def _converted(root: str, tmp_path_factory) -> str:
    if root not in _RUNS:
        _RUNS[root] = str(tmp_path_factory.mktemp("vendor"))
        run(["--input", root, "--output", _RUNS[root], *RUNNER_ARGS])
    return _RUNS[root]


@pytest.fixture(scope="module", params=[PYDICOM_FILES, PYDICOM_DATA_FILES], ids=["pydicom", "pydicom-data"])
def vendor_run(request, tmp_path_factory):
    return request.param, _converted(request.param, tmp_path_factory)


def test_every_shipped_file_is_accounted_for_once_with_a_reason(vendor_run):
    root, out = vendor_run
    rows = read_table(out, "instances").to_pylist()
    assert Counter(r["source_uri"] for r in rows) == Counter(all_files(root))
    for r in rows:
        assert r["status"] in ("converted", "skipped", "failed")
        assert (r["status"] == "converted") == (r["reason"] == ""), r


def test_converted_volumes_match_their_slice_count_and_dtype(vendor_run):
    _, out = vendor_run
    series = read_table(out, "series").to_pylist()
    converted = [r for r in series if r["status"] == "converted"]
    assert len(converted) >= 25
    for r in converted:
        array = zarr.open_group(r["zarr_uri"], mode="r")["0"]
        planes = len(open(r["zarr_uri"].replace("/volumes/", "/slices/").replace(".zarr", ".csv")).readlines()) - 1
        assert r["n_slices"] * r["n_volumes"] == planes
        assert array.shape[:2] == (r["n_volumes"], r["n_slices"]) if r["n_volumes"] > 1 else array.shape[0] == planes
        assert str(array.dtype) == r["dtype"]


def test_failures_in_pydicom_files_are_the_known_broken_ones(vendor_run):
    root, out = vendor_run
    failed = {os.path.basename(r["source_uri"]): r["reason"] for r in read_table(out, "instances").to_pylist()
              if r["status"] == "failed" and not r["reason"].startswith("not dicom")}
    if root == PYDICOM_DATA_FILES:
        # shares emri_small's SOPInstanceUID, but its pixels do not decode: not a duplicate, its own failure
        assert failed == {"emri_small_jpeg_2k_lossless_too_short.dcm": _StartsWith(
            "decode error: JPEG 2000 Image Compression (Lossless Only)")}
    else:  # deliberately damaged files in pydicom's own test suite, each with its precise reason
        assert failed == {
            # its codestream declares 1024 x 3722445056: refused before any decoder allocates
            "JPEG2000-embedded-sequence-delimiter.dcm": _StartsWith("decode error: the compressed frame declares"),
            # one SOPInstanceUID, four encodings with different pixels (12-bit IDCTs differ by one grey
            # level, JPEG 2000 is lossy): not duplicates, one stack without positions, failed by the bomb
            "JPEG-lossy.dcm": _StartsWith("stack not converted: " + os.path.join(
                PYDICOM_FILES, "JPEG2000-embedded-sequence-delimiter.dcm")),
            "JPGExtended.dcm": _StartsWith("stack not converted"),
            "JPEG2000.dcm": _StartsWith("stack not converted"),
            # MR_small.dcm cut short (same UID, pixels not decodable): no longer hidden as its duplicate
            "MR_truncated.dcm": _StartsWith("decode error: pixel data shorter than declared"),
            "badVR.dcm": _StartsWith("decode error: Explicit VR Little Endian: ValueError"),  # NumberOfFrames '1A'
            "meta_missing_tsyntax.dcm": _StartsWith("invalid image: (0028,0010) Rows"),
            "nested_priv_SQ.dcm": _StartsWith("invalid image: (0028,0010) Rows"),
        }


def test_lossless_twins_in_pydicom_data_give_identical_volumes(tmp_path_factory):
    root = PYDICOM_DATA_FILES
    out = _converted(root, tmp_path_factory)
    by_source = {os.path.basename(r["source_uri"]): r for r in read_table(out, "instances").to_pylist()}
    series = {r["series_key"]: r for r in read_table(out, "series").to_pylist()}
    # emri_small in RLE / JPEG-LS / J2K lossless / big endian: duplicates of one image, the
    # uncompressed one kept; its volume must equal what every lossless twin decodes to.
    kept = by_source["emri_small.dcm"]
    assert kept["status"] == "converted"
    volume = zarr.open_group(series[kept["series_key"]]["zarr_uri"], mode="r")["0"][:]
    from dicom_io.header import read_header
    from dicom_io.pixels import decode, to_stored
    for twin in ("emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm",
                 "emri_small_big_endian.dcm"):
        assert by_source[twin]["status"] == "skipped" and by_source[twin]["reason"].startswith("duplicate")
        path = os.path.join(root, twin)
        with open(path, "rb") as fp:
            h = read_header(fp, path, os.path.getsize(path))
        with open(path, "rb") as fp:
            assert np.array_equal(to_stored(decode(fp, h), volume.dtype.name), volume)
