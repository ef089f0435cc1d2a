"""Coverage-guided fuzzing (atheris) of the header pass and the planning done on its records.

Each input is a whole file: `dicom_io.header.read_header` parses it (BytesIO); when it yields a
record, a few siblings derived from it (positions moved, dropped or repeated, instance numbers,
rows/columns and bits changed, seeded by the input's CRC) go through `dicom_io.geometry.order_slices`
and `dicom_io.plan.plan_series`, as one series would in the job, plus `pixels.check_size` and
`keys.series_key`. Allowed: the dicom_io.errors classes. Anything else is a finding (libFuzzer
writes the input as crash-*).

    python fuzz/fuzz_header.py [libFuzzer flags] CORPUS_DIR      (make fuzz: 60 s into a tmp dir)
    FUZZ_COLLECT=DIR python fuzz/fuzz_header.py ...     (record every distinct finding in DIR, do not stop)

An empty CORPUS_DIR is seeded with a few small real files (pydicom's test files, tests.synthetic).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import random
import sys
import traceback
import warnings
import zlib

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.simplefilter("ignore")
logging.getLogger("pydicom").setLevel(logging.CRITICAL)

with atheris.instrument_imports(include=["pydicom", "dicom_io"]):
    from dicom_io import geometry, keys, pixels, plan
    from dicom_io.errors import DicomflowError
    from dicom_io.header import InstanceHeader, read_header

SEEDS = ("MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "SC_rgb_rle.dcm", "JPEGLSNearLossless_16.dcm",
         "emri_small_big_endian.dcm", "no_meta.dcm", "ExplVR_BigEnd.dcm", "MR_small_RLE.dcm")


def _siblings(h: InstanceHeader, rng: random.Random) -> list[InstanceHeader]:
    """The record plus up to 5 variants, as other slices of the same series might read."""
    out = [h]
    for i in range(rng.randint(0, 5)):
        pos = h.image_position
        choice = rng.random()
        if pos is not None and choice < 0.6:
            step = rng.choice([0.0, 1.0, -2.5, 1e-9, 1e300, float("nan")])
            pos = (pos[0] + rng.choice([0.0, 0.5]) * i, pos[1], pos[2] + step * (i + 1))
        elif choice < 0.7:
            pos = None
        out.append(dataclasses.replace(
            h, source_uri=f"{h.source_uri}#{i}", image_position=pos,
            instance_number=rng.choice([None, i, -i, h.instance_number]),
            sop_instance_uid=rng.choice([h.sop_instance_uid, f"{h.sop_instance_uid}.{i}"]),
            rows=rng.choice([h.rows, h.rows + 1, 0]) if rng.random() < 0.2 else h.rows,
            bits_allocated=rng.choice([h.bits_allocated, 8, 16, 32]) if rng.random() < 0.2 else h.bits_allocated,
            number_of_frames=rng.choice([h.number_of_frames, 2]) if rng.random() < 0.1 else h.number_of_frames))
    return out


def check(data: bytes) -> None:
    """One input: the header pass, then ordering and planning of a derived series."""
    try:
        h = read_header(io.BytesIO(data), "fuzz://input.dcm", len(data))
    except DicomflowError:
        return
    rng = random.Random(zlib.crc32(data))
    headers = _siblings(h, rng)
    thickness = h.series_tags.get("SliceThickness")
    geometry.order_slices([x.image_position for x in headers], h.image_orientation,
                          [x.instance_number for x in headers], thickness if isinstance(thickness, float) else None)
    plan.plan_series(h.series_instance_uid, headers)
    keys.series_key(h.series_instance_uid, rng.randrange(100))
    try:
        pixels.check_size(h, pixels.DEFAULT_MAX_PIXEL_BYTES)
    except DicomflowError:
        pass


COLLECT = os.environ.get("FUZZ_COLLECT")  # a folder: record each distinct finding there and go on
_seen: set[str] = set()


def _signature(exc: BaseException) -> str:
    """Exception type + the innermost dicom_io frame + the innermost frame: one line per distinct bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}dicom_io{os.sep}" in f.filename]
    where = [f"{os.path.basename(f.filename)}:{f.name}:{f.lineno}" for f in (ours[-1:] + frames[-1:])]
    return f"{type(exc).__name__} at {' -> '.join(where)}"


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    if not COLLECT:
        check(data)
        return
    try:
        check(data)
    except Exception as exc:  # a finding: keep the first input of each signature
        sig = _signature(exc)
        if sig not in _seen:
            _seen.add(sig)
            name = f"finding-{zlib.crc32(sig.encode()):08x}"
            with open(os.path.join(COLLECT, name + ".dcm"), "wb") as handle:
                handle.write(data)
            with open(os.path.join(COLLECT, "findings.txt"), "a") as handle:
                handle.write(f"{name}: {sig}: {str(exc)[:200]!r}\n")


def _seed(corpus: str) -> None:
    """Write the seed files into an empty corpus folder."""
    from pydicom.data import get_testdata_file

    from tests import synthetic

    os.makedirs(corpus, exist_ok=True)
    if os.listdir(corpus):
        return
    for name in SEEDS:
        try:
            path = get_testdata_file(name, download=False)
        except Exception:  # not shipped by this pydicom
            path = None
        if path:
            with open(path, "rb") as src, open(os.path.join(corpus, name), "wb") as dst:
                dst.write(src.read())
    spec = synthetic.SeriesSpec(
        series_uid=synthetic.uid_from("fuzz-seed"), study_uid=synthetic.uid_from("fuzz-study"), patient_id="FUZZ",
        modality="CT", positions=synthetic.axial_positions(2, 1.0), iop=synthetic.AXIAL_IOP, pixel_spacing=(1.0, 1.0),
        rows=4, cols=4, slice_thickness=1.0)
    synthetic.write_instance(os.path.join(corpus, "synthetic-ct.dcm"), spec, 0, seed=0)


def main() -> None:
    positional = [a for a in sys.argv[1:] if not a.startswith("-")]
    if positional:
        _seed(positional[0])
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
