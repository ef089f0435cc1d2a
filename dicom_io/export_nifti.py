"""NIfTI-1 export: DIR/{key}.nii.gz per volume (nibabel), voxels (x, y, z[, t]) and the RAS affine.

NIfTI voxel (i, j, k) is dicomflow's (column, row, slice), so `affine_ras` (affine_lps with its
first two rows negated) is the sform as is; the array only needs its axes reversed. qform gets the
same matrix unless the affine is sheared (gantry tilt), which a qform cannot hold (code 0 then).
4D volumes (t, z, y, x) become 4D NIfTI, with FSL `.bval`/`.bvec` when every entry of the record's
`volumes` has a `b_value` (directions: `diffusion_direction_image`, else `diffusion_direction`).
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


def _image_direction(volume: dict[str, Any], affine_lps: np.ndarray) -> np.ndarray:
    """The volume's gradient along (column, row, slice): `diffusion_direction_image`, else the LPS
    `diffusion_direction` projected as dcm2niix does (row cosine, column cosine, slice normal turned
    along the stack's step); zeros for b = 0 or no direction (dcm2niix writes 0 0 0 then too)."""
    if not volume.get("b_value"):
        return np.zeros(3)
    if volume.get("diffusion_direction_image") is not None:
        return np.asarray(volume["diffusion_direction_image"], dtype=np.float64)
    if volume.get("diffusion_direction") is None:
        return np.zeros(3)
    row, column = (affine_lps[:3, j] / np.linalg.norm(affine_lps[:3, j]) for j in (0, 1))
    normal = np.cross(row, column)
    if normal @ affine_lps[:3, 2] < 0:
        normal = -normal
    return np.array([row, column, normal]) @ np.asarray(volume["diffusion_direction"], dtype=np.float64)


def fsl_gradients(dicom: dict[str, Any], affine_lps: np.ndarray, n_volumes: int) -> tuple[str, str] | None:
    """(.bval, .bvec) texts from the record's `volumes` when every volume has a b-value, else None.

    FSL's convention: the gradient along this file's voxel axes (i, j, k) = (column, row, slice), i
    negated when the voxel-to-RAS determinant is positive. dcm2niix flips the row axis in its NIfTI
    (j = -row, determinant then negative), so its `.bvec` is (x, -y, z) of the same directions: the
    same gradients, expressed in its own voxel axes (tests/test_mosaic.py checks both files agree).
    """
    volumes = dicom.get("volumes") or []
    if not volumes or any(v.get("b_value") is None for v in volumes):
        return None
    if len(volumes) != n_volumes:
        raise ExportError(f"the record has {len(volumes)} volumes' values, the array {n_volumes} volumes")
    voxel = np.array([_image_direction(v, affine_lps) for v in volumes]).T  # (3, t)
    if np.linalg.det(np.diag([-1.0, -1.0, 1.0]) @ affine_lps[:3, :3]) > 0:
        voxel[0] = -voxel[0]
    voxel[np.abs(voxel) < 5e-7] = 0.0  # no "-0.000000"
    bval = " ".join(f"{float(v['b_value']):g}" for v in volumes) + "\n"
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
    four_d = len(data.volume.shape) == 4 and axis_names(data.volume)[0] == "t"
    gradients = fsl_gradients(data.volume.dicom, data.volume.affine_lps, data.volume.shape[0]) if four_d else None
    if gradients is not None:
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
