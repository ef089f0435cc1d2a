"""OME-Zarr 0.5 metadata of a volume (scale, translation, omero window) and its optional multiscale pyramid.

Level 0 is array "0" as convert streams it; with `--pyramid_levels N` arrays "1" .. "N-1" are block means of
the level above, written after it from the stored array (slab by slab), so bytes are deterministic. Each level
halves y and x, and z too when the slice step is finer than the new in-plane step (so voxels get more
isotropic, never less). The full affine (oblique, sheared) stays in `dicom.affine_lps`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from dicom_io import storage

VERSION = "0.5"
PYRAMID_CHUNK = (16, 256, 256)  # (z, y, x) chunks of the smaller levels (no sharding: they are small)


class PyramidError(ValueError):
    """A pyramid cannot be planned (fewer than one level asked)."""


def level_factors(scale_zyx: list[float], levels: int) -> list[tuple[int, int, int]]:
    """Cumulative (z, y, x) downsampling factor of each level; level 0 is (1, 1, 1)."""
    if levels < 1:
        raise PyramidError(f"pyramid levels must be at least 1, got {levels}")
    factors = [(1, 1, 1)]
    for _ in range(levels - 1):
        fz, fy, fx = factors[-1]
        in_plane = min(scale_zyx[1] * fy * 2, scale_zyx[2] * fx * 2)
        factors.append((fz * 2 if scale_zyx[0] * fz < in_plane else fz, fy * 2, fx * 2))
    return factors


def translation_zyx(affine_lps: list[list[float]] | None) -> list[float]:
    """The first slice's position (voxel 0) along the array's own z, y, x directions, in mm."""
    if affine_lps is None:
        return [0.0, 0.0, 0.0]
    affine = np.asarray(affine_lps, dtype=np.float64)
    origin = affine[:3, 3]
    along = [float(origin @ (affine[:3, i] / np.linalg.norm(affine[:3, i]))) for i in (2, 1, 0)]
    return [round(v, 6) for v in along]


def _first(value: Any) -> float | None:
    value = value[0] if isinstance(value, list) and value else value
    try:
        return None if value in (None, "", []) else float(value)
    except (TypeError, ValueError):
        return None


def _dtype_range(dtype: str) -> tuple[float, float]:
    kind = np.dtype(dtype)
    info = np.iinfo(kind) if kind.kind in "iu" else np.finfo(kind)
    return float(info.min), float(info.max)


def omero(dicom: dict[str, Any]) -> dict[str, Any] | None:
    """The `omero` window from (0028,1050) WindowCenter / (0028,1051) WindowWidth (first value); None without."""
    tags = dicom.get("tags") or {}
    centre, width = _first(tags.get("WindowCenter")), _first(tags.get("WindowWidth"))
    if centre is None or width is None or width <= 0:
        return None
    low, high = _dtype_range(dicom["dtype"])
    window = {"start": centre - width / 2, "end": centre + width / 2, "min": low, "max": high}
    label = str(tags.get("SeriesDescription") or dicom.get("modality") or "")
    return {"channels": [{"color": "FFFFFF", "window": window, "label": label, "active": True}],
            "rdefs": {"model": "greyscale"}}


def multiscales(name: str, scale_zyx: list[float], translation: list[float], n_volumes: int,
                levels: int) -> list[dict[str, Any]]:
    """One multiscale: axes (t,) z, y, x; per level scale x factor, translation at the block centre."""
    axes = [{"name": n, "type": "space", "unit": "millimeter"} for n in ("z", "y", "x")]
    four_d = n_volumes > 1  # t: index order, scale 1, no shift (volume times are in `dicom.volumes`)
    lead_axes, lead, no_shift = ([{"name": "t", "type": "time"}], [1.0], [0.0]) if four_d else ([], [], [])
    datasets = []
    for level, factor in enumerate(level_factors(scale_zyx, levels)):
        scale = [s * f for s, f in zip(scale_zyx, factor)]
        shift = [t + (f - 1) * s / 2 for t, s, f in zip(translation, scale_zyx, factor)]
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": lead + scale}, {"type": "translation", "translation": no_shift + shift}]})
    return [{"name": name, "axes": lead_axes + axes, "datasets": datasets}]


def ome_attributes(name: str, dicom: dict[str, Any], scale_zyx: list[float], n_volumes: int,
                   levels: int = 1) -> dict[str, Any]:
    """The group's `ome` block: multiscales, and `omero` when the series has a window."""
    ome = {"version": VERSION,
           "multiscales": multiscales(name, scale_zyx, translation_zyx(dicom.get("affine_lps")), n_volumes, levels)}
    window = omero(dicom)
    return {"ome": {**ome, "omero": window} if window else ome}


# ---- the pyramid ------------------------------------------------------------------------------------

def downsample(block: np.ndarray, factor: tuple[int, int, int]) -> np.ndarray:
    """(z, y, x) block means by `factor`, edge-padded where a size does not divide; integers rounded (to even)."""
    pad = [(0, -n % f) for n, f in zip(block.shape, factor)]
    padded = np.pad(block, pad, mode="edge") if any(after for _, after in pad) else block
    shape = [n // f for n, f in zip(padded.shape, factor)]
    means = padded.reshape(shape[0], factor[0], shape[1], factor[1], shape[2], factor[2]).mean(
        axis=(1, 3, 5), dtype=np.float64)
    return (np.rint(means) if block.dtype.kind in "iu" else means).astype(block.dtype)


def _step(previous: tuple[int, int, int], current: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(c // p for p, c in zip(previous, current))


def _create_level(group: Any, name: str, source: Any, shape: tuple[int, ...], compression_level: int) -> Any:
    lead = shape[:-3]
    chunks = tuple(1 for _ in lead) + tuple(min(c, n) for c, n in zip(PYRAMID_CHUNK, shape[-3:]))
    return group.create_array(name, shape=shape, dtype=source.dtype, chunks=chunks, fill_value=0,
                              compressors=BloscCodec(cname="zstd", clevel=compression_level,
                                                     shuffle=BloscShuffle.bitshuffle),
                              dimension_names=source.metadata.dimension_names)


def _write_level(source: Any, target: Any, step: tuple[int, int, int]) -> None:
    """Fill `target` from `source`, PYRAMID_CHUNK[0] output planes (of each volume) at a time."""
    depth = PYRAMID_CHUNK[0]
    for t in np.ndindex(*source.shape[:-3]):
        for z0 in range(0, target.shape[-3], depth):
            z1 = min(target.shape[-3], z0 + depth)
            block = source[(*t, slice(z0 * step[0], z1 * step[0]))]
            target[(*t, slice(z0, z1))] = downsample(np.asarray(block), step)


def write_pyramid(uri: str, ome: dict[str, Any], compression_level: int) -> None:
    """Arrays "1" .. of the multiscale in `ome`, each from the level above (whose factors its scales give)."""
    datasets = ome["multiscales"][0]["datasets"]
    if len(datasets) < 2:
        return
    group = zarr.open_group(storage.zarr_store(uri), mode="r+")
    base = [float(v) for v in datasets[0]["coordinateTransformations"][0]["scale"][-3:]]
    factors = [tuple(int(round(s / b)) for s, b in zip(d["coordinateTransformations"][0]["scale"][-3:], base))
               for d in datasets]
    for level in range(1, len(datasets)):
        source = group[datasets[level - 1]["path"]]
        step = _step(factors[level - 1], factors[level])
        shape = source.shape[:-3] + tuple(math.ceil(n / s) for n, s in zip(source.shape[-3:], step))
        _write_level(source, _create_level(group, datasets[level]["path"], source, shape, compression_level), step)
