"""Siemens mosaics: one stored image holding a grid of slices (ImageType MOSAIC, CSA header).

The Siemens CSA image header (0029,xx10) gives NumberOfImagesInMosaic and SliceNormalVector;
nibabel's `nicom.csareader` reads it (a well-kept reader; the format is undocumented). The
stored ImagePositionPatient is the corner of the whole mosaic, not of the first tile: moved by
half the difference between mosaic and tile size along the row and column directions, as
nibabel (`MosaicWrapper.image_position`) and dcm2niix do. Slice k lies k x (0018,0088)
SpacingBetweenSlices (else SliceThickness) along the CSA slice normal.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicom_io.errors import HeaderError

Vector = tuple[float, float, float]
MAX_IMAGES = 4096  # a mosaic holds at most this many slices (scanners write up to a few hundred)


@dataclass(frozen=True)
class Mosaic:
    """How one mosaic instance splits into slices, and where each lies."""

    n_images: int  # NumberOfImagesInMosaic
    grid: int  # tiles per mosaic row and column: ceil(sqrt(n_images))
    tile_rows: int
    tile_columns: int
    positions: tuple[Vector, ...] | None  # corrected position of every tile, None without geometry


def _csa_reader() -> Any:
    with warnings.catch_warnings():  # nibabel.nicom warns that its *DICOM wrappers* are experimental
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader
    return csareader


def is_mosaic(image_type: tuple[str, ...]) -> bool:
    """(0008,0008) ImageType names MOSAIC."""
    return any(value.upper() == "MOSAIC" for value in image_type)


def _csa(ds: Any) -> dict | None:
    csareader = _csa_reader()
    try:
        return csareader.get_csa_header(ds, "image")
    except (csareader.CSAReadError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise HeaderError(f"invalid header: Siemens CSA image header unreadable: {type(exc).__name__}: {exc}") from exc


def tile_positions(ipp: Vector, iop: tuple[float, ...], pixel_spacing: tuple[float, float], rows: int,
                   columns: int, grid: int, normal: Vector, spacing: float, n_images: int) -> tuple[Vector, ...]:
    """Position of every tile: the mosaic corner moved onto tile 0 (nibabel/dcm2niix), then along the normal."""
    row_cos, col_cos = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    row_spacing, col_spacing = pixel_spacing
    shift_rows, shift_cols = (rows - rows / grid) / 2, (columns - columns / grid) / 2
    first = np.asarray(ipp, float) + col_cos * row_spacing * shift_rows + row_cos * col_spacing * shift_cols
    step = np.asarray(normal, float) * spacing
    return tuple(tuple(float(v) for v in first + k * step) for k in range(n_images))  # type: ignore[misc]


def read_mosaic(ds: Any, image_type: tuple[str, ...], rows: int, columns: int, ipp: Vector | None,
                iop: tuple[float, ...] | None, pixel_spacing: tuple[float, float] | None,
                slice_spacing: float | None) -> Mosaic | None:
    """The mosaic layout of an instance whose ImageType says MOSAIC; None for other instances."""
    if not is_mosaic(image_type):
        return None
    csa = _csa(ds)
    csareader = _csa_reader()
    n_images = csareader.get_n_mosaic(csa) if csa else None
    if not n_images:
        raise HeaderError("invalid header: ImageType MOSAIC without NumberOfImagesInMosaic in the Siemens CSA header")
    n_images = int(n_images)
    if not 1 <= n_images <= MAX_IMAGES:
        raise HeaderError(f"invalid header: NumberOfImagesInMosaic is {n_images} (at most {MAX_IMAGES})")
    grid = math.ceil(math.sqrt(n_images))
    if rows < grid or columns < grid or rows % grid or columns % grid:
        raise HeaderError(f"invalid header: a {rows} x {columns} mosaic cannot hold a {grid} x {grid} grid "
                          f"of {n_images} images")
    try:
        normal = csareader.get_slice_normal(csa)
    except ValueError:
        normal = None
    if normal is None and iop is not None:
        normal = np.cross(iop[:3], iop[3:])
    positions = None
    if ipp is not None and iop is not None and pixel_spacing is not None and normal is not None and slice_spacing:
        positions = tile_positions(ipp, iop, pixel_spacing, rows, columns, grid, tuple(normal), slice_spacing,
                                   n_images)
    return Mosaic(n_images, grid, rows // grid, columns // grid, positions)


def demosaic(stored: np.ndarray, mosaic: Mosaic) -> np.ndarray:
    """(1, rows, cols) mosaic -> (n_images, tile_rows, tile_cols), tiles read row by row (nibabel's order)."""
    g, r, c = mosaic.grid, mosaic.tile_rows, mosaic.tile_columns
    tiles = stored.reshape(g, r, g, c).transpose(0, 2, 1, 3).reshape(g * g, r, c)
    return np.ascontiguousarray(tiles[: mosaic.n_images])
