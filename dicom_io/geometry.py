"""Slice geometry: ordering along the slice normal, spacing, classification, LPS affine.

Written here rather than taken from highdicom because highdicom's helpers assume a valid,
regular stack; this module's job is to say exactly how a stack is *not* regular.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Geometry classes, the fixed set written to `geometry` (README: "Geometry classes").
REGULAR = "regular"
IRREGULAR_SPACING = "irregular_spacing"
TILTED = "tilted"
SINGLE_SLICE = "single_slice"
NO_GEOMETRY = "no_geometry"
GEOMETRY_CLASSES = (REGULAR, IRREGULAR_SPACING, TILTED, SINGLE_SLICE, NO_GEOMETRY)

SPACING_RTOL = 0.01  # steps may differ by 1 % of the median step ...
SPACING_ATOL_MM = 0.01  # ... or 0.01 mm (DS rounding), whichever is larger
TILT_DEGREES = 0.1  # slice direction further than this from the normal = gantry tilt


@dataclass(frozen=True)
class Ordering:
    """How the slices of one stack are ordered and what their positions show."""

    order: tuple[int, ...]  # indexes into the input sequence, in volume (z) order
    geometry: str
    order_by: str  # "position" or "instance_number" (fallback, recorded)
    spacing_z: float | None  # a uniform step in mm, only when the positions show one
    step_vector: tuple[float, float, float] | None  # LPS mm per z index, as used in the affine
    spacing_min: float | None = None
    spacing_max: float | None = None
    max_gap: float | None = None
    tilt_degrees: float | None = None


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of (0020,0037) ImageOrientationPatient: row direction x column direction."""
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise ValueError(f"degenerate ImageOrientationPatient {list(orientation)}")
    return normal / norm


def _fallback(instance_numbers: Sequence[int | None], n: int) -> Ordering:
    order = sorted(range(n), key=lambda i: (instance_numbers[i] is None, instance_numbers[i] or 0, i))
    geometry = SINGLE_SLICE if n == 1 else NO_GEOMETRY
    return Ordering(tuple(order), geometry, "instance_number", None, None)


def order_slices(
    positions: Sequence[Sequence[float] | None],
    orientation: Sequence[float] | None,
    instance_numbers: Sequence[int | None],
    slice_thickness: float | None = None,
) -> Ordering:
    """Order slices by (0020,0032) ImagePositionPatient projected on the normal; classify."""
    n = len(positions)
    if orientation is None or any(p is None for p in positions):
        return _fallback(instance_numbers, n)
    try:
        normal = slice_normal(orientation)
    except ValueError:
        return _fallback(instance_numbers, n)
    ipp = np.asarray(positions, dtype=float)
    depth = ipp @ normal
    inst = [v if v is not None else 0 for v in instance_numbers]
    order = sorted(range(n), key=lambda i: (depth[i], inst[i], i))
    if n == 1:
        step = normal * (slice_thickness or 1.0)
        return Ordering(tuple(order), SINGLE_SLICE, "position", slice_thickness, tuple(step.tolist()))
    return _classify(ipp[order], depth[order], normal, tuple(order))


def _classify(ipp: np.ndarray, depth: np.ndarray, normal: np.ndarray, order: tuple[int, ...]) -> Ordering:
    steps = np.diff(depth)
    median = float(np.median(steps))
    tol = max(SPACING_ATOL_MM, SPACING_RTOL * abs(median))
    regular = median > SPACING_ATOL_MM and bool(np.all(np.abs(steps - median) <= tol))
    mean_vec = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
    along = float(mean_vec @ normal)
    lateral = float(np.linalg.norm(mean_vec - along * normal))
    tilt = float(np.degrees(np.arctan2(lateral, abs(along)))) if abs(along) > 0 else 90.0
    if tilt > TILT_DEGREES:
        geometry = TILTED
    else:
        geometry = REGULAR if regular else IRREGULAR_SPACING
    return Ordering(
        order=order,
        geometry=geometry,
        order_by="position",
        spacing_z=along if regular and geometry != IRREGULAR_SPACING else None,
        step_vector=tuple(mean_vec.tolist()),
        spacing_min=float(steps.min()),
        spacing_max=float(steps.max()),
        max_gap=float(steps.max()),
        tilt_degrees=round(tilt, 4),
    )


def affine_lps(
    orientation: Sequence[float],
    first_position: Sequence[float],
    pixel_spacing: Sequence[float],
    step_vector: Sequence[float],
) -> list[list[float]]:
    """4x4 matrix mapping (column, row, slice, 1) to patient LPS mm (DICOM PS3.3 C.7.6.2.1.1).

    `pixel_spacing` is (0028,0030) as stored: (row spacing, column spacing). The third column
    is the measured step between slices, so a tilted stack gets its true (sheared) affine.
    """
    iop = np.asarray(orientation, dtype=float)
    row_spacing, col_spacing = float(pixel_spacing[0]), float(pixel_spacing[1])
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * col_spacing
    affine[:3, 1] = iop[3:] * row_spacing
    affine[:3, 2] = np.asarray(step_vector, dtype=float)
    affine[:3, 3] = np.asarray(first_position, dtype=float)
    return affine.tolist()


def orientation_key(orientation: Sequence[float] | None, decimals: int = 3) -> tuple[float, ...] | None:
    """IOP rounded for grouping; slices within ~0.06 degrees share a key."""
    if orientation is None:
        return None
    return tuple(round(float(v), decimals) + 0.0 for v in orientation)
