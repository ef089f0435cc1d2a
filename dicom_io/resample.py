"""Resample a stack onto an orthogonal, uniform grid: gantry tilt (in-plane shift per slice)
or irregular spacing (linear interpolation along the normal). Streaming: at most two input
planes are held. Only on request (--tilt=resample, --irregular=resample): values become float32
and interpolated planes are estimates, which the outputs say (`resampled_from`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from dicom_io import geometry


@dataclass(frozen=True)
class Grid:
    """The output planes: where each lies and how it is made from the input planes."""

    positions: tuple[tuple[float, float, float], ...]  # ImagePositionPatient of every output plane
    step_vector: tuple[float, float, float]  # LPS mm per output z index, along the normal
    sources: tuple[tuple[int, int, float], ...]  # (lower input, upper input, weight of upper)
    shifts: tuple[tuple[float, float], ...]  # in-plane (row, column) shift in pixels, per output plane


def tilt_grid(positions: Sequence[Sequence[float]], orientation: Sequence[float],
              pixel_spacing: Sequence[float]) -> Grid:
    """Untilt: slice k moves in-plane by minus its drift off the normal through slice 0."""
    iop = np.asarray(orientation, dtype=float)
    normal = geometry.slice_normal(orientation)
    ipp = np.asarray(positions, dtype=float)
    depth = (ipp - ipp[0]) @ normal
    out_positions, shifts = [], []
    for k, p in enumerate(ipp):
        target = ipp[0] + depth[k] * normal  # where slice k would be without tilt
        drift = p - target
        # output (r, c) sees input at (r + drow, c + dcol): world(target + c*X + r*Y) = p + ...
        dcol = float(-(drift @ iop[:3]) / pixel_spacing[1])
        drow = float(-(drift @ iop[3:]) / pixel_spacing[0])
        out_positions.append(tuple(target.tolist()))
        shifts.append((drow, dcol))
    step = (depth[-1] / (len(ipp) - 1)) * normal if len(ipp) > 1 else normal
    return Grid(tuple(out_positions), tuple(step.tolist()), tuple((k, k, 0.0) for k in range(len(ipp))),
                tuple(shifts))


def uniform_grid(positions: Sequence[Sequence[float]], orientation: Sequence[float], step: float) -> Grid:
    """Planes every `step` mm along the normal from the first slice to the last, each a linear
    blend of the two input slices around it (an input plane where one lies exactly)."""
    normal = geometry.slice_normal(orientation)
    ipp = np.asarray(positions, dtype=float)
    depth = (ipp - ipp[0]) @ normal
    count = int(math.floor(depth[-1] / step + 1e-6)) + 1
    out_positions, sources = [], []
    for m in range(count):
        z = m * step
        hi = int(np.searchsorted(depth, z - 1e-6))
        hi = min(hi, len(depth) - 1)
        lo = hi if abs(depth[hi] - z) < 1e-6 or hi == 0 else hi - 1
        weight = 0.0 if lo == hi else float((z - depth[lo]) / (depth[hi] - depth[lo]))
        out_positions.append(tuple((ipp[0] + z * normal).tolist()))
        sources.append((lo, hi, weight))
    return Grid(tuple(out_positions), tuple((step * normal).tolist()), tuple(sources), ((0.0, 0.0),) * count)


def _int_shift(a: np.ndarray, k: int, axis: int, fill: float) -> np.ndarray:
    """out[x] = a[x + k] along `axis`, `fill` where that falls outside."""
    out = np.full_like(a, fill)
    n = a.shape[axis]
    if abs(k) >= n:
        return out
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    src[axis] = slice(max(k, 0), n + min(k, 0))
    dst[axis] = slice(max(-k, 0), n - max(k, 0))
    out[tuple(dst)] = a[tuple(src)]
    return out


def shift_plane(plane: np.ndarray, drow: float, dcol: float, fill: float) -> np.ndarray:
    """Bilinear in-plane shift: out[r, c] = plane(r + drow, c + dcol); exact for whole pixels."""
    out = plane.astype(np.float64)
    for axis, d in ((0, drow), (1, dcol)):
        base = math.floor(d + 1e-9)
        frac = d - base
        shifted = _int_shift(out, base, axis, fill)
        if frac > 1e-9:
            shifted = shifted * (1 - frac) + _int_shift(out, base + 1, axis, fill) * frac
        out = shifted
    return out


def resample(planes: Iterable[np.ndarray], grid: Grid) -> Iterator[np.ndarray]:
    """Output planes (float32) of `grid` from input planes arriving in z order."""
    held: dict[int, np.ndarray] = {}
    inputs = enumerate(planes)
    for (lo, hi, weight), (drow, dcol) in zip(grid.sources, grid.shifts):
        while hi not in held:
            index, plane = next(inputs)
            held[index] = plane.astype(np.float64)
        for index in [i for i in held if i < lo]:
            del held[index]
        value = held[lo] if lo == hi else held[lo] * (1 - weight) + held[hi] * weight
        if drow or dcol:
            value = shift_plane(value, drow, dcol, float(value.min()))
        yield value.astype(np.float32)
