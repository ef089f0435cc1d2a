"""The naive baseline: what users' one-off scripts do today, in a single process.

    python -m benchmarks.naive_convert --input DIR --output OUT

1. walk DIR and ``pydicom.dcmread(stop_before_pixels=True)`` every file to group paths by SeriesInstanceUID;
2. per series, ``dcmread`` every file again, sort by ImagePositionPatient z, apply the
   modality LUT (rescale slope/intercept) and ``np.stack`` the slices into one volume;
3. write the volume to a Zarr v3 array with Blosc zstd level 3 + bitshuffle (dicomflow's default
   codec), chunks (16, 256, 256), no sharding.

The rescaled volume is cast back to int16 when every value is an integer that fits (the
CT case), so the output is the same dtype and size as dicomflow's; otherwise it is float32.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
import zarr
from pydicom.errors import InvalidDicomError
from zarr.codecs import BloscCodec, BloscShuffle

CHUNKS = (16, 256, 256)
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)


def group_by_series(root: str | os.PathLike) -> dict[str, list[str]]:
    """Paths of every readable DICOM image under ``root``, grouped by SeriesInstanceUID (header reads)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, EOFError):
                continue
            uid = ds.get("SeriesInstanceUID")
            if uid is not None and "Rows" in ds:
                groups[str(uid)].append(path)
    return dict(groups)


def slice_z(ds: pydicom.Dataset) -> float:
    """Sort key of a slice: ImagePositionPatient z (0 when absent)."""
    ipp = ds.get("ImagePositionPatient")
    return float(ipp[2]) if ipp else 0.0


def to_output_dtype(volume: np.ndarray) -> np.ndarray:
    """int16 when every value is an integer that fits (the CT case), else float32."""
    info = np.iinfo(np.int16)
    if volume.size and volume.min() >= info.min and volume.max() <= info.max and (
            volume.dtype.kind in "iu" or np.array_equal(volume, np.rint(volume))):
        return volume.astype(np.int16)
    return volume.astype(np.float32)


def load_volume(paths: Sequence[str]) -> np.ndarray:
    """Read every file, sort by z, stack the pixel arrays into (z, y, x), rescale once per volume
    (integer arithmetic when slope and intercept are integers, as for CT: what a careful script does)."""
    datasets = sorted((pydicom.dcmread(p) for p in paths), key=slice_z)
    stack = np.stack([ds.pixel_array for ds in datasets])
    slope = float(datasets[0].get("RescaleSlope", 1) or 1)
    intercept = float(datasets[0].get("RescaleIntercept", 0) or 0)
    if slope.is_integer() and intercept.is_integer():
        return to_output_dtype(stack.astype(np.int32) * int(slope) + int(intercept))
    return to_output_dtype(stack * slope + intercept)


def write_volume(volume: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``volume`` as one unsharded Zarr v3 array at ``path``."""
    chunks = tuple(min(c, s) for c, s in zip(CHUNKS, volume.shape)) + volume.shape[3:]
    array = zarr.create_array(
        store=os.fspath(path),
        shape=volume.shape,
        dtype=volume.dtype,
        chunks=chunks,
        compressors=COMPRESSOR,
        overwrite=True,
    )
    array[...] = volume


def convert(input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> int:
    """Convert every series under ``input_dir`` to ``output_dir/<SeriesInstanceUID>.zarr``; returns the count."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_by_series(input_dir)
    for uid, paths in groups.items():
        write_volume(load_volume(paths), out / f"{uid}.zarr")
    return len(groups)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive_convert", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="folder of DICOM files (recursive)")
    parser.add_argument("--output", required=True, help="folder receiving one <SeriesInstanceUID>.zarr per series")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    n = convert(args.input, args.output)
    print(f"naive: converted {n} series in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
