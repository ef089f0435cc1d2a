import dataclasses
import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from dicom_io import pixels
from dicom_io.errors import DecodeError, InconsistentSeriesError, PixelBombError
from dicom_io.header import read_header


def _decode(name):
    path = get_testdata_file(name, download=False)
    with open(path, "rb") as fp:
        h = read_header(fp, path, os.path.getsize(path))
    with open(path, "rb") as fp:
        return h, pixels.decode(fp, h)


def test_ct_is_in_hounsfield_units():
    h, arr = _decode("CT_small.dcm")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    assert arr.shape == (1, 128, 128)
    assert np.array_equal(arr[0], apply_modality_lut(ds.pixel_array, ds))


@pytest.mark.parametrize("compressed,plain", [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
    ("emri_small_big_endian.dcm", "emri_small.dcm"),
])
def test_lossless_encodings_decode_to_their_uncompressed_twin(compressed, plain):
    _, a = _decode(compressed)
    _, b = _decode(plain)
    assert a.shape == b.shape and np.array_equal(a, b)


def test_bomb_is_refused_before_decoding():
    h, _ = _decode("CT_small.dcm")
    bomb = dataclasses.replace(h, rows=65535, columns=65535, number_of_frames=1000)
    with pytest.raises(PixelBombError, match="too large"):
        pixels.check_size(bomb, pixels.DEFAULT_MAX_PIXEL_BYTES)
    short = dataclasses.replace(h, rows=4096, columns=4096)  # uncompressed, more than the file holds
    with pytest.raises(DecodeError, match="shorter than declared"):
        pixels.check_size(short, pixels.DEFAULT_MAX_PIXEL_BYTES)


def test_cast_refuses_values_that_do_not_fit():
    assert pixels.to_stored(np.array([1.0, -2.0]), "int16").dtype == np.int16
    with pytest.raises(InconsistentSeriesError):
        pixels.to_stored(np.array([1.5]), "int16")
    with pytest.raises(InconsistentSeriesError):
        pixels.to_stored(np.array([70000.0]), "int16")


def _native_vendor_files():
    for folder in (os.path.dirname(get_testdata_file("CT_small.dcm", download=False)),
                   os.path.dirname(get_testdata_file("liver.dcm", download=False))):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as fp:
                    h = read_header(fp, path, os.path.getsize(path))
            except Exception:
                continue
            if pixels.native_eligible(h):
                yield h


def _reference_hu(ds):
    """pydicom's modality LUT; for enhanced objects (which it leaves raw) the rescale of the
    Pixel Value Transformation functional group, read here straight from the dataset."""
    if "SharedFunctionalGroupsSequence" in ds and "RescaleSlope" not in ds:
        item = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        return ds.pixel_array.astype(np.float64) * float(item.RescaleSlope) + float(item.RescaleIntercept)
    return apply_modality_lut(ds.pixel_array, ds)


def test_native_fast_path_equals_pydicom_on_every_shipped_native_file():
    """Direct reads by offset (no second parse) must give exactly what pydicom decodes."""
    checked, pydicom_refused = 0, []
    for h in _native_vendor_files():
        ds = pydicom.dcmread(h.source_uri, force=True)
        with open(h.source_uri, "rb") as fp:
            try:
                fast = pixels.rescale(pixels.read_native(fp, h), h, owned=True)  # as decode() does
            except DecodeError:  # e.g. MR_truncated.dcm: then pydicom must refuse it too
                with pytest.raises(ValueError, match="less than expected"):
                    _ = ds.pixel_array
                continue
        try:
            slow = _reference_hu(ds).reshape(fast.shape)
        except ValueError:
            pydicom_refused.append(os.path.basename(h.source_uri))
            continue
        assert fast.dtype.kind in "iuf" and np.array_equal(fast, slow), h.source_uri
        checked += 1
    assert checked >= 20  # big endian, implicit VR, 8/16/32-bit, signed, BitsStored < BitsAllocated
    assert pydicom_refused == []


@pytest.mark.parametrize("signed,bits_stored,intercept", [
    (0, 12, -1024), (1, 12, -1024), (0, 15, -1024), (1, 16, -1024), (0, 16, -1024), (1, 12, 0), (0, 12, 5000)])
def test_native_read_and_in_place_rescale_equal_pydicom_with_garbage_high_bits(tmp_path, signed, bits_stored, intercept):
    """Unused high bits set to garbage (PS3.5 8.1.1 says they mean nothing), values at both ends of
    the stored range: read_native's masking or sign extension and the in-place int16 rescale give
    pydicom's values; a range that would overflow int16 is not done in int16."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, signed
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    rng = np.random.default_rng(bits_stored + signed)
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    values = rng.integers(lo, hi + 1, size=(ds.Rows, ds.Columns))
    values[0, :2] = lo, hi
    raw = (values & 0xFFFF).astype(np.uint16)
    if bits_stored < 16:  # garbage in the unused bits
        raw |= (rng.integers(0, 1 << (16 - bits_stored), size=raw.shape) << bits_stored).astype(np.uint16)
    ds.PixelData = raw.tobytes()
    path = str(tmp_path / "garbage.dcm")
    ds.save_as(path)
    with open(path, "rb") as fp:
        h = read_header(fp, path, os.path.getsize(path))
        assert pixels.native_eligible(h)
        ours = pixels.decode(fp, h)[0]
    reference = apply_modality_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path))
    assert np.array_equal(ours, reference) and np.array_equal(ours, values + intercept)
    fits = -32768 <= lo + intercept and hi + intercept <= 32767
    assert (ours.dtype == np.int16) == (fits or bool(-32768 <= values.min() + intercept
                                                     and values.max() + intercept <= 32767))


DATA_TWINS = [("693_J2KR.dcm", "693_UNCR.dcm"), ("MR2_J2KR.dcm", "MR2_UNCR.dcm"), ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
              ("RG3_J2KR.dcm", "RG3_UNCR.dcm"), ("US1_J2KR.dcm", "US1_UNCR.dcm"), ("OBXXXX1A_rle.dcm", "OBXXXX1A.dcm"),
              ("OBXXXX1A_rle_2frame.dcm", "OBXXXX1A_2frame.dcm"), ("emri_small_RLE.dcm", "emri_small.dcm"),
              ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"), ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm")]


@pytest.mark.parametrize("compressed,plain", DATA_TWINS)
def test_every_shipped_lossless_twin_decodes_to_its_uncompressed_pixels(compressed, plain):
    """pydicom-data's lossless J2K and RLE files against the uncompressed files they came from."""
    _, a = _decode(compressed)
    _, b = _decode(plain)
    assert a.shape == b.shape and np.array_equal(a, b)


def test_gdcm_fallback_runs_in_its_own_process_and_agrees():
    """The GDCM fallback (a throw-away process, so its aborts cannot kill a worker) decodes
    exactly what the in-process plugins decode."""
    h, expected = _decode("MR2_J2KR.dcm")
    with open(h.source_uri, "rb") as fp:
        stored = pixels._gdcm_subprocess(fp, h, pixels.DEFAULT_MAX_PIXEL_BYTES, RuntimeError("forced"))
    ds = pydicom.dcmread(h.source_uri)
    assert np.array_equal(apply_modality_lut(stored, ds).reshape(expected.shape), expected)
    assert "gdcm" not in pixels.get_decoder(h.transfer_syntax_uid).available_plugins  # never in-process


def _jpeg_lossy_with_frame(tmp_path, cut):
    """JPEG-lossy.dcm with its one frame replaced by cut(frame)."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm", download=False))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([cut(frame)])
    path = str(tmp_path / "cut.dcm")
    ds.save_as(path)
    with open(path, "rb") as fp:
        return path, read_header(fp, path, os.path.getsize(path))


def test_no_installed_decoder_gives_the_transfer_syntax_name(tmp_path):
    """12-bit JPEG whose scan header is cut to 2 bytes: pylibjpeg, imagecodecs and GDCM all fail;
    the reason names the syntax and every decoder's answer."""
    path, h = _jpeg_lossy_with_frame(
        tmp_path, lambda f: f[:f.find(b"\xff\xda")] + b"\xff\xda\x00\x02" + bytes(50) + b"\xff\xd9")
    with open(path, "rb") as fp, pytest.raises(DecodeError, match=r"(?s)^decode error: JPEG Extended \(Process 2 and 4\)"
                                                                r".*imagecodecs: Jpeg8Error.*GDCM"):
        pixels.decode(fp, h)


def test_truncated_jpeg_frame_is_an_error_not_a_grey_fill(tmp_path):
    path, h = _jpeg_lossy_with_frame(tmp_path, lambda f: f[:f.find(b"\xff\xda") + 200])
    with open(path, "rb") as fp, pytest.raises(DecodeError, match=r"(?s)imagecodecs: ValueError: truncated JPEG frame \(no EOI marker\)"):
        pixels.decode(fp, h)


def test_12_bit_jpeg_extended_decodes_with_imagecodecs_to_the_reference():
    """JPEG-lossy.dcm (1.2.840.10008.1.2.4.51, 12-bit, an invalid scan stop pylibjpeg-libjpeg refuses):
    pydicom's reference values, and its fixed twin JPGExtended.dcm as pylibjpeg decodes it (IDCTs
    may differ by one grey level, as JPEG allows)."""
    h, arr = _decode("JPEG-lossy.dcm")
    assert h.transfer_syntax_uid == "1.2.840.10008.1.2.4.51" and h.bits_stored == 12
    assert arr.shape == (1, 1024, 256) and arr.dtype == np.uint16
    assert arr[0, 420, 140] == 244 and arr[0, 230, 120] == 95  # pydicom's PixelReference for this file
    fixed = pydicom.dcmread(get_testdata_file("JPGExtended.dcm", download=False)).pixel_array  # pylibjpeg
    assert np.abs(arr[0].astype(np.int32) - fixed).max() <= 1 and np.mean(arr[0] == fixed) > 0.98
    _, again = _decode("JPGExtended.dcm")
    assert np.array_equal(again, fixed[np.newaxis])  # the fixed file is still pylibjpeg's


def test_12_bit_jpeg_frame_larger_than_its_header_is_refused_before_imagecodecs():
    h, _ = _decode("JPEG-lossy.dcm")
    path = get_testdata_file("JPEG-lossy.dcm", download=False)
    small = dataclasses.replace(h, rows=64, columns=64)
    with open(path, "rb") as fp, pytest.raises(DecodeError, match="the compressed frame declares 1024 x 256"):
        pixels.decode(fp, small)
