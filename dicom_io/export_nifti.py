"""NIfTI-1 export: DIR/{key}.nii.gz per volume (nibabel), voxels (x, y, z[, t]) and the RAS affine.

NIfTI voxel (i, j, k) is dicomflow's (column, row, slice), so `affine_ras` (affine_lps with its
first two rows negated) is the sform as is; the array only needs its axes reversed. qform gets the
same matrix unless the affine is sheared (gantry tilt), which a qform cannot hold (code 0 then).
4D volumes (t, z, y, x) become 4D NIfTI, with FSL `.bval`/`.bvec` when the attributes hold
per-volume `b_values` (and `b_vectors`, unit gradient directions in patient LPS).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import nibabel as nib
import numpy as np

from dicom_io import schemas, storage
from dicom_io.exports import ExportError, SeriesData, axis_names, export_row

RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
SCANNER_ANAT = 1  # NIFTI_XFORM_SCANNER_ANAT


def nifti_array(array: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """(z, y, x) -> (x, y, z); (t, z, y, x) -> (x, y, z, t); uint8 (z, y, x, c) -> RGB24 (x, y, z)."""
    if names == ("z", "y", "x"):
        return np.ascontiguousarray(array.transpose(2, 1, 0))
    if names == ("t", "z", "y", "x"):
        return np.ascontiguousarray(array.transpose(3, 2, 1, 0))
    if names == ("z", "y", "x", "c"):
        if array.dtype != np.uint8 or array.shape[-1] != 3:
            raise ExportError(f"colour {array.dtype} x {array.shape[-1]} samples has no NIfTI-1 type (RGB24 is 8 bit)")
        rgb = np.ascontiguousarray(array.transpose(2, 1, 0, 3))
        return rgb.view(RGB24).reshape(rgb.shape[:3])
    raise ExportError(f"array axes {names} have no NIfTI layout")


def _sheared(affine: np.ndarray) -> bool:
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return not np.allclose(columns.T @ columns, np.eye(3), atol=1e-6)


def nifti_image(data: SeriesData) -> nib.Nifti1Image:
    """The Nifti1Image of one series (whole volume in memory: NIfTI is one contiguous array)."""
    affine = data.volume.affine_ras
    if affine is None:
        raise ExportError(f"no geometry ({data.record.get('geometry')}): no affine to place the volume")
    voxels = nifti_array(np.asarray(data.volume.array[...]), axis_names(data.volume))
    image = nib.Nifti1Image(voxels, affine)
    image.header.set_data_dtype(voxels.dtype)
    image.set_sform(affine, code=SCANNER_ANAT)
    image.set_qform(affine, code=0 if _sheared(affine) else SCANNER_ANAT)
    image.header.set_xyzt_units("mm", "sec")
    return image


def fsl_gradients(dicom: dict[str, Any], affine_lps: np.ndarray) -> tuple[str, str] | None:
    """(.bval, .bvec) texts when the attributes give per-volume b-values; FSL bvecs are along the voxel
    axes, with x negated when the voxel-to-RAS determinant is positive (FSL's radiological convention)."""
    bvals = dicom.get("b_values")
    if not bvals:
        return None
    vectors = np.asarray(dicom.get("b_vectors") or [[0.0, 0.0, 0.0]] * len(bvals), dtype=np.float64)
    axes = affine_lps[:3, :3] / np.linalg.norm(affine_lps[:3, :3], axis=0)
    voxel = np.linalg.solve(axes, vectors.T)  # (3, t): LPS directions along (column, row, slice)
    if np.linalg.det(np.diag([-1.0, -1.0, 1.0]) @ affine_lps[:3, :3]) > 0:
        voxel[0] = -voxel[0]
    voxel[np.abs(voxel) < 1e-12] = 0.0
    bval = " ".join(f"{float(b):g}" for b in bvals) + "\n"
    bvec = "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in voxel)
    return bval, bvec


def export_nifti(data: SeriesData, to: str) -> dict[str, Any]:
    """Write DIR/{key}.nii.gz (and .bval/.bvec); the exports-table row."""
    image = nifti_image(data)
    uri = schemas.nifti_uri(to, data.key)
    with tempfile.TemporaryDirectory(prefix="dicomflow-nifti-") as scratch:
        local = os.path.join(scratch, "volume.nii.gz")
        nib.save(image, local)  # nibabel's gzip stream has mtime 0: same bytes on every run
        storage.put_file(local, uri)
    outputs = [uri]
    gradients = fsl_gradients(data.volume.dicom, data.volume.affine_lps) if len(data.volume.shape) == 4 else None
    if gradients is not None and axis_names(data.volume)[0] == "t":
        stem = uri.removesuffix(".nii.gz")
        for ext, text in zip((".bval", ".bvec"), gradients):
            storage.write_bytes(stem + ext, text.encode())
            outputs.append(stem + ext)
    return export_row(data.key, "nifti", schemas.EXPORTED, irregular_note(data.volume.dicom), outputs)


def irregular_note(dicom: dict[str, Any]) -> str:
    """What a NIfTI reader must know about an irregularly spaced stack (the row's reason)."""
    if dicom.get("geometry") != "irregular_spacing":
        return ""
    return "irregular spacing: the affine's slice step is the mean; true positions are in slices/{key}.csv"
