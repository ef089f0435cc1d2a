"""Deflated Explicit VR Little Endian, read with a bound on how much it may inflate to.

pydicom inflates the whole stream at once, so a 1 MB file can become gigabytes before a single
element is parsed. Here the file meta is read as usual and the dataset inflated in chunks up to
a limit.
"""

from __future__ import annotations

import io
import zlib
from typing import IO

import pydicom
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

from dicom_io.errors import NotDicomError, PixelBombError

DEFLATED = "1.2.840.10008.1.2.1.99"
CHUNK = 1024 * 1024
PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}


META_PEEK = 16 * 1024


def _plainly_not_deflated(fp: IO[bytes]) -> bool:
    """True when the first bytes show a standard file meta (preamble, DICM, group length) whose
    TransferSyntaxUID is not the deflated one: the common case, decided without parsing the meta."""
    head = fp.read(META_PEEK)
    fp.seek(0)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        return False
    end = 144 + int.from_bytes(head[140:144], "little")
    return end <= len(head) and DEFLATED.encode() not in head[144:end]


def deflated_meta(fp: IO[bytes]) -> pydicom.dataset.FileMetaDataset | None:
    """The file meta when the file is deflated (fp left at the dataset), else None (fp at 0)."""
    fp.seek(0)
    if _plainly_not_deflated(fp):
        return None
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:
        meta = None
    if meta is None or meta.get("TransferSyntaxUID") != DEFLATED:
        fp.seek(0)
        return None
    return meta


def inflate(fp: IO[bytes], limit: int) -> tuple[bytes, bool]:
    """At most `limit` inflated bytes of the raw deflate stream at fp; and whether that was all."""
    decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    try:
        while len(out) < limit:
            chunk = fp.read(CHUNK)
            if not chunk:
                break
            out += decompressor.decompress(chunk, limit - len(out))
            if decompressor.unconsumed_tail:
                return bytes(out), False
    except zlib.error as exc:
        raise NotDicomError(f"not dicom: corrupt deflated data ({exc})") from exc
    return bytes(out), len(out) < limit


def _at_pixels(tag, vr, length) -> bool:
    return int(tag) in PIXEL_TAGS


def read_header(fp: IO[bytes], meta: pydicom.dataset.FileMetaDataset, limit: int
                ) -> tuple[pydicom.Dataset, str | None]:
    """Dataset up to its pixel element, inflating at most `limit` bytes; and which pixel element."""
    data, _ = inflate(fp, limit)
    buffer = io.BytesIO(data)
    ds = read_dataset(buffer, is_implicit_VR=False, is_little_endian=True, stop_when=_at_pixels, defer_size="64 KB")
    ds.file_meta = meta
    ds.set_original_encoding(False, True, ds.get("SpecificCharacterSet"))
    head = data[buffer.tell():buffer.tell() + 4]
    tag = int.from_bytes(head[:2], "little") << 16 | int.from_bytes(head[2:4], "little") if len(head) == 4 else 0
    return ds, PIXEL_TAGS.get(tag)


def read_full(fp: IO[bytes], meta: pydicom.dataset.FileMetaDataset, limit: int) -> pydicom.Dataset:
    """The whole dataset, refusing a stream that inflates past `limit` bytes."""
    data, complete = inflate(fp, limit)
    if not complete:
        raise PixelBombError(f"pixel data too large: the deflated dataset inflates past {limit} bytes")
    ds = read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)
    ds.file_meta = meta
    ds.set_original_encoding(False, True, ds.get("SpecificCharacterSet"))
    return ds
