"""Check what a compressed frame says about its size before a decoder allocates for it.

A 200-byte JPEG 2000 frame can declare 60000 x 60000 pixels in its SIZ marker while the DICOM
header says 64 x 64; decoders trust the codestream and allocate gigabytes. The frame headers
are read here (ISO 15444-1 A.5.1 SIZ, ISO 10918-1 B.2.2 SOF, ISO 14495-1 SOF55) and compared.
"""

from __future__ import annotations

import struct

from dicom_io.errors import DecodeError

J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                 "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # F7: JPEG-LS SOF55


def j2k_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from the SIZ marker, or None when there is no codestream start."""
    start = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC then SIZ (a JP2 wrapper may precede)
    if start < 0 or len(frame) < start + 42:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", frame[start + 8:start + 24])
    (csiz,) = struct.unpack(">H", frame[start + 40:start + 42])
    return ysiz - yosiz, xsiz - xosiz, csiz


def jpeg_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from the first SOF marker, or None when none is found."""
    pos = 2 if frame[:2] == b"\xff\xd8" else 0
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", frame[pos + 2:pos + 4])
        if marker in SOF_MARKERS and pos + 10 <= len(frame):
            rows, cols = struct.unpack(">HH", frame[pos + 5:pos + 9])
            return rows, cols, frame[pos + 9]
        pos += 2 + length
    return None


def check_frame(frame: bytes, tsuid: str, rows: int, columns: int, samples: int) -> None:
    """Refuse a frame whose own header disagrees with (0028,0010) Rows / (0028,0011) Columns."""
    size = j2k_size(frame) if tsuid in J2K_SYNTAXES else jpeg_size(frame) if tsuid in JPEG_SYNTAXES else None
    if size is None:
        return
    f_rows, f_cols, comps = size
    if (f_rows not in (0, rows)) or f_cols != columns or comps != samples:  # rows 0: JPEG's DNL marker
        raise DecodeError(f"decode error: the compressed frame declares {f_rows} x {f_cols} x {comps}, "
                          f"the header {rows} x {columns} x {samples}")
