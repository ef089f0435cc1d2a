"""Seeded generator of realistic synthetic DICOM CT/MR series (pydicom 3).

Everything written here is deterministic: the same seed gives byte-identical
files with identical names.  UIDs are name-based ``2.25.<uuid5 int>`` values
derived from the seed (note: pydicom 3's ``generate_uid(prefix=None,
entropy_srcs=...)`` IGNORES ``entropy_srcs`` and returns a random uuid4 UID, so
it is not used), dates and times are fixed and nothing depends on the clock.

Used by unit tests, end-to-end tests, ``make demo`` and the benchmark::

    python -m tests.synthetic OUT_DIR [--seed N] [--bench-bytes BYTES]
                              [--rows R --cols C --slices-per-series S]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import random
import sys
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "AXIAL_IOP",
    "CORONAL_IOP",
    "Corpus",
    "SeriesSpec",
    "axial_positions",
    "make_bench_corpus",
    "make_corpus",
    "main",
    "slice_normal",
    "slice_pixels",
    "stack_positions",
    "uid_from",
    "write_instance",
    "write_series",
]

AXIAL_IOP: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL_IOP: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)

STUDY_DATE = "20240102"
STUDY_TIME = "101500"
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicomflow:synthetic")


def uid_from(*parts: Any) -> str:
    """Deterministic ``2.25.<int>`` UID (name-based UUID v5) derived from ``parts``."""
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(str(p) for p in parts)).int}")


IMPLEMENTATION_CLASS_UID = uid_from("dicomflow-synthetic-implementation")
IMPLEMENTATION_VERSION_NAME = "DICOMFLOW_SYN_1"

# Stored-value layout of the pattern (CT: HU = stored - 1024).
_AIR = 0
_SOFT_TISSUE = 1064  # +40 HU
_BONE = 1624  # +600 HU
_MARKER = 1324  # +300 HU at z == 0; +4 stored units per mm of z
_MARKER_PER_MM = 4.0
# CT is written with PixelRepresentation 1 and BitsStored 12: a 12-bit two's
# complement value must lie in -2048..2047, so CT stored values are clipped to
# 0..2047 (MR, unsigned, to 0..4095).
_CT_MAX = 2047
_MR_MAX = 4095


@dataclass(frozen=True)
class SeriesSpec:
    """Geometry and header values of one synthetic series (one echo)."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: str  # 'CT' or 'MR'
    positions: list[tuple[float, float, float]]  # ImagePositionPatient per slice, acquisition order
    iop: tuple[float, ...]  # ImageOrientationPatient, 6 values
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    rows: int
    cols: int
    slope: float = 1.0
    intercept: float = -1024.0
    echo_number: int | None = None
    echo_time: float | None = None
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    series_number: int = 1
    series_description: str = ""
    slice_thickness: float | None = None

    def __hash__(self) -> int:
        """Hash by identity fields (``positions`` is a list)."""
        return hash((self.series_uid, self.echo_number, len(self.positions)))


@dataclass
class Corpus:
    """What ``make_corpus`` / ``make_bench_corpus`` wrote and what a reader should find."""

    root: str
    files: list[str]  # every file written, including broken ones
    # per SeriesInstanceUID of every parseable series (the truncated one is not listed):
    # n_files (unique instances, duplicates excluded), kind ("regular" | "irregular" |
    # "multi_echo" | "localizer"), spec (SeriesSpec, or list of per-echo specs),
    # n_slices, shape (n_slices, rows, cols), modality, files (paths), plus kind extras.
    expected: dict[str, dict]
    localizers: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    not_dicom: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _crc(text: str) -> int:
    """Stable 32-bit hash of a string (Python's ``hash`` is salted)."""
    return zlib.crc32(text.encode("utf-8"))


def _ds(value: float) -> str:
    """Format a float as a valid (<= 16 chars) DS string."""
    value = float(value)
    if value == 0:
        value = 0.0  # avoid "-0.0"
    return format_number_as_ds(value)


def _round_pos(p: Sequence[float]) -> tuple[float, float, float]:
    """Round a position so that it survives the DS round trip exactly."""
    return tuple(float(_ds(round(float(v), 6))) for v in p)  # type: ignore[return-value]


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit normal (row direction x column direction) of an ImageOrientationPatient."""
    r = np.asarray(iop[:3], dtype=np.float64)
    c = np.asarray(iop[3:6], dtype=np.float64)
    n = np.cross(r, c)
    return n / np.linalg.norm(n)


def _hex_names(rng: random.Random, n: int, dcm_every: int = 0) -> list[str]:
    """``n`` random 16-hex-digit names; every ``dcm_every``-th gets a ``.dcm`` suffix."""
    names = []
    for i in range(n):
        name = f"{rng.getrandbits(64):016x}"
        if dcm_every and i % dcm_every == 0:
            name += ".dcm"
        names.append(name)
    return names


# --------------------------------------------------------------------------- pixels


@functools.lru_cache(maxsize=16)
def _inplane(
    rows: int, cols: int, ps: tuple[float, float], iop: tuple[float, ...], x0: float, y0: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cached z-independent part: (base stored values int32, marker mask int32, body mask bool)."""
    r_dir = np.asarray(iop[:3], dtype=np.float64)
    c_dir = np.asarray(iop[3:6], dtype=np.float64)
    rr = np.arange(rows, dtype=np.float64)[:, None] * ps[0]
    cc = np.arange(cols, dtype=np.float64)[None, :] * ps[1]
    x = x0 + cc * r_dir[0] + rr * c_dir[0]
    y = y0 + cc * r_dir[1] + rr * c_dir[1]
    # elliptic "body" cylinder along z with gentle x/y gradients
    a, b = 110.0, 85.0
    body = (x / a) ** 2 + ((y - 5.0) / b) ** 2 <= 1.0
    base = np.where(body, _SOFT_TISSUE + 20.0 * x / a + 12.0 * (y - 5.0) / b, float(_AIR))
    # "spine": a bright disk posterior
    spine = (x**2 + (y - 55.0) ** 2) <= 14.0**2
    base = np.where(spine, float(_BONE), base)
    # a darker "lung-ish" blob with a radial gradient
    d2 = (x - 45.0) ** 2 + (y + 15.0) ** 2
    lung = d2 <= 28.0**2
    base = np.where(lung, 324.0 + 200.0 * np.sqrt(d2) / 28.0, base)
    # z marker: cylinder whose value encodes physical z (added per slice)
    marker = ((x + 40.0) ** 2 + (y + 10.0) ** 2) <= 18.0**2
    base = np.where(marker, 0.0, base)
    base_i = np.rint(base).astype(np.int32)
    for arr in (base_i, marker, body):
        arr.setflags(write=False)
    return base_i, marker.astype(np.int32), body


def _z_map(spec: SeriesSpec, pos: Sequence[float]) -> float | np.ndarray:
    """Physical z of every pixel (a scalar when the slice is axial)."""
    rz, cz = float(spec.iop[2]), float(spec.iop[5])
    if rz == 0.0 and cz == 0.0:
        return float(pos[2])
    rr = np.arange(spec.rows, dtype=np.float64)[:, None] * spec.pixel_spacing[0]
    cc = np.arange(spec.cols, dtype=np.float64)[None, :] * spec.pixel_spacing[1]
    return pos[2] + cc * rz + rr * cz


def _echo_factor(spec: SeriesSpec) -> float:
    """T2-like signal decay for MR echoes (1.0 for CT / no echo time)."""
    if spec.modality != "MR":
        return 1.0
    te = spec.echo_time or 0.0
    return math.exp(-te / 150.0)


def slice_pixels(spec: SeriesSpec, index: int, seed: int) -> np.ndarray:
    """Stored (pre-rescale) pixels of slice ``index``: int16 for CT (0..2047), uint16 for MR (0..4095)."""
    pos = spec.positions[index]
    base, marker, body = _inplane(
        spec.rows,
        spec.cols,
        (float(spec.pixel_spacing[0]), float(spec.pixel_spacing[1])),
        tuple(float(v) for v in spec.iop),
        float(pos[0]),
        float(pos[1]),
    )
    z = _z_map(spec, pos)
    if isinstance(z, float):
        zterm: int | np.ndarray = int(round(_MARKER + _MARKER_PER_MM * z))
    else:
        zterm = np.rint(_MARKER + _MARKER_PER_MM * z).astype(np.int32)
    img = base + marker * zterm
    factor = _echo_factor(spec)
    if factor != 1.0:
        img = np.rint(img * factor).astype(np.int32)
    rng = np.random.default_rng([seed, _crc(spec.series_uid), index, spec.echo_number or 0])
    noise = rng.integers(-2, 3, size=img.shape, dtype=np.int32)
    img = img + np.where(body, noise, 0)
    if spec.modality == "MR":
        return np.clip(img, 0, _MR_MAX).astype(np.uint16)
    return np.clip(img, 0, _CT_MAX).astype(np.int16)


# --------------------------------------------------------------------------- writing


def _build_dataset(
    spec: SeriesSpec, index: int, pixels: np.ndarray, instance_number: int, sop_uid: str
) -> Dataset:
    """Build the (uncompressed) dataset of one instance."""
    is_mr = spec.modality == "MR"
    sop_class = MRImageStorage if is_mr else CTImageStorage
    pos = spec.positions[index]
    normal = slice_normal(spec.iop)
    slice_location = float(np.dot(np.asarray(pos, dtype=np.float64), normal))

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(spec.image_type)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = STUDY_DATE
    ds.SeriesDate = STUDY_DATE
    ds.AcquisitionDate = STUDY_DATE
    ds.ContentDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.SeriesTime = f"{101500 + spec.series_number:06d}"
    ds.AcquisitionTime = ds.SeriesTime
    ds.ContentTime = ds.SeriesTime
    ds.AccessionNumber = f"ACC{_crc(spec.study_uid) % 10**8:08d}"
    ds.Modality = spec.modality
    ds.Manufacturer = "dicomflow-synthetic"
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "SYNTH01"
    ds.StudyDescription = "SYNTHETIC STUDY"
    ds.SeriesDescription = spec.series_description
    ds.ManufacturerModelName = "SynthScan MR 1.5T" if is_mr else "SynthScan CT 64"
    ds.PatientName = "SYNTH^PATIENT"
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "054Y"
    ds.BodyPartExamined = "CHEST"
    if spec.slice_thickness is not None:
        ds.SliceThickness = _ds(spec.slice_thickness)
    if is_mr:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "2000.0"
        ds.EchoTime = _ds(spec.echo_time if spec.echo_time is not None else 10.0)
        ds.NumberOfAverages = "1.0"
        ds.ImagingFrequency = "63.87"
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = spec.echo_number if spec.echo_number is not None else 1
        ds.MagneticFieldStrength = "1.5"
        ds.EchoTrainLength = 2 if spec.echo_number is not None else 1
        ds.FlipAngle = "90.0"
    else:
        ds.KVP = "120.0"
        ds.DataCollectionDiameter = "500.0"
        ds.ReconstructionDiameter = _ds(spec.cols * spec.pixel_spacing[1])
        ds.GantryDetectorTilt = "0.0"
        ds.TableHeight = "150.0"
        ds.RotationDirection = "CW"
        ds.ExposureTime = 1000
        ds.XRayTubeCurrent = 200
        ds.Exposure = 200
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
    if is_mr:
        ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = spec.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [_ds(v) for v in pos]
    ds.ImageOrientationPatient = [_ds(v) for v in spec.iop]
    ds.FrameOfReferenceUID = uid_from("for", spec.study_uid)
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(round(slice_location, 6))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.cols
    ds.PixelSpacing = [_ds(spec.pixel_spacing[0]), _ds(spec.pixel_spacing[1])]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0 if is_mr else 1
    if is_mr:
        ds.WindowCenter = "600.0"
        ds.WindowWidth = "1200.0"
    else:
        ds.WindowCenter = "40.0"
        ds.WindowWidth = "400.0"
    ds.RescaleIntercept = _ds(spec.intercept)
    ds.RescaleSlope = _ds(spec.slope)
    if not is_mr:
        ds.RescaleType = "HU"
    ds.PixelData = pixels.tobytes()
    return ds


def write_instance(
    path: str | os.PathLike,
    spec: SeriesSpec,
    index: int,
    *,
    seed: int,
    instance_number: int | None = None,
    sop_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixels: np.ndarray | None = None,
) -> None:
    """Write slice ``index`` of ``spec`` as a CT/MR Image Storage Part 10 file (enforce_file_format=True)."""
    ts = UID(transfer_syntax)
    if pixels is None:
        pixels = slice_pixels(spec, index, seed)
    if instance_number is None:
        instance_number = index + 1
    if sop_uid is None:
        sop_uid = uid_from("sop", seed, spec.series_uid, index, spec.echo_number)
    ds = _build_dataset(spec, index, pixels, instance_number, sop_uid)
    _save(ds, path, ts, pixels)


def _save(ds: Dataset, path: str | os.PathLike, ts: UID, pixels: np.ndarray) -> None:
    """Attach file meta and write a Part 10 file in transfer syntax `ts`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta

    if ts.is_compressed:
        # pydicom 3: compress() encodes PixelData and sets TransferSyntaxUID
        ds.compress(ts, pixels)
    elif ts == ExplicitVRBigEndian:
        # pydicom writes PixelData bytes verbatim: byte-swap them ourselves
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    ds.preamble = b"\x00" * 128
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: str | os.PathLike,
    spec: SeriesSpec,
    *,
    seed: int,
    names: Sequence[str] | None = None,
    shuffle_instance_numbers: bool = False,
    first_instance_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[str]:
    """Write every slice of ``spec`` (in a seeded shuffled order); returns paths in acquisition order."""
    n = len(spec.positions)
    rng = random.Random(f"series:{seed}:{spec.series_uid}:{spec.echo_number}")
    if names is None:
        names = _hex_names(rng, n)
    if len(names) != n:
        raise ValueError(f"need {n} names, got {len(names)}")
    numbers = list(range(first_instance_number, first_instance_number + n))
    if shuffle_instance_numbers:
        rng.shuffle(numbers)
    order = list(range(n))
    rng.shuffle(order)
    folder = os.fspath(folder)
    paths = [os.path.join(folder, name) for name in names]
    for i in order:
        write_instance(
            paths[i], spec, i, seed=seed, instance_number=numbers[i], transfer_syntax=transfer_syntax
        )
    return paths


def axial_positions(
    n: int,
    spacing: float,
    origin: tuple[float, float, float] = (-125.0, -125.0, -100.0),
    skip: Sequence[int] = (),
) -> list[tuple[float, float, float]]:
    """Positions of an axial stack along +z; indexes in ``skip`` are removed (a gap = irregular spacing)."""
    skipped = set(skip)
    return [
        _round_pos((origin[0], origin[1], origin[2] + i * spacing)) for i in range(n) if i not in skipped
    ]


def stack_positions(
    n: int, spacing: float, origin: Sequence[float], iop: Sequence[float]
) -> list[tuple[float, float, float]]:
    """Positions of a regular stack along the IOP's normal (row x column direction)."""
    normal = slice_normal(iop)
    o = np.asarray(origin, dtype=np.float64)
    return [_round_pos(o + i * spacing * normal) for i in range(n)]


# --------------------------------------------------------------------------- corpora


def _expected(spec: SeriesSpec | list[SeriesSpec], kind: str, files: list[str], **extra: Any) -> dict:
    """One ``Corpus.expected`` entry."""
    n_files = len(files)
    first = spec[0] if isinstance(spec, list) else spec
    n_slices = len({tuple(p) for p in first.positions})
    entry = {
        "n_files": n_files,
        "kind": kind,
        "spec": spec,
        "n_slices": n_slices,
        "shape": (n_slices, first.rows, first.cols),
        "modality": first.modality,
        "files": list(files),
    }
    entry.update(extra)
    return entry


def make_corpus(root: str | os.PathLike, seed: int = 0, rows: int = 64, cols: int = 64) -> Corpus:
    """Write the mixed test corpus (regular/irregular/multi-echo/localizer/broken files) under ``root``."""
    root = os.fspath(root)
    sub = os.path.join(root, "sub")
    os.makedirs(sub, exist_ok=True)
    names_rng = random.Random(f"corpus-names:{seed}")
    ps = (float(_ds(250.0 / rows)), float(_ds(250.0 / cols)))
    study = uid_from("study", seed)
    patient = f"SYNTH{seed:04d}"
    u = functools.partial(uid_from, "series", seed)
    corpus = Corpus(root=root, files=[], expected={})

    # 1. regular axial CT, 20 x 2.5 mm, files in root
    s1 = SeriesSpec(
        series_uid=u(1), study_uid=study, patient_id=patient, modality="CT",
        positions=axial_positions(20, 2.5), iop=AXIAL_IOP, pixel_spacing=ps, rows=rows, cols=cols,
        series_number=2, series_description="AXIAL 2.5mm", slice_thickness=2.5,
    )
    p1 = write_series(root, s1, seed=seed, names=_hex_names(names_rng, 20, dcm_every=4))
    corpus.files += p1
    corpus.expected[s1.series_uid] = _expected(s1, "regular", p1, spacing=2.5)

    # 2. regular coronal CT, 12 x 3.0 mm along +y, files in root/sub
    s2 = SeriesSpec(
        series_uid=u(2), study_uid=study, patient_id=patient, modality="CT",
        positions=stack_positions(12, 3.0, (-125.0, -18.0, 25.0), CORONAL_IOP), iop=CORONAL_IOP,
        pixel_spacing=ps, rows=rows, cols=cols, image_type=("DERIVED", "SECONDARY", "REFORMATTED"),
        series_number=3, series_description="CORONAL 3mm", slice_thickness=3.0,
    )
    p2 = write_series(sub, s2, seed=seed, names=_hex_names(names_rng, 12, dcm_every=5))
    corpus.files += p2
    corpus.expected[s2.series_uid] = _expected(s2, "regular", p2, spacing=3.0)

    # 3. localizer: one sagittal-ish (tilted 3 degrees) image, in root
    t = math.radians(3.0)
    loc_iop = tuple(float(_ds(round(v, 6))) for v in (0.0, math.cos(t), math.sin(t), 0.0, math.sin(t), -math.cos(t)))
    s3 = SeriesSpec(
        series_uid=u(3), study_uid=study, patient_id=patient, modality="CT",
        positions=[_round_pos((0.0, -125.0, 25.0))], iop=loc_iop, pixel_spacing=ps, rows=rows, cols=cols,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_number=1, series_description="SCOUT",
        slice_thickness=1.0,
    )
    p3 = write_series(root, s3, seed=seed, names=_hex_names(names_rng, 1))
    corpus.files += p3
    corpus.localizers += p3
    corpus.expected[s3.series_uid] = _expected(s3, "localizer", p3)

    # 4. irregular axial CT: 15 positions at 1.25 mm, index 7 missing; split root / root/sub
    s4 = SeriesSpec(
        series_uid=u(4), study_uid=study, patient_id=patient, modality="CT",
        positions=axial_positions(15, 1.25, origin=(-125.0, -125.0, -50.0), skip=(7,)), iop=AXIAL_IOP,
        pixel_spacing=ps, rows=rows, cols=cols, series_number=4, series_description="AXIAL 1.25mm GAP",
        slice_thickness=1.25,
    )
    n4 = _hex_names(names_rng, 14, dcm_every=6)
    n4 = [("sub/" + n if i % 3 == 1 else n) for i, n in enumerate(n4)]
    p4 = write_series(root, s4, seed=seed, names=n4, shuffle_instance_numbers=True)
    corpus.files += p4
    corpus.expected[s4.series_uid] = _expected(s4, "irregular", p4, spacing=1.25, missing_index=7)

    # 5. exact duplicate of one file of series 1, in root/sub
    dup = os.path.join(sub, _hex_names(names_rng, 1)[0])
    src = p1[names_rng.randrange(len(p1))]
    Path(dup).write_bytes(Path(src).read_bytes())
    corpus.files.append(dup)
    corpus.duplicates.append(dup)
    corpus.expected[s1.series_uid]["duplicates"] = [dup]
    corpus.expected[s1.series_uid]["duplicate_of"] = {dup: src}

    # 6. multi-echo MR: 10 positions x 2 echoes, one series, in root
    mr_common = dict(
        series_uid=u(6), study_uid=study, patient_id=patient, modality="MR",
        positions=axial_positions(10, 5.0, origin=(-125.0, -125.0, -80.0)), iop=AXIAL_IOP,
        pixel_spacing=ps, rows=rows, cols=cols, slope=1.0, intercept=0.0,
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"), series_number=5,
        series_description="T2 DUAL ECHO", slice_thickness=5.0,
    )
    e1 = SeriesSpec(**mr_common, echo_number=1, echo_time=10.0)  # type: ignore[arg-type]
    e2 = SeriesSpec(**mr_common, echo_number=2, echo_time=80.0)  # type: ignore[arg-type]
    p6 = write_series(root, e1, seed=seed, names=_hex_names(names_rng, 10, dcm_every=3))
    p6 += write_series(root, e2, seed=seed, names=_hex_names(names_rng, 10), first_instance_number=11)
    corpus.files += p6
    corpus.expected[e1.series_uid] = _expected([e1, e2], "multi_echo", p6, n_echoes=2, echo_times=[10.0, 80.0])

    # 7. truncated file: first 300 bytes of a valid single-slice instance, in root.
    # It ends inside the file meta: pydicom 3 dcmread does NOT raise on it, it
    # returns a dataset without SeriesInstanceUID / PixelData (GDCM, dcm2niix skip it).
    s7 = SeriesSpec(
        series_uid=u(7), study_uid=study, patient_id=patient, modality="CT",
        positions=axial_positions(1, 1.0), iop=AXIAL_IOP, pixel_spacing=ps, rows=rows, cols=cols,
        series_number=7, series_description="TRUNCATED",
    )
    trunc = os.path.join(root, _hex_names(names_rng, 1)[0])
    write_instance(trunc, s7, 0, seed=seed)
    data = Path(trunc).read_bytes()
    Path(trunc).write_bytes(data[:300])
    corpus.files.append(trunc)
    corpus.broken.append(trunc)

    # 8. non-DICOM text file named like a DICOM file, in root
    notes = os.path.join(root, "notes.dcm")
    Path(notes).write_text("These are not DICOM data.\nJust some notes about the synthetic corpus.\n")
    corpus.files.append(notes)
    corpus.not_dicom.append(notes)

    # 9. empty file, in root/sub
    empty = os.path.join(sub, _hex_names(names_rng, 1)[0])
    Path(empty).write_bytes(b"")
    corpus.files.append(empty)
    corpus.broken.append(empty)
    return corpus


def make_bench_corpus(
    root: str | os.PathLike,
    target_bytes: int,
    rows: int = 512,
    cols: int = 512,
    slices_per_series: int = 250,
    seed: int = 0,
) -> Corpus:
    """Write regular axial CT series (one folder ``root``) until at least ``target_bytes`` are on disk."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    corpus = Corpus(root=root, files=[], expected={})
    ps = (float(_ds(500.0 / rows)), float(_ds(500.0 / cols)))
    total = 0
    k = 0
    while total < target_bytes:
        k += 1
        spec = SeriesSpec(
            series_uid=uid_from("bench-series", seed, k),
            study_uid=uid_from("bench-study", seed, k),
            patient_id=f"BENCH{seed:02d}{k:04d}",
            modality="CT",
            positions=axial_positions(slices_per_series, 1.0, origin=(-250.0, -250.0, -slices_per_series / 2)),
            iop=AXIAL_IOP,
            pixel_spacing=ps,
            rows=rows,
            cols=cols,
            series_number=k,
            series_description=f"BENCH AXIAL {k}",
            slice_thickness=1.0,
        )
        paths = write_series(root, spec, seed=seed)
        corpus.files += paths
        corpus.expected[spec.series_uid] = _expected(spec, "regular", paths, spacing=1.0)
        total += sum(os.path.getsize(p) for p in paths)
    return corpus


def make_scale_corpus(
    root: str | os.PathLike,
    n_files: int,
    slices_per_series: int = 4,
    folders: int = 16,
    rows: int = 8,
    cols: int = 8,
    seed: int = 0,
) -> Corpus:
    """``n_files`` tiny CT files (rows x cols), ``slices_per_series`` per series, the series spread
    over ``folders`` sub-folders of ``root``: many files and series for little I/O (scale tests)."""
    root = os.fspath(root)
    corpus = Corpus(root=root, files=[], expected={})
    for k in range(math.ceil(n_files / slices_per_series)):
        n = min(slices_per_series, n_files - k * slices_per_series)
        spec = SeriesSpec(
            series_uid=uid_from("scale-series", seed, k), study_uid=uid_from("scale-study", seed, k // 4),
            patient_id=f"SCALE{seed:02d}{k // 8:06d}", modality="CT",
            positions=axial_positions(n, 2.0), iop=AXIAL_IOP, pixel_spacing=(1.0, 1.0), rows=rows, cols=cols,
            series_number=k % 50 + 1, series_description=f"SCALE {k}", slice_thickness=2.0,
        )
        paths = write_series(os.path.join(root, f"{k % folders:03d}"), spec, seed=seed)
        corpus.files += paths
        corpus.expected[spec.series_uid] = _expected(spec, "regular" if n > 1 else "single_slice", paths)
    return corpus


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: write the test corpus (or a benchmark corpus) into OUT_DIR."""
    parser = argparse.ArgumentParser(prog="python -m tests.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bench-bytes", type=int, default=None, help="write a benchmark corpus of >= BYTES")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--cols", type=int, default=None)
    parser.add_argument("--slices-per-series", type=int, default=250)
    args = parser.parse_args(argv)
    if args.bench_bytes is None:
        corpus = make_corpus(args.out_dir, seed=args.seed, rows=args.rows or 64, cols=args.cols or 64)
    else:
        corpus = make_bench_corpus(
            args.out_dir,
            args.bench_bytes,
            rows=args.rows or 512,
            cols=args.cols or 512,
            slices_per_series=args.slices_per_series,
            seed=args.seed,
        )
    nbytes = sum(os.path.getsize(p) for p in corpus.files)
    print(
        f"wrote {len(corpus.files)} files ({nbytes} bytes), {len(corpus.expected)} series "
        f"to {corpus.root}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- variants


def write_variant(path: str | os.PathLike, spec: SeriesSpec, index: int, *, seed: int, variant: str,
                  sop_uid: str | None = None, pixels: np.ndarray | None = None) -> np.ndarray:
    """Slice `index` of `spec` as a variant; returns the pixel values a converter must store.

    variant: "monochrome1" (same stored values, inverted display), "rgb" (8-bit RGB, 3 samples),
    "big_endian" (Explicit VR Big Endian), "dx" (projection radiograph: ImagerPixelSpacing, no
    position/orientation).
    """
    stored = slice_pixels(spec, index, seed) if pixels is None else pixels
    sop = sop_uid or uid_from("sop", seed, spec.series_uid, index, variant)
    ds = _build_dataset(spec, index, stored, index + 1, sop)
    ts = UID(ExplicitVRLittleEndian)
    expected = stored.astype(np.float64) * spec.slope + spec.intercept
    if variant == "monochrome1":
        ds.PhotometricInterpretation = "MONOCHROME1"
    elif variant == "rgb":
        rgb = np.stack([(stored >> 3) & 0xFF, (stored >> 2) & 0xFF, stored & 0xFF], axis=-1).astype(np.uint8)
        for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth"):
            delattr(ds, keyword)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rgb.tobytes()
        stored, expected = rgb, rgb
    elif variant == "big_endian":
        ts = UID(ExplicitVRBigEndian)
    elif variant == "dx":
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation"):
            delattr(ds, keyword)
        ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.1.1", "DX"  # Digital X-Ray, for presentation
        ds.ImagerPixelSpacing = [_ds(spec.pixel_spacing[0]), _ds(spec.pixel_spacing[1])]
    else:
        raise ValueError(f"unknown variant {variant!r}")
    _save(ds, path, ts, stored)
    return expected


def write_enhanced_mr(path: str | os.PathLike, spec: SeriesSpec, echo_times: Sequence[float], *, seed: int,
                      shuffle: bool = True) -> dict[float, np.ndarray]:
    """One Enhanced MR Image Storage file: every position x every echo as frames, in a seeded
    shuffled frame order, geometry and echo in per-frame functional groups (PS3.3 C.8.13).

    Returns, per echo time, the volume a converter must write (slices ascending along the normal).
    """
    from pydicom.sequence import Sequence as Seq

    n = len(spec.positions)
    frames = [(e, i) for e in range(len(echo_times)) for i in range(n)]
    if shuffle:
        random.Random(f"enhanced:{seed}:{spec.series_uid}").shuffle(frames)
    planes = [(slice_pixels(spec, i, seed) + 100 * e).astype(np.uint16) for e, i in frames]
    ds = _build_dataset(spec, 0, planes[0], 1, uid_from("sop", seed, spec.series_uid, "enhanced"))
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation",
                    "RescaleIntercept", "RescaleSlope", "EchoTime", "EchoNumbers", "SliceThickness"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = len(frames)
    ds.PixelRepresentation = 0

    def item(**values):
        d = Dataset()
        for key, value in values.items():
            setattr(d, key, value)
        return d

    shared = item(
        PixelMeasuresSequence=Seq([item(PixelSpacing=[_ds(v) for v in spec.pixel_spacing],
                                        SliceThickness=_ds(spec.slice_thickness or 1.0))]),
        PlaneOrientationSequence=Seq([item(ImageOrientationPatient=[_ds(v) for v in spec.iop])]),
        PixelValueTransformationSequence=Seq([item(RescaleSlope="1", RescaleIntercept="0", RescaleType="US")]),
    )
    ds.SharedFunctionalGroupsSequence = Seq([shared])
    ds.PerFrameFunctionalGroupsSequence = Seq([
        item(PlanePositionSequence=Seq([item(ImagePositionPatient=[_ds(v) for v in spec.positions[i]])]),
             FrameContentSequence=Seq([item(DimensionIndexValues=[e + 1, i + 1], StackID="1",
                                            InStackPositionNumber=i + 1)]),
             MREchoSequence=Seq([item(EffectiveEchoTime=float(echo_times[e]))]))
        for e, i in frames
    ])
    ds.PixelData = np.stack(planes).tobytes()
    _save(ds, path, UID(ExplicitVRLittleEndian), np.stack(planes))
    normal = slice_normal(spec.iop)
    order = sorted(range(n), key=lambda i: float(np.dot(spec.positions[i], normal)))
    return {echo_times[e]: np.stack([(slice_pixels(spec, i, seed) + 100 * e).astype(np.float64) for i in order])
            for e in range(len(echo_times))}
