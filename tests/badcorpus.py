"""Seeded generator of hostile inputs for the convert and manifest jobs, with what each file should become.

Every file written gets an `Expect`: its category, the statuses it may end with in the instances
table and the reason prefixes that status may carry ("" = converted, no reason). The same seed
writes byte-identical files. Files derived from real DICOM (pydicom's test files, tests.synthetic)
get SeriesInstanceUIDs of their own so they never join a series of the good corpus; the bit-flipped
copies keep their UIDs (whatever the flips leave) and may end in any documented reason.

    python -m tests.badcorpus OUT_DIR [--seed N] [--tiny-files N]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import struct
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless)

from tests import synthetic

CONVERTED, SKIPPED, FAILED = "converted", "skipped", "failed"

# README "Reasons a user will see": every reason in the instances table starts with one of these.
KNOWN_REASON_PREFIXES = (
    "localizer: ImageType", "duplicate: ", "no pixel data (", "not dicom: ",
    "invalid header: ", "decode error: ", "invalid image: ", "pixel data too large", "pixel data shorter than declared",
    "stack not converted: ", "source disappeared: ",
)
ANY_STATUS = frozenset({CONVERTED, SKIPPED, FAILED})
NOT_DICOM = ("not dicom: ",)
DECODE = ("decode error: ",)
TOO_LARGE = ("pixel data too large",)
SHORTER = ("decode error: pixel data shorter than declared", "pixel data shorter than declared")

# pydicom's own test files: small, real, several encodings (all ship with pydicom, never downloaded).
REAL_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm",
              "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_rle.dcm", "rtplan.dcm",
              "no_meta.dcm", "emri_small_big_endian.dcm", "ExplVR_BigEnd.dcm")
CORRUPT_SOURCES = (("MR_small_RLE.dcm", "rle"), ("SC_rgb_rle.dcm", "rle"), ("MR_small_jp2klossless.dcm", "j2k"),
                   ("JPEG2000.dcm", "j2k"), ("MR_small_jpeg_ls_lossless.dcm", "jpegls"),
                   ("JPEGLSNearLossless_16.dcm", "jpegls"))

# SeriesInstanceUIDs crafted as paths: the series key must keep every output inside --output.
CRAFTED_UIDS: tuple[bytes, ...] = (
    b"../../x", b"/abs/path", b"/tmp/dicomflow-escape", b"x", b"..//..//x", b"..", b".", b"...", b"~/x",
    b"a/../../../b", b"x\\..\\..\\y", b"C:\\Windows\\x", b"%2e%2e%2fx", b" ../x ", b"\n../z", b"-rf",
    b"1." * 40 + b"1", b"9" * 200, b"1.2.\xc3\xa9.3", b"1.2.\xe9.3", b"1.2.3\x00.4", b"\x00", b"series", b"*", b"?",
)


@dataclass(frozen=True)
class Expect:
    """What the instances table must say about one file."""

    category: str
    statuses: frozenset[str]
    reasons: tuple[str, ...] = ()  # accepted reason prefixes when failed/skipped; converted rows have ""

    def accepts(self, status: str, reason: str) -> bool:
        if status not in self.statuses:
            return False
        if status == CONVERTED:
            return reason == ""
        prefixes = self.reasons or KNOWN_REASON_PREFIXES
        return bool(reason) and reason.startswith(prefixes)


def converted(category: str) -> Expect:
    return Expect(category, frozenset({CONVERTED}))


def failed(category: str, reasons: tuple[str, ...]) -> Expect:
    return Expect(category, frozenset({FAILED}), reasons)


def anything(category: str) -> Expect:
    """Any documented outcome (bit-flipped files: the flips may be harmless)."""
    return Expect(category, ANY_STATUS)


@dataclass
class BadCorpus:
    """What make_bad_corpus wrote: every file with its expectation, plus what some tests need by name."""

    root: str
    files: dict[str, Expect] = field(default_factory=dict)
    bombs: list[str] = field(default_factory=list)  # decompression bombs, for the memory test
    stacks: dict[str, int] = field(default_factory=dict)  # SeriesInstanceUID -> converted stacks expected
    crafted_uids: dict[str, bytes] = field(default_factory=dict)  # path -> the crafted SeriesInstanceUID bytes
    tiny_series_uid: str = ""
    tiny_files: list[str] = field(default_factory=list)

    def add(self, path: str, expect: Expect) -> str:
        assert path not in self.files, path
        self.files[path] = expect
        return path

    def categories(self) -> Counter:
        return Counter(e.category for e in self.files.values())


# ---------------------------------------------------------------------------------- helpers


def _write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _dataset_bytes(ds: Dataset, enforce: bool = True, **kwargs) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=enforce, **kwargs)
    return buffer.getvalue()


def _base_spec(uid: str, rows: int = 16, cols: int = 16, n: int = 1) -> synthetic.SeriesSpec:
    return synthetic.SeriesSpec(
        series_uid=uid, study_uid=synthetic.uid_from("bad-study"), patient_id="BAD", modality="CT",
        positions=synthetic.axial_positions(n, 2.0), iop=synthetic.AXIAL_IOP, pixel_spacing=(1.0, 1.0),
        rows=rows, cols=cols, slice_thickness=2.0, series_description="BAD CORPUS")


def _ct_bytes(uid: str, index: int = 0, rows: int = 16, cols: int = 16, n: int = 1, seed: int = 0,
              sop_uid: str | None = None, instance_number: int | None = None, pixels: np.ndarray | None = None,
              spec: synthetic.SeriesSpec | None = None) -> bytes:
    """One valid uncompressed explicit-VR LE CT instance, as tests.synthetic.write_instance writes it."""
    spec = spec or _base_spec(uid, rows, cols, max(n, index + 1))
    if pixels is None:
        pixels = synthetic.slice_pixels(spec, index, seed)
    sop_uid = sop_uid or synthetic.uid_from("bad-sop", seed, spec.series_uid, index)
    ds = synthetic._build_dataset(spec, index, pixels, index + 1 if instance_number is None else instance_number,
                                  sop_uid)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = synthetic.IMPLEMENTATION_CLASS_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    return _dataset_bytes(ds)


def _ct_dataset(uid: str, index: int = 0, rows: int = 16, cols: int = 16, n: int = 1) -> Dataset:
    return pydicom.dcmread(io.BytesIO(_ct_bytes(uid, index, rows, cols, n)))


def _real(name: str) -> str | None:
    try:
        return get_testdata_file(name, download=False)
    except Exception:  # not shipped in this pydicom: the file is simply not used
        return None


def _element_span(data: bytes, tag: int, vr: bytes) -> tuple[int, int]:
    """(start of the element header, end of its value) of a short explicit-VR LE element, found by scan."""
    marker = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    start = data.find(marker, 132)
    if start < 0:
        raise ValueError(f"element {tag:08X} {vr!r} not found")
    length = struct.unpack("<H", data[start + 6:start + 8])[0]
    return start, start + 8 + length


def _replace_element(data: bytes, tag: int, vr: bytes, value: bytes) -> bytes:
    """Replace the value of one explicit-VR LE element (outside the file meta) with raw bytes."""
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    start, end = _element_span(data, tag, vr)
    return data[:start + 6] + struct.pack("<H", len(value)) + value + data[end:]


def _pixel_value_offset(data: bytes) -> int:
    """Offset of the PixelData value in an explicit-VR LE file written by tests.synthetic."""
    start = data.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")
    if start < 0:
        raise ValueError("no native PixelData")
    return start + 12


def _meta_end(data: bytes) -> int:
    group_length = struct.unpack("<I", data[140:144])[0]
    return 144 + group_length


def _png(width: int = 4, height: int = 4) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + bytes(v % 256 for v in range(width)) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _garble(fragment: bytes, rng: random.Random, mode: str, keep: int) -> bytes:
    """Damage one compressed fragment: scramble its body, zero it, or cut it short."""
    body = bytearray(fragment)
    if mode == "scramble":
        for i in range(keep, len(body)):
            body[i] = rng.randrange(256)
    elif mode == "zero":
        for i in range(keep, len(body)):
            body[i] = 0
    elif mode == "cut":
        body = body[:max(2, keep)]
    elif mode == "header":  # the codec's own header (RLE segment table, J2K SIZ, JPEG-LS SOF)
        for i in range(0, min(len(body), 64)):
            body[i] = rng.randrange(256)
    return bytes(body) + (b"\x00" if len(body) % 2 else b"")


# ---------------------------------------------------------------------------------- categories


def _foreign(c: BadCorpus, root: str, rng: random.Random) -> None:
    d = os.path.join(root, "foreign")
    for i in range(3):
        c.add(_write(os.path.join(d, f"empty{i}.dcm"), b""), failed("empty", ("not dicom: empty file",)))
    for size in (1, 2, 100, 127, 128, 131, 132, 133, 200, 1000, 4096, 65536):
        c.add(_write(os.path.join(d, f"random-{size}.dcm"), rng.randbytes(size)), failed("random_bytes", NOT_DICOM))
    for size in (200, 4096):  # random bytes behind a real preamble and DICM prefix
        data = b"\x00" * 128 + b"DICM" + rng.randbytes(size)
        c.add(_write(os.path.join(d, f"dicm-random-{size}.dcm"), data), failed("random_bytes", NOT_DICOM))
    texts = {"notes.dcm": b"These are not DICOM data.\n" * 20, "table.dcm": b"a,b,c\n1,2,3\n" * 50,
             "data.dcm": b'{"not": "dicom", "rows": [1, 2, 3]}\n', "script.dcm": b"#!/bin/sh\necho hi\n" + b" " * 200,
             "utf16.dcm": "not dicom at all \u00e9\u00e8".encode("utf-16") * 10}
    for name, data in texts.items():
        c.add(_write(os.path.join(d, name), data), failed("text", NOT_DICOM))
    c.add(_write(os.path.join(d, "image.dcm"), _png()), failed("png", NOT_DICOM))
    c.add(_write(os.path.join(d, "big-image.dcm"), _png(300, 200)), failed("png", NOT_DICOM))
    c.add(_write(os.path.join(d, "just-dicm.dcm"), b"\x00" * 128 + b"DICM"), failed("random_bytes", NOT_DICOM))


def _truncated(c: BadCorpus, root: str, rng: random.Random) -> None:
    """Valid CT files cut inside the preamble, the DICM prefix, the meta, the dataset and the pixels.

    Each cut file is made from its own source (own Series and SOP Instance UIDs), so no two of them
    are duplicates of one another and each gets its own reason.
    """
    d = os.path.join(root, "truncated")
    regions = {"preamble": 3, "dicm": 3, "meta": 6, "dataset": 10, "pixel-element": 3, "pixels": 6}
    for where, count in regions.items():
        # a CT file cut before its pixel data is a broken image, not an object without pixels ("skipped")
        reasons = SHORTER + DECODE if where == "pixels" else NOT_DICOM + DECODE
        if where in ("preamble", "dicm", "meta"):
            reasons = NOT_DICOM
        for k in range(count):
            data = _ct_bytes(synthetic.uid_from("bad-truncated", where, k))
            meta_end, pixels = _meta_end(data), _pixel_value_offset(data)
            start, stop = {"preamble": (1, 128), "dicm": (128, 133), "meta": (133, meta_end),
                           "dataset": (meta_end + 1, pixels - 12), "pixel-element": (pixels - 12, pixels + 1),
                           "pixels": (pixels + 1, len(data) - 1)}[where]
            off = rng.randrange(start, stop)
            name = f"{where}-{k}-at-{off:06d}.dcm"
            c.add(_write(os.path.join(d, name), data[:off]), failed(f"truncated_{where.replace('-', '_')}", reasons))


def _bit_flipped(c: BadCorpus, root: str, rng: random.Random, count: int) -> None:
    """Real files with 1-8 random bits flipped in their first 1 KB (header, meta, preamble)."""
    d = os.path.join(root, "bitflip")
    sources = [p for p in (_real(n) for n in REAL_FILES) if p]
    originals = [open(p, "rb").read() for p in sources]
    originals.append(_ct_bytes(synthetic.uid_from("bad-bitflip-source")))
    for i in range(count):
        data = bytearray(originals[i % len(originals)])
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(min(len(data), 1024))
            data[pos] ^= 1 << rng.randrange(8)
        c.add(_write(os.path.join(d, f"flip-{i:03d}.dcm"), bytes(data)), anything("bit_flipped"))


def _meta_problems(c: BadCorpus, root: str) -> None:
    d = os.path.join(root, "meta")
    data = _ct_bytes(synthetic.uid_from("bad-no-dicm"))
    no_dicm = data[:128] + b"XXXX" + data[132:]
    c.add(_write(os.path.join(d, "preamble-no-dicm.dcm"), no_dicm), failed("no_dicm_prefix", NOT_DICOM))
    c.add(_write(os.path.join(d, "preamble-dicm-lowercase.dcm"), data[:128] + b"dicm" + data[132:]),
          failed("no_dicm_prefix", NOT_DICOM))
    # no (0002,0010) TransferSyntaxUID: the encoding must be inferred from how the dataset parses
    ds = _ct_dataset(synthetic.uid_from("bad-no-transfer-syntax"))
    del ds.file_meta.TransferSyntaxUID
    raw = _dataset_bytes(ds, enforce=False, implicit_vr=False, little_endian=True)
    c.add(_write(os.path.join(d, "no-transfer-syntax.dcm"), raw), converted("missing_transfer_syntax"))
    ds = _ct_dataset(synthetic.uid_from("bad-no-meta-implicit"))
    ds.file_meta = FileMetaDataset()
    raw = _dataset_bytes(ds, enforce=False, implicit_vr=True, little_endian=True)
    c.add(_write(os.path.join(d, "no-meta-implicit.dcm"), raw), converted("missing_transfer_syntax"))
    rt = _real("rtplan.dcm")
    if rt:
        c.add(_write(os.path.join(d, "rtplan.dcm"), open(rt, "rb").read()),
              Expect("no_pixel_data", frozenset({SKIPPED}), ("no pixel data (RT Plan Storage)",)))


def _bomb_dataset(uid: str, rows: int, cols: int, frames: int | None, syntax: str, pixel_data: bytes) -> Dataset:
    ds = _ct_dataset(uid)
    ds.Rows, ds.Columns = rows, cols
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = pixel_data
    if syntax != ExplicitVRLittleEndian:
        ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
    return ds


def _j2k_codestream(rows: int, cols: int) -> bytes:
    """A tiny JPEG 2000 codestream whose SIZ marker declares rows x cols (the tile data is junk)."""
    siz = struct.pack(">HHHIIIIIIIIH", 0xFF51, 41, 0, cols, rows, 0, 0, cols, rows, 0, 0, 1) + bytes([15, 1, 1])
    cod = struct.pack(">HHBBHBBBBBB", 0xFF52, 12, 0, 0, 1, 0, 5, 4, 4, 0, 1)
    qcd = struct.pack(">HHB", 0xFF5C, 4, 0x40) + b"\x48"
    sot = struct.pack(">HHHIBB", 0xFF90, 10, 0, 0, 0, 1)
    return b"\xff\x4f" + siz + cod + qcd + sot + b"\xff\x93" + b"\x00\x11\x22\x33" * 4 + b"\xff\xd9"


def _deflate_bomb(uid: str, inflated_bytes: int) -> bytes:
    """Deflated Explicit VR LE file whose dataset inflates to about `inflated_bytes` (zeros in PixelData).

    A block of zeros ends in a full flush, so its compressed form is byte aligned and independent of
    history: repeating it costs nothing to generate, and the file stays ~1/1000 of what it inflates to.
    """
    chunk = 1024 * 1024
    n = max(1, inflated_bytes // chunk)
    ds = _ct_dataset(uid)
    ds.Rows = ds.Columns = 65535  # the header also declares more than any limit
    del ds.PixelData
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    dataset_part = body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", n * chunk)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = comp.compress(dataset_part) + comp.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = zeros.compress(b"\x00" * chunk) + zeros.flush(zlib.Z_FULL_FLUSH)
    stream = head + block * n + b"\x03\x00"  # an empty final block closes the stream
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = synthetic.IMPLEMENTATION_CLASS_UID
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + stream


def _bombs(c: BadCorpus, root: str, deflate_bomb_bytes: int, dangerous: bool) -> None:
    """Headers declaring gigabytes while the file is tiny: refused before allocation.

    `dangerous` adds the bombs that today's code does not refuse from the header (a JPEG 2000
    codestream whose SIZ marker declares 60000 x 60000 under a 64 x 64 header): run those only in
    a memory-watched subprocess (tests/test_bad_input.py), never inside the test process.
    """
    d = os.path.join(root, "bomb")
    u = lambda name: synthetic.uid_from("bad-bomb", name)  # noqa: E731
    tiny = encapsulate([_j2k_codestream(64, 64)])
    cases = {
        "j2k-65535x65535x1000.dcm": (_bomb_dataset(u(1), 65535, 65535, 1000, JPEG2000Lossless, tiny),
                                     failed("bomb", TOO_LARGE)),
        "native-65535x65535.dcm": (_bomb_dataset(u(2), 65535, 65535, None, ExplicitVRLittleEndian, b"\x00" * 16),
                                   failed("bomb", TOO_LARGE)),
        "native-30000x30000.dcm": (_bomb_dataset(u(3), 30000, 30000, None, ExplicitVRLittleEndian, b"\x00" * 16),
                                   failed("bomb", SHORTER)),
        "rle-65535x65535x1000.dcm": (_bomb_dataset(u(4), 65535, 65535, 1000, RLELossless,
                                                   encapsulate([b"\x00" * 64])), failed("bomb", TOO_LARGE)),
        # under the 4 GiB limit: decoding is tried and must fail on the junk, not fill 1.8 GB
        "j2k-30000x30000.dcm": (_bomb_dataset(u(5), 30000, 30000, None, JPEG2000Lossless, tiny),
                                failed("bomb", DECODE)),
    }
    if dangerous:  # the header says 64 x 64, the codestream's SIZ says 60000 x 60000 (3.6 G samples)
        cases["j2k-siz-60000x60000.dcm"] = (
            _bomb_dataset(u(6), 64, 64, None, JPEG2000Lossless, encapsulate([_j2k_codestream(60000, 60000)])),
            failed("bomb", DECODE))
    for name, (ds, expect) in cases.items():
        c.bombs.append(c.add(_write(os.path.join(d, name), _dataset_bytes(ds)), expect))
    if deflate_bomb_bytes:
        path = os.path.join(d, f"deflate-{deflate_bomb_bytes >> 20}MiB-65535x65535.dcm")
        c.bombs.append(c.add(_write(path, _deflate_bomb(u(7), deflate_bomb_bytes)), failed("bomb", TOO_LARGE)))


def make_bombs(root: str | os.PathLike, deflate_bomb_bytes: int = 1024**3, dangerous: bool = True) -> BadCorpus:
    """Only the decompression bombs, the dangerous ones included (for a memory-watched subprocess)."""
    corpus = BadCorpus(root=os.fspath(root))
    _bombs(corpus, corpus.root, deflate_bomb_bytes, dangerous)
    return corpus


def _pixel_length(c: BadCorpus, root: str) -> None:
    d = os.path.join(root, "pixel-length")
    for name, delta in (("short-2", -2), ("short-half", -256), ("short-all", -512), ("long-2", 2),
                        ("long-double", 512), ("long-odd", 1)):
        ds = _ct_dataset(synthetic.uid_from("bad-pixel-length", name))
        full = ds.PixelData
        ds.PixelData = full[:len(full) + delta] if delta < 0 else full + b"\x01" * delta
        if delta < 0:
            expect = failed("pixel_data_shorter", SHORTER + DECODE)
        else:  # trailing bytes past the declared size: pydicom ignores them (or refuses); both recorded
            expect = Expect("pixel_data_longer", frozenset({CONVERTED, FAILED}), DECODE)
        c.add(_write(os.path.join(d, f"{name}.dcm"), _dataset_bytes(ds)), expect)
    ds = _ct_dataset(synthetic.uid_from("bad-pixel-length", "frames"))
    ds.NumberOfFrames = 3  # one frame of data, three declared
    c.add(_write(os.path.join(d, "frames-3-of-1.dcm"), _dataset_bytes(ds)), failed("pixel_data_shorter", SHORTER + DECODE))
    ds = _ct_dataset(synthetic.uid_from("bad-pixel-length", "rows0"))
    ds.Rows = 0
    c.add(_write(os.path.join(d, "rows-0.dcm"), _dataset_bytes(ds)), failed("invalid_image", ("invalid image: ",)))


def _corrupt_fragments(c: BadCorpus, root: str, rng: random.Random) -> None:
    """Compressed pydicom test files with their fragment bytes garbled (codec header or body)."""
    d = os.path.join(root, "corrupt")
    for k, (name, codec) in enumerate(CORRUPT_SOURCES):
        path = _real(name)
        if not path:
            continue
        for mode in ("header", "scramble", "zero", "cut"):
            ds = pydicom.dcmread(path)
            frames = list(generate_fragments(ds.PixelData))[1:]  # the first item is the offset table
            keep = 64 if codec == "rle" else 40
            frames = [_garble(f, rng, mode, keep) for f in frames]
            ds.PixelData = encapsulate(frames)
            ds.SeriesInstanceUID = synthetic.uid_from("bad-corrupt", name, mode)
            ds.SOPInstanceUID = synthetic.uid_from("bad-corrupt-sop", name, mode)
            # the body of a frame can be garbage that still decodes to an image of the right size
            # (undetectable; pylibjpeg-libjpeg even decodes a JPEG-LS frame cut to 40 bytes): only a
            # damaged codec header (RLE segment table, J2K SOC/SIZ, JPEG-LS SOI/SOF) must be refused
            expect = (failed(f"corrupt_{codec}", DECODE) if mode == "header" or (mode == "cut" and codec != "jpegls")
                      else Expect(f"corrupt_{codec}", frozenset({CONVERTED, FAILED}), DECODE))
            c.add(_write(os.path.join(d, f"{k}-{codec}-{mode}.dcm"), _dataset_bytes(ds, enforce=False)), expect)


def _disagreeing(c: BadCorpus, root: str) -> None:
    """One SeriesInstanceUID, one orientation, slices that disagree in Rows/Columns or BitsAllocated."""
    d = os.path.join(root, "disagree")
    uid = synthetic.uid_from("bad-shape-mix")
    for i in range(7):
        rows = 16 if i % 2 else 12
        data = _ct_bytes(uid, i, rows=rows, cols=rows, n=7)
        c.add(_write(os.path.join(d, f"shape-{i}.dcm"), data), converted("shape_mix"))
    c.stacks[uid] = 2
    uid = synthetic.uid_from("bad-dtype-mix")
    for i in range(6):
        ds = _ct_dataset(uid, i, n=6)
        if i % 2:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = (np.arange(256, dtype=np.uint16) % 200).astype(np.uint8).tobytes()
        c.add(_write(os.path.join(d, f"dtype-{i}.dcm"), _dataset_bytes(ds)), converted("dtype_mix"))
    c.stacks[uid] = 2
    uid = synthetic.uid_from("bad-single-slice")
    c.add(_write(os.path.join(d, "single.dcm"), _ct_bytes(uid)), converted("single_slice"))
    c.stacks[uid] = 1


def _nested(c: BadCorpus, root: str) -> None:
    """(0008,1140) sequences nested 200 and 3000 levels deep (undefined lengths), before the pixels."""
    d = os.path.join(root, "nested")
    # valid DICOM; pydicom's recursive reader gives up near 190 levels (RecursionError): either
    # outcome is accepted as long as it is recorded
    nested = Expect("nested_sequences", frozenset({CONVERTED, FAILED}), NOT_DICOM + ("invalid header: ",))
    for depth, expect in ((200, nested), (3000, nested)):
        data = _ct_bytes(synthetic.uid_from("bad-nested", depth))
        seq = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff"
        item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        leaf = b"\x08\x00\x50\x11UI\x04\x001.2\x00"
        tail = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        blob = (seq + item) * depth + leaf + tail * depth
        at = data.find(b"\x10\x00\x10\x00PN")  # (0010,0010): the sequence goes just before, in tag order
        c.add(_write(os.path.join(d, f"depth-{depth}.dcm"), data[:at] + blob + data[at:]), expect)


# Header values a parser accepts but arithmetic may not: each file must end in a recorded outcome.
ABSURD_VALUES: dict[str, dict] = {
    "bits-65535": dict(BitsAllocated=65535, BitsStored=65535, HighBit=65534),
    "bits-stored-0": dict(BitsStored=0),
    "slope-1e308": dict(RescaleSlope="1e308"),
    "intercept-1e308": dict(RescaleIntercept="1e308"),
    "slope-nan": dict(RescaleSlope="nan"),
    "slope-inf": dict(RescaleSlope="inf"),
    "slope-0": dict(RescaleSlope="0"),
    "spacing-0": dict(PixelSpacing=["0", "0"]),
    "spacing-nan": dict(PixelSpacing=["nan", "nan"]),
    "ipp-nan": dict(ImagePositionPatient=["nan", "nan", "nan"]),
    "ipp-inf": dict(ImagePositionPatient=["inf", "0", "0"]),
    "iop-zero": dict(ImageOrientationPatient=["0"] * 6),
    "iop-nan": dict(ImageOrientationPatient=["nan"] * 6),
    "frames-0": dict(NumberOfFrames=0),
    "frames-negative": dict(NumberOfFrames="-5"),
    "samples-0": dict(SamplesPerPixel=0),
    "samples-3-no-planar": dict(SamplesPerPixel=3),
    "pixel-representation-7": dict(PixelRepresentation=7),
    "rows-65535-columns-1": dict(Rows=65535, Columns=1),
}


def _absurd(c: BadCorpus, root: str) -> None:
    """One CT slice per absurd header value (its own series)."""
    d = os.path.join(root, "absurd")
    for name, changes in ABSURD_VALUES.items():
        ds = _ct_dataset(synthetic.uid_from("bad-absurd", name))
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        c.add(_write(os.path.join(d, f"{name}.dcm"), _dataset_bytes(ds)), anything("absurd_values"))


def _unknown_vr(c: BadCorpus, root: str) -> None:
    """An element with a VR no standard defines ('UQ'), as the fuzzer found: in an image, and in an
    object without pixel data (where only the reason's SOP class name reads it)."""
    d = os.path.join(root, "unknown-vr")
    data = _ct_bytes(synthetic.uid_from("bad-unknown-vr", "image"))
    start, _ = _element_span(data, 0x00080016, b"UI")
    image = data[:start + 4] + b"UQ" + data[start + 6:]
    c.add(_write(os.path.join(d, "image-sop-class-uq.dcm"), image), anything("unknown_vr"))
    no_pixels = image[:image.rfind(b"\xe0\x7f\x10\x00OW")]
    c.add(_write(os.path.join(d, "no-pixels-sop-class-uq.dcm"), no_pixels),
          Expect("unknown_vr", frozenset({SKIPPED, FAILED}), ("no pixel data (", "invalid header: ", "not dicom: ")))


def _crafted_uids(c: BadCorpus, root: str) -> None:
    d = os.path.join(root, "crafted-uid")
    template = _ct_bytes(synthetic.uid_from("bad-crafted-template"))
    for i, raw in enumerate(CRAFTED_UIDS):
        data = _replace_element(template, 0x0020000E, b"UI", raw)
        data = _replace_element(data, 0x00080018, b"UI", synthetic.uid_from("bad-crafted-sop", i).encode())
        path = c.add(_write(os.path.join(d, f"uid-{i:02d}.dcm"), data), converted("crafted_uid"))
        c.crafted_uids[path] = raw


def _tiny(c: BadCorpus, root: str, n: int, series_every: int = 100) -> None:
    """`n` valid 2x2 CT files from one template with patched UIDs, positions and pixels (no pydicom per file).

    Most form one series of many slices; every `series_every`-th file is a single-instance series.
    """
    if n <= 0:
        return
    d = os.path.join(root, "tiny")
    os.makedirs(d, exist_ok=True)
    width = 38
    sop_ph, series_ph, z_ph = "2.25." + "8" * (width - 5), "2.25." + "7" * (width - 5), "+00000.00"
    spec = _base_spec(series_ph, rows=2, cols=2)
    spec = synthetic.SeriesSpec(**{**spec.__dict__, "positions": [(-1.0, -1.0, 123.0)]})
    template = _ct_bytes(series_ph, spec=spec, sop_uid=sop_ph, instance_number=99999,
                         pixels=np.zeros((2, 2), dtype=np.int16))
    template = _replace_element(template, 0x00200032, b"DS", b"-1\\-1\\" + z_ph.encode())
    template = template.replace(b"99999 ", b"00000 ")  # IS InstanceNumber, fixed width
    assert template.count(sop_ph.encode()) == 2 and template.count(series_ph.encode()) == 1
    assert template.count(b"00000 ") == 1
    c.tiny_series_uid = f"2.25.{3 * 10**(width - 6)}"
    pix_at = len(template) - 8
    parts = template.split(sop_ph.encode())
    z_at = template.find(z_ph.encode())
    inst_at = template.find(b"00000 ")
    slice_index = 0
    for i in range(n):
        sop = f"2.25.{10**(width - 6) + i}".encode()
        own = i % series_every == series_every - 1
        series = (f"2.25.{2 * 10**(width - 6) + i}" if own else c.tiny_series_uid).encode()
        data = bytearray(sop.join(parts))
        data[z_at:z_at + 9] = f"{(0 if own else slice_index) * 0.5:+09.2f}".encode()
        slice_index += 0 if own else 1
        data[inst_at:inst_at + 5] = f"{i % 100000:05d}".encode()
        data[pix_at:] = struct.pack("<4h", i % 1000, (i * 7) % 1000, (i * 13) % 1000, 1000 - i % 1000)
        data = bytes(data).replace(series_ph.encode(), series)
        path = os.path.join(d, f"{i // 1000:02d}", f"t{i:05d}.dcm")
        if i % 1000 == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        c.files[path] = converted("tiny")
        if not own:
            c.tiny_files.append(path)
    c.stacks[c.tiny_series_uid] = 1


def tiny_pixels(i: int) -> np.ndarray:
    """The stored 2x2 pixels of tiny file `i` (see _tiny)."""
    return np.array([[i % 1000, (i * 7) % 1000], [(i * 13) % 1000, 1000 - i % 1000]], dtype=np.int16)


def make_bad_corpus(root: str | os.PathLike, seed: int = 0, tiny_files: int = 10000, bitflips: int = 48,
                    deflate_bomb_bytes: int = 64 * 1024 * 1024) -> BadCorpus:
    """Write every category under `root` (sub-folder per category); returns the per-file expectations."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    corpus = BadCorpus(root=root)
    steps: Iterable[Callable[[], None]] = (
        lambda: _foreign(corpus, root, random.Random(f"foreign:{seed}")),
        lambda: _truncated(corpus, root, random.Random(f"truncated:{seed}")),
        lambda: _bit_flipped(corpus, root, random.Random(f"bitflip:{seed}"), bitflips),
        lambda: _meta_problems(corpus, root),
        lambda: _bombs(corpus, root, deflate_bomb_bytes, dangerous=False),
        lambda: _pixel_length(corpus, root),
        lambda: _corrupt_fragments(corpus, root, random.Random(f"corrupt:{seed}")),
        lambda: _disagreeing(corpus, root),
        lambda: _nested(corpus, root),
        lambda: _absurd(corpus, root),
        lambda: _unknown_vr(corpus, root),
        lambda: _crafted_uids(corpus, root),
        lambda: _tiny(corpus, root, tiny_files),
    )
    for step in steps:
        step()
    return corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.badcorpus", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny-files", type=int, default=10000)
    args = parser.parse_args(argv)
    corpus = make_bad_corpus(args.out_dir, seed=args.seed, tiny_files=args.tiny_files)
    for category, count in sorted(corpus.categories().items()):
        print(f"{category:28s} {count}")
    print(f"wrote {len(corpus.files)} files to {corpus.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------------- running a job under watch


@dataclass
class Watched:
    """How a watched subprocess ended."""

    returncode: int
    peak_rss: int  # bytes: the larger of the polled VmRSS and the kernel's ru_maxrss
    killed_for_memory: bool
    timed_out: bool
    seconds: float
    stdout: str
    stderr: str


def job_finished(returncode: int, stdout: str) -> bool:
    """The job exited 0 and printed its counters (a run that ended cleanly, nothing else)."""
    return returncode == 0 and "counters:" in stdout


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_watched(cmd: list[str], *, cwd: str, env: dict | None = None, kill_above: int = 4 * 1024**3,
                timeout: float = 600.0, workdir: str | None = None) -> Watched:
    """Run `cmd` in its own process group; SIGKILL it if its RSS passes `kill_above` or time runs out.

    The watchdog keeps a decompression bomb from taking the machine down; the peak is measured by
    polling /proc/PID/status and by wait4's ru_maxrss for that child alone.
    """
    import signal
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryFile(dir=workdir) as out, tempfile.TemporaryFile(dir=workdir) as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        peak, killed, timed_out = 0, False, False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _rss(proc.pid))
            if peak > kill_above or time.monotonic() - start > timeout:
                killed, timed_out = peak > kill_above, not peak > kill_above
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return Watched(proc.returncode, max(peak, usage.ru_maxrss * 1024), killed, timed_out,
                       time.monotonic() - start, out.read().decode(errors="replace"),
                       err.read().decode(errors="replace"))
