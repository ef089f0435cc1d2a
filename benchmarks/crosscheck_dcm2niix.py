"""Convert a folder with dicomflow and with dcm2niix; check every dcm2niix output against dicomflow.

    python -m benchmarks.crosscheck_dcm2niix DIR [--work WORKDIR]

For each NIfTI dcm2niix writes, finds the dicomflow volume (or the 4D array) whose voxels, after
LPS -> RAS and axis order, are the same, with the same affine (1e-3 mm) and, for diffusion, the
same b-values. Prints one line per dcm2niix output and exits 1 when any has no match. Nothing
is downloaded: DIR is any folder of DICOM files (e.g. dcm2niix's QA corpora, fetched by hand).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AFFINE_ATOL = 1e-3  # mm; the NIfTI sform is float32


@dataclass
class Volume:
    """One dicomflow array as NIfTI would index it: data[x, y, z(, t)], RAS affine, b-values."""

    key: str
    data: np.ndarray
    affine_ras: np.ndarray
    bvals: list[float] | None


def dicomflow_volumes(out: str) -> list[Volume]:
    """Every converted dicomflow array under OUT, reindexed (x, y, z[, t]) with its RAS affine."""
    import zarr

    found = []
    for path in sorted(glob.glob(os.path.join(out, "series", "*.json"))):
        record = json.load(open(path))
        if record.get("status") != "converted" or not record.get("affine_lps"):
            continue
        array = zarr.open_group(record["zarr_uri"], mode="r")["0"][:]
        data = np.moveaxis(array, range(array.ndim), range(array.ndim)[::-1])  # (t,)z,y,x -> x,y,z(,t)
        volumes = record.get("volumes") or []
        bvals = [v.get("b_value") for v in volumes] if volumes else None
        if bvals is None and "b_value" in (record.get("stack_attributes") or {}):
            bvals = [record["stack_attributes"]["b_value"]]
        found.append(Volume(record["series_key"], data, LPS_TO_RAS @ np.asarray(record["affine_lps"]), bvals))
    return found


def _index_map(nifti_affine: np.ndarray, volume: Volume) -> np.ndarray:
    """dicomflow voxel index -> NIfTI voxel index (4x4)."""
    return np.linalg.inv(nifti_affine) @ volume.affine_ras


def reindexed(nifti_data: np.ndarray, nifti_affine: np.ndarray, volume: Volume) -> np.ndarray | None:
    """The NIfTI voxels in the dicomflow volume's index order, or None when the grids differ.

    The index map must be a signed permutation plus the shift a flip needs (dcm2niix may flip or
    transpose axes, never resample); 1e-3 voxel tolerance, the NIfTI sform being float32.
    """
    if nifti_data.ndim < 3 or volume.data.ndim < 3:
        return None
    mapping = _index_map(nifti_affine, volume)
    perm = np.rint(mapping[:3, :3])
    if not np.allclose(mapping[:3, :3], perm, atol=1e-3) or sorted(np.abs(perm).sum(axis=0)) != [1, 1, 1]:
        return None
    axes = [int(np.argmax(np.abs(perm[:, j]))) for j in range(3)]  # NIfTI axis of dicomflow axis j
    shift = np.zeros(3)
    for j, axis in enumerate(axes):
        shift[axis] = 0 if perm[axis, j] > 0 else nifti_data.shape[axis] - 1
    if not np.allclose(mapping[:3, 3], shift, atol=1e-3):
        return None
    data = np.transpose(nifti_data, axes + list(range(3, nifti_data.ndim)))
    for j, axis in enumerate(axes):
        if perm[axis, j] < 0:
            data = np.flip(data, axis=j)
    return data


def matches(nifti_data: np.ndarray, nifti_affine: np.ndarray, bvals: list[float] | None, volume: Volume) -> str | None:
    """None when `volume` is the NIfTI voxel for voxel (same grid, same b-values), else why not."""
    data = reindexed(nifti_data, nifti_affine, volume)
    if data is None:
        return "other grid"
    if data.ndim == 4 and data.shape[3] == 1 and volume.data.ndim == 3:
        data = data[..., 0]
    if data.shape != volume.data.shape:
        return f"shape {data.shape} != {volume.data.shape}"
    if not np.array_equal(data.astype(np.float64), volume.data.astype(np.float64)):
        return "voxels differ"
    if bvals is not None and volume.bvals is not None and not np.allclose(bvals, volume.bvals):
        return f"b-values {bvals} != {volume.bvals}"
    return None


def run_dcm2niix(folder: str, out: str) -> list[str]:
    """dcm2niix -z n into `out`; the NIfTI files it wrote."""
    binary = shutil.which("dcm2niix") or os.path.join(os.path.dirname(sys.executable), "dcm2niix")
    subprocess.run([binary, "-z", "n", "-b", "y", "-f", "%s_%e_%z", "-o", out, folder],
                   check=True, capture_output=True)
    return sorted(glob.glob(os.path.join(out, "*.nii")))


def run_dicomflow(folder: str, out: str) -> None:
    from pipelines.convert import run

    run(["--input", folder, "--output", out, "--runner", "DirectRunner", "--direct_running_mode", "in_memory"])


def crosscheck(folder: str, work: str) -> list[tuple[str, str | None, str]]:
    """(NIfTI name, matching dicomflow key or None, why not) per dcm2niix output."""
    import nibabel

    d2n, ours = os.path.join(work, "dcm2niix"), os.path.join(work, "dicomflow")
    os.makedirs(d2n, exist_ok=True)
    niftis = run_dcm2niix(folder, d2n)
    run_dicomflow(folder, ours)
    volumes = dicomflow_volumes(ours)
    report = []
    for path in niftis:
        image = nibabel.load(path)
        data, affine = np.asarray(image.dataobj), image.affine
        bval_path = path[:-4] + ".bval"
        bvals = [float(b) for b in open(bval_path).read().split()] if os.path.exists(bval_path) else None
        reasons: dict[str, str] = {}
        hit = None
        for volume in volumes:
            why = matches(data, affine, bvals, volume)
            if why is None:
                hit = volume.key
                break
            reasons[volume.key] = why
        closest = next((f"{k}: {r}" for k, r in reasons.items() if r != "other grid"), "no volume on its grid")
        report.append((os.path.basename(path), hit, "" if hit else closest))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--work", default=None, help="where both outputs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="crosscheck-")
    report = crosscheck(args.folder, work)
    for name, key, why in report:
        print(f"{'MATCH' if key else 'NO MATCH':8} {name:50} {key or why}")
    matched = sum(1 for _, key, _ in report if key)
    print(f"{matched} of {len(report)} dcm2niix outputs matched by a dicomflow volume (outputs in {work})")
    return 0 if matched == len(report) else 1


if __name__ == "__main__":
    raise SystemExit(main())
