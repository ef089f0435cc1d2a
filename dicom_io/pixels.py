"""Pixel decoding: pydicom 3 decoders (pylibjpeg plugins, GDCM fallback) + modality LUT.

pydicom tries each installed plugin for a transfer syntax in turn; what they all fail goes to
imagecodecs for monochrome JPEG (12-bit JPEG extended, which neither pylibjpeg-libjpeg nor this
GDCM wheel decodes), then to GDCM in a throw-away process.
"""

from __future__ import annotations

import io
import subprocess
import sys
from typing import IO

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import UID

from dicom_io import codestream, deflate, mosaic, storage
from dicom_io.errors import DecodeError, DicomflowError, InconsistentSeriesError, PixelBombError, ValuesDoNotFitError
from dicom_io.header import InstanceHeader, ensure_transfer_syntax

DEFAULT_MAX_PIXEL_BYTES = 4 * 1024**3  # 4 GiB decoded per instance
HEADER_BUDGET = 64 * 1024 * 1024  # what a dataset may hold besides its pixels when inflated
GDCM_BASE_MEMORY = 1024**3  # address space of the GDCM process on top of 3x the pixels
GDCM_TIMEOUT_S = 300


def _without_gdcm_in_process() -> frozenset[str]:
    """Remove GDCM from this process's decoders; return the syntaxes it served (subprocess fallback)."""
    served = set()
    for uid in AllTransferSyntaxes:
        try:
            decoder = get_decoder(uid)
        except (NotImplementedError, ValueError):
            continue
        if "gdcm" in decoder.available_plugins:
            served.add(str(uid))
            decoder.remove_plugin("gdcm")
    return frozenset(served)


GDCM_SYNTAXES = _without_gdcm_in_process()
# JPEG baseline, extended (12-bit: pylibjpeg-libjpeg and this GDCM wheel fail it), lossless.
IMAGECODECS_JPEG = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                              "1.2.840.10008.1.2.4.70"})
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def declared_bytes(h: InstanceHeader) -> int:
    """Decoded size (0028,0010) Rows x (0028,0011) Columns x frames x samples x bytes."""
    return h.rows * h.columns * h.number_of_frames * h.samples_per_pixel * max(1, h.bits_allocated // 8)


def syntax_name(tsuid: str) -> str:
    """Human name of a transfer syntax UID (the UID itself when unknown)."""
    name = UID(tsuid).name if tsuid else "unknown transfer syntax"
    return name or tsuid


def check_size(h: InstanceHeader, max_bytes: int) -> None:
    """Refuse, before any allocation, pixel data larger than allowed or than the file holds."""
    if h.rows <= 0 or h.columns <= 0:
        raise DecodeError(f"invalid image: (0028,0010) Rows x (0028,0011) Columns is {h.rows} x {h.columns}")
    size = declared_bytes(h)
    if size > max_bytes:
        raise PixelBombError(f"pixel data too large: header declares {size} bytes decoded (limit {max_bytes})")
    if h.photometric == "YBR_FULL_422":  # uncompressed 4:2:2 stores 2 samples per pixel, not 3
        size = size * 2 // 3
    stored_plain = storage.compression_of(h.source_uri) is None  # a .gz file is smaller than its pixels
    if h.transfer_syntax_uid in UNCOMPRESSED and h.bits_allocated >= 8 and stored_plain and size > h.size_bytes:
        raise DecodeError(f"decode error: pixel data shorter than declared ({h.size_bytes} byte file, {size} declared)")


def native_eligible(h: InstanceHeader) -> bool:
    """Uncompressed monochrome integer pixels at a known offset: read directly, no second parse."""
    return (h.transfer_syntax_uid in UNCOMPRESSED and h.pixel_element == "PixelData" and h.pixel_offset is not None
            and h.samples_per_pixel == 1 and h.photometric in ("MONOCHROME1", "MONOCHROME2")
            and h.bits_allocated in (8, 16, 32) and 1 <= h.bits_stored <= h.bits_allocated
            and not h.modality_lut_sequence
            # exact length (one pad byte allowed): a frame count that disagrees goes to pydicom
            and declared_bytes(h) <= (h.pixel_length or 0) <= declared_bytes(h) + 1)


def read_native(fp: IO[bytes], h: InstanceHeader) -> np.ndarray:
    """Stored values of a native PixelData as pydicom gives them (unused high bits corrected),
    read straight into the array's own memory (one copy from the file, none afterwards)."""
    nbytes = declared_bytes(h)
    fp.seek(h.pixel_offset)
    kind, size = ("i" if h.pixel_representation else "u"), h.bits_allocated // 8
    big_endian = h.transfer_syntax_uid == "1.2.840.10008.1.2.2"
    arr = np.empty(nbytes // size, dtype=f"{'>' if big_endian else '<'}{kind}{size}")
    got = _read_into(fp, memoryview(arr.view(np.uint8)))
    if got < nbytes:
        raise DecodeError(f"decode error: pixel data shorter than declared ({got} of {nbytes} bytes)")
    if not arr.dtype.isnative:
        arr = arr.astype(f"={kind}{size}")
    shift = h.bits_allocated - h.bits_stored
    if shift and kind == "u":  # PS3.5 8.1.1: unused bits carry no meaning (pydicom clears them too)
        np.bitwise_and(arr, (1 << h.bits_stored) - 1, out=arr)
    elif shift:  # signed: the shift pair also extends the sign bit
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return arr.reshape(h.number_of_frames, h.rows, h.columns)


def _read_into(fp: IO[bytes], view: memoryview) -> int:
    """Fill `view` from `fp` (readinto where the file object has it); the bytes read."""
    readinto = getattr(fp, "readinto", None)
    got = 0
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            chunk = fp.read(len(view) - got)
            n = len(chunk)
            view[got:got + n] = chunk
        if not n:
            break
        got += n
    return got


def stored_range(h: InstanceHeader) -> tuple[int, int]:
    """The values (0028,0101) BitsStored and (0028,0103) PixelRepresentation allow: what read_native
    gives (it clears the unused high bits)."""
    bits = h.bits_stored
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if h.pixel_representation else (0, (1 << bits) - 1)


def rescale(stored: np.ndarray, h: InstanceHeader, owned: bool = False) -> np.ndarray:
    """(0028,1053) RescaleSlope and (0028,1052) RescaleIntercept, as pydicom's modality LUT does;
    per frame for enhanced instances (Pixel Value Transformation functional group).

    `owned`: `stored` is read_native's own fresh array, its values within stored_range(h), so the
    CT case is rescaled in place without a range pass."""
    known = stored_range(h) if owned else None
    if h.frames:
        planes = [_linear(frame, *info.rescale) for frame, info in zip(stored, h.frames)]
        dtype = np.result_type(*planes)
        return np.stack([p.astype(dtype, copy=False) for p in planes])
    return _linear(stored, h.rescale_slope, h.rescale_intercept, known, owned)


def _linear(stored: np.ndarray, slope: float, intercept: float, known: tuple[int, int] | None = None,
            owned: bool = False) -> np.ndarray:
    if slope == 1.0 and intercept == 0.0:
        return stored
    fast = _offset_in_int16(stored, slope, intercept, known, owned)
    if fast is not None:
        return fast
    if float(slope).is_integer() and float(intercept).is_integer() and max(abs(slope), abs(intercept)) < 2**31:
        # int32 is exact for <= 16-bit stored values with slope and intercept below 2**15
        exact32 = stored.dtype.itemsize <= 2 and max(abs(slope), abs(intercept)) < 2**15
        return stored.astype(np.int32 if exact32 else np.int64) * int(slope) + int(intercept)
    return stored.astype(np.float64) * slope + intercept  # huge values: inf/overflow caught by to_stored


def _offset_in_int16(stored: np.ndarray, slope: float, intercept: float, known: tuple[int, int] | None = None,
                     owned: bool = False) -> np.ndarray | None:
    """The CT case (slope 1, integer intercept, every result inside int16) in int16 throughout: the
    range is known from the header (`known`) or from the stored min and max, so no int32 copy or
    second range pass is needed; an `owned` 16-bit array is changed in place."""
    if slope != 1.0 or not float(intercept).is_integer() or stored.dtype.kind not in "iu" or stored.dtype.itemsize > 2:
        return None
    if not stored.size:
        return None
    offset = int(intercept)

    def fits(lo: int, hi: int) -> bool:
        return -32768 <= lo and hi <= 32767 and -32768 <= lo + offset and hi + offset <= 32767

    if known is None or not fits(*known):  # 16 stored bits: the values themselves decide
        if not fits(int(stored.min()), int(stored.max())):
            return None
    if owned and stored.dtype.itemsize == 2 and stored.flags.writeable and stored.flags.c_contiguous:
        out = stored.view(np.int16)  # uint16 values below 2**15 have the same bits as int16
    else:
        out = stored.astype(np.int16)
    out += np.int16(offset)
    return out


def _dataset(fp: IO[bytes], max_bytes: int) -> pydicom.Dataset:
    """The whole dataset; a deflated one inflated with a bound."""
    meta = deflate.deflated_meta(fp)
    if meta is not None:
        return deflate.read_full(fp, meta, max_bytes + HEADER_BUDGET)
    return pydicom.dcmread(fp, force=True)  # the header stage already accepted it as DICOM


def _check_frames(ds: pydicom.Dataset, h: InstanceHeader) -> None:
    """Every compressed frame's own header must agree with the DICOM header (decompression bombs)."""
    tsuid = str(ds.file_meta.TransferSyntaxUID)
    if tsuid not in codestream.J2K_SYNTAXES | codestream.JPEG_SYNTAXES:
        return
    for frame in generate_frames(ds.PixelData, number_of_frames=h.number_of_frames):
        codestream.check_frame(frame[:65536], tsuid, h.rows, h.columns, h.samples_per_pixel)


def _gdcm_subprocess(fp: IO[bytes], h: InstanceHeader, max_bytes: int, first_error: BaseException,
                     tried: str = "") -> np.ndarray:
    """Decode with GDCM in a throw-away process (it may abort on corrupt data), memory-limited."""
    fp.seek(0)
    limit = 3 * max(declared_bytes(h), 1) + GDCM_BASE_MEMORY
    try:
        done = subprocess.run([sys.executable, "-m", "dicom_io.gdcm_fallback", str(limit)], input=fp.read(),
                              capture_output=True, timeout=GDCM_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DecodeError(f"decode error: {syntax_name(h.transfer_syntax_uid)}: GDCM took over {GDCM_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise DecodeError(f"decode error: {syntax_name(h.transfer_syntax_uid)}: {type(first_error).__name__}: "
                          f"{first_error}{tried}; GDCM: {tail[0][:200]}")
    return np.load(io.BytesIO(done.stdout), allow_pickle=False)


def _fallback(fp: IO[bytes], ds: pydicom.Dataset, h: InstanceHeader, max_bytes: int, first_error: BaseException
              ) -> np.ndarray:
    """After pydicom's plugins: imagecodecs for monochrome JPEG (12-bit extended), then GDCM in its process."""
    tsuid, tried = str(ds.file_meta.TransferSyntaxUID), ""
    if tsuid in IMAGECODECS_JPEG and h.samples_per_pixel == 1:
        try:
            return _imagecodecs_jpeg(ds, h)
        except (MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except Exception as exc:  # imagecodecs raises Jpeg8Error (a RuntimeError), ValueError...
            tried = f"; imagecodecs: {type(exc).__name__}: {exc}"
    if tsuid not in GDCM_SYNTAXES:
        if not tried:
            raise first_error
        raise DecodeError(f"decode error: {syntax_name(h.transfer_syntax_uid)}: {type(first_error).__name__}: "
                          f"{first_error}{tried}") from first_error
    return _gdcm_subprocess(fp, h, max_bytes, first_error, tried)


def _imagecodecs_jpeg(ds: pydicom.Dataset, h: InstanceHeader) -> np.ndarray:
    """Stored values of monochrome JPEG frames decoded by imagecodecs (libjpeg-turbo 8/12-bit, ljpeg).

    Each frame's SOF was already checked against the header (_check_frames), so the decoder
    allocates no more than Rows x Columns; signed data gets its sign back from (0028,0101) BitsStored.
    """
    import imagecodecs

    planes = []
    for frame in generate_frames(ds.PixelData, number_of_frames=h.number_of_frames):
        if not frame.rstrip(b"\x00\xff").endswith(b"\xff\xd9"):  # libjpeg-turbo fills a cut frame silently
            raise ValueError("truncated JPEG frame (no EOI marker)")
        plane = np.asarray(imagecodecs.jpeg_decode(frame))
        if plane.shape != (h.rows, h.columns):
            raise ValueError(f"imagecodecs gave {plane.shape}, the header {h.rows} x {h.columns}")
        planes.append(plane)
    arr = np.stack(planes).astype(np.uint16 if h.bits_allocated <= 16 else np.uint32)
    if h.pixel_representation:
        bits = h.bits_stored
        signed = arr.astype(np.int32)
        signed = np.where(signed >= 2 ** (bits - 1), signed - 2 ** bits, signed)
        arr = signed.astype(np.int16 if h.bits_allocated <= 16 else np.int32)
    return arr[0] if h.number_of_frames == 1 else arr


def decode(fp: IO[bytes], h: InstanceHeader, max_bytes: int = DEFAULT_MAX_PIXEL_BYTES) -> np.ndarray:
    """Planes of one instance as (frames, rows, cols[, 3]), modality LUT applied (CT in HU); a
    Siemens mosaic as (images, tile rows, tile cols)."""
    check_size(h, max_bytes)
    if native_eligible(h):
        return rescale(_planes(read_native(fp, h), h), h, owned=h.mosaic is None)
    try:
        ds = _dataset(fp, max_bytes)
        ensure_transfer_syntax(ds)
        _check_frames(ds, h)
        ds.pixel_array_options(allow_excess_frames=False)  # more data than declared is an error
        try:
            arr = ds.pixel_array
        except (MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # in-process plugins failed (Rust plugins raise pyo3 panics)
            arr = _fallback(fp, ds, h, max_bytes, exc)
        if h.photometric == "PALETTE COLOR":
            arr = _palette_to_rgb8(apply_color_lut(arr, ds))
        elif h.samples_per_pixel == 1 and h.frames:  # enhanced or mosaic: per-plane rescale, below
            pass
        elif h.samples_per_pixel == 1:
            arr = apply_modality_lut(arr, ds)
    except (MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit, DicomflowError):
        raise
    except BaseException as exc:  # decoders raise ValueError, RuntimeError, ...; Rust plugins a
        # pyo3 PanicException, which derives from BaseException, on corrupt data
        raise DecodeError(f"decode error: {syntax_name(h.transfer_syntax_uid)}: {type(exc).__name__}: {exc}") from exc
    colour = h.samples_per_pixel > 1 or h.photometric == "PALETTE COLOR"
    expected = (h.number_of_frames, h.rows, h.columns) + ((3,) if colour else ())
    if arr.ndim == len(expected) - 1:
        arr = arr[np.newaxis]
    if arr.shape != expected:
        raise InconsistentSeriesError(f"invalid image: decoded shape {arr.shape} differs from the header's {expected}")
    return rescale(_planes(arr, h), h) if h.frames and h.samples_per_pixel == 1 else arr


def _planes(stored: np.ndarray, h: InstanceHeader) -> np.ndarray:
    """The instance's slices: a Siemens mosaic cut into its tiles, anything else as stored."""
    return mosaic.demosaic(stored, h.mosaic) if h.mosaic is not None else stored


def _palette_to_rgb8(rgb: np.ndarray) -> np.ndarray:
    """(0028,1101-1103) LUT entries may be 16 bit: keep the 8 most significant bits."""
    if rgb.dtype.itemsize > 1:
        return (rgb >> (8 * rgb.dtype.itemsize - 8)).astype(np.uint8)
    return rgb


PHILIPS_SCALINGS = ("dv", "fp")  # --philips_scaling: displayed values (DICOM's rescale) or floating point


def philips_fp_factor(h: InstanceHeader, frame: int = 0) -> float | None:
    """FP = DV / (RS x SS) (Philips' floating-point values, dcm2niix's default `-p y`): the factor
    from the displayed value of `frame`, with RS the RescaleSlope and SS the Philips ScaleSlope
    (2005,100E), both per frame in enhanced files (Pixel Value Transformation and the private
    group (2005,140F)); None when not a Philips image with both."""
    manufacturer = str(h.series_tags.get("Manufacturer") or "").upper()
    if "PHILIPS" not in manufacturer:
        return None
    if h.frames:
        info = h.frames[frame]
        slope, scale = info.rescale[0], info.philips_scale
    else:
        slope, scale = h.rescale_slope, h.philips_scale
    if not scale or not slope:
        return None
    return 1.0 / (slope * scale)


def scaled(values: np.ndarray, h: InstanceHeader, scaling: str) -> np.ndarray:
    """Decoded (DV) values as --philips_scaling asks: unchanged for dv, FP for fp where it applies
    (per frame: the frames of one enhanced file may have their own factors)."""
    if scaling != "fp":
        return values
    if not h.frames:
        factor = philips_fp_factor(h)
        return values if factor is None else values.astype(np.float64) * factor
    factors = [philips_fp_factor(h, i) for i in range(min(len(h.frames), len(values)))]
    if not any(factors):
        return values
    out = values.astype(np.float64)
    for i, factor in enumerate(factors):
        if factor is not None:
            out[i] *= factor
    return out


# Integer volumes start as int16 and are redone one step wider when a decoded value does not fit.
WIDER_DTYPE = {"int16": "int32", "int32": "float32"}


def wider_dtype(dtype: str) -> str | None:
    """The next volume dtype to try after ValuesDoNotFitError, None when there is none."""
    return WIDER_DTYPE.get(dtype)


def to_stored(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Cast rescaled values to the volume dtype, refusing any value the cast would change."""
    target = np.dtype(dtype)
    if arr.dtype == target:
        return arr
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InconsistentSeriesError("invalid image: rescaled values are not finite (absurd slope/intercept)")
    if arr.dtype.kind in "iu" and target.kind in "iu":  # integers: the range decides, two cheap passes
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValuesDoNotFitError(f"values do not fit {dtype} (range {arr.min()}..{arr.max()})")
        return arr.astype(target)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(target)
    if target.kind == "f" and not np.all(np.isfinite(out)):
        raise InconsistentSeriesError(f"invalid image: values exceed {dtype} (range {arr.min()}..{arr.max()})")
    if target.kind in "iu" and not np.array_equal(out, arr):
        raise ValuesDoNotFitError(f"values do not fit {dtype} (range {arr.min()}..{arr.max()})")
    return out
