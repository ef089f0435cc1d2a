"""Convert a folder with dicomflow and with dcm2niix; check every dcm2niix output against dicomflow.

    python -m benchmarks.crosscheck_dcm2niix DIR [--work WORKDIR]

For each NIfTI dcm2niix writes, finds the dicomflow volume (or the 4D array) whose voxels, after
LPS -> RAS and axis order, are the same, with the same affine (1e-3 mm) and, for diffusion, the
same b-values. Prints one line per dcm2niix output and exits 1 when any has no match. dicomflow
runs with --philips_scaling fp, dcm2niix's default for Philips; where dcm2niix stores scaled
integers, voxels that agree only within its float32 scaling arithmetic are MATCH~ (the bound is
in Nifti.scaling_bound). Nothing
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


@dataclass
class Nifti:
    """One dcm2niix output: its voxels as NIfTI scales them, the stored values and the scaling."""

    data: np.ndarray
    affine: np.ndarray
    bvals: list[float] | None
    stored: np.ndarray | None = None  # the integers dcm2niix stored, when it wrote scl_slope/scl_inter
    slope: float = 1.0
    inter: float = 0.0

    def scaling_bound(self) -> np.ndarray | None:
        """Per voxel, how far dcm2niix's float32 scaling can be from the exact value, or None.

        dcm2niix computes Philips FP scaling in float32: scl_inter = FP(0) and scl_slope =
        FP(1) - FP(0), each rounded to float32, so the slope carries up to one float32 ulp of
        max(|FP(0)|, |FP(1)|): a voxel with stored value v is off by up to |v| x that ulp, plus
        half an ulp of the intercept and of the value itself. A convention of precision, not of
        conversion: the stored integers are the same.
        """
        if self.stored is None:
            return None
        ulp = float(np.spacing(np.float32(max(abs(self.inter), abs(self.inter + self.slope)))))
        values = np.abs(self.data.astype(np.float64))
        return (np.abs(self.stored.astype(np.float64)) * ulp + float(np.spacing(np.float32(abs(self.inter))))
                + np.spacing(values.astype(np.float32)).astype(np.float64))


def matches(nifti: Nifti, volume: Volume) -> str | None:
    """None when `volume` is the NIfTI voxel for voxel (same grid, same b-values), "scaling ..." when
    the voxels agree only within dcm2niix's float32 scaling (Nifti.scaling_bound), else why not."""
    data = reindexed(nifti.data, nifti.affine, volume)
    if data is None:
        return "other grid"
    if data.ndim == 4 and data.shape[3] == 1 and volume.data.ndim == 3:
        data = data[..., 0]
    if data.shape != volume.data.shape:
        return f"shape {data.shape} != {volume.data.shape}"
    bvals = nifti.bvals
    if bvals is not None and volume.bvals is not None and not np.allclose(bvals, volume.bvals):
        return f"b-values {bvals} != {volume.bvals}"
    theirs, ours = data.astype(np.float64), volume.data.astype(np.float64)
    if np.array_equal(theirs, ours):
        return None
    bound = nifti.scaling_bound()
    if bound is not None:
        bound = reindexed(bound, nifti.affine, volume).reshape(ours.shape)
        difference = np.abs(theirs - ours)
        if np.all(difference <= bound):
            return (f"scaling: equal within dcm2niix's float32 scaling (max difference {difference.max():.3g}, "
                    f"bound {bound.max():.3g})")
    return "voxels differ"


def read_nifti(path: str) -> Nifti:
    """A dcm2niix output with its b-values and, when it stored scaled integers, the integers."""
    import nibabel

    image = nibabel.load(path)
    bval_path = path[:-4] + ".bval"
    bvals = [float(b) for b in open(bval_path).read().split()] if os.path.exists(bval_path) else None
    data = np.asarray(image.dataobj)
    slope, inter = image.dataobj.slope, image.dataobj.inter
    if image.get_data_dtype().kind in "iu" and (slope, inter) != (1.0, 0.0):
        stored = np.asarray(image.dataobj.get_unscaled())
        return Nifti(data, image.affine, bvals, stored, float(slope), float(inter))
    return Nifti(data, image.affine, bvals)


def run_dcm2niix(folder: str, out: str) -> list[str]:
    """dcm2niix -z n into `out`; the NIfTI files it wrote."""
    binary = shutil.which("dcm2niix") or os.path.join(os.path.dirname(sys.executable), "dcm2niix")
    subprocess.run([binary, "-z", "n", "-b", "y", "-f", "%s_%e_%z", "-o", out, folder],
                   check=True, capture_output=True)
    return sorted(glob.glob(os.path.join(out, "*.nii")))


def run_dicomflow(folder: str, out: str) -> None:
    from pipelines.convert import run

    # dcm2niix's default for Philips is its precise floating-point scaling (-p y): ours is fp
    run(["--input", folder, "--output", out, "--runner", "DirectRunner", "--direct_running_mode", "in_memory",
         "--philips_scaling", "fp"])


def crosscheck(folder: str, work: str) -> list[tuple[str, str | None, str]]:
    """(NIfTI name, matching dicomflow key or None, why not) per dcm2niix output."""
    d2n, ours = os.path.join(work, "dcm2niix"), os.path.join(work, "dicomflow")
    os.makedirs(d2n, exist_ok=True)
    niftis = run_dcm2niix(folder, d2n)
    run_dicomflow(folder, ours)
    volumes = dicomflow_volumes(ours)
    report = []
    for path in niftis:
        nifti = read_nifti(path)
        reasons: dict[str, str] = {}
        hit, note = None, ""
        for volume in volumes:
            why = matches(nifti, volume)
            if why is None or why.startswith("scaling:"):
                hit, note = volume.key, why or ""
                break
            reasons[volume.key] = why
        closest = next((f"{k}: {r}" for k, r in reasons.items() if r != "other grid"), "no volume on its grid")
        report.append((os.path.basename(path), hit, note if hit else closest))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--work", default=None, help="where both outputs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="crosscheck-")
    report = crosscheck(args.folder, work)
    for name, key, why in report:
        label = ("MATCH~" if why else "MATCH") if key else "NO MATCH"
        print(f"{label:8} {name:50} {key or why}" + (f"  ({why})" if key and why else ""))
    matched = sum(1 for _, key, _ in report if key)
    approximate = sum(1 for _, key, why in report if key and why)
    print(f"{matched} of {len(report)} dcm2niix outputs matched by a dicomflow volume, {approximate} of them within "
          f"dcm2niix's float32 scaling (MATCH~) (outputs in {work})")
    return 0 if matched == len(report) else 1


if __name__ == "__main__":
    raise SystemExit(main())
