"""Previews: VOI windowing, 8-bit images, deterministic JPEG/PNG bytes, an orthogonal-plane montage.

Pure numpy + Pillow. pydicom's `apply_windowing` is not used: it needs a Dataset and maps to the
stored bit range, while a preview wants 0..255 from a volume that is already modality-LUT'd.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

# Window (center, width) when the series carries none: CT soft tissue.
MODALITY_WINDOWS: dict[str, tuple[float, float]] = {"CT": (40.0, 400.0)}
JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 6
PANEL_GAP = 4  # black pixels between montage panels


@dataclass(frozen=True)
class Display:
    """How to turn stored values into grey levels: a VOI window (None = data range) and inversion."""

    center: float | None = None
    width: float | None = None
    invert: bool = False


def _first_number(value: Any) -> float | None:
    """First value of a possibly multi-valued DS ((0028,1050) may hold several windows)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, str):
        value = value.split("\\")[0]
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def voi_from_tags(tags: dict[str, Any], modality: str | None) -> tuple[float, float] | None:
    """(center, width) from (0028,1050) WindowCenter / (0028,1051) WindowWidth, else the modality default.

    `tags` uses pydicom keywords (header.SERIES_TAGS). None means: window on the data's min/max.
    """
    center, width = _first_number(tags.get("WindowCenter")), _first_number(tags.get("WindowWidth"))
    if center is not None and width is not None and width >= 1:
        return center, width
    return MODALITY_WINDOWS.get((modality or "").upper())


def display_of(dicom: dict[str, Any]) -> Display:
    """Display settings from a volume's `dicom` attributes (series JSON / Zarr group attrs)."""
    voi = voi_from_tags(dicom.get("tags") or {}, dicom.get("modality"))
    center, width = voi if voi else (None, None)
    return Display(center, width, bool(dicom.get("monochrome1")))


def data_window(*planes: np.ndarray) -> tuple[float, float]:
    """(center, width) mapping the finite min..max of `planes` exactly onto 0..255."""
    finite = [p[np.isfinite(p)] for p in (np.asarray(q, dtype=np.float64) for q in planes)]
    values = np.concatenate([f.ravel() for f in finite]) if finite else np.zeros(1)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    return (lo + hi + 1.0) / 2.0, hi - lo + 1.0


def window(plane: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear VOI function onto 0..255 (uint8)."""
    if width < 1:
        raise ValueError(f"window width must be >= 1, got {width}")
    x = np.asarray(plane, dtype=np.float64)
    if width == 1:  # the formula's limit: a threshold at center - 0.5
        y = (x > center - 0.5).astype(np.float64)
    else:
        y = np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    return np.rint(np.nan_to_num(y, nan=0.0) * 255.0).astype(np.uint8)


def _colour_to_uint8(plane: np.ndarray) -> np.ndarray:
    """uint8 RGB kept; wider samples shifted down by the bits their maximum uses."""
    if plane.dtype == np.uint8:
        return plane
    top = int(np.max(plane)) if plane.size else 0
    shift = max(0, top.bit_length() - 8)
    return (plane.astype(np.uint32) >> shift).astype(np.uint8)


def is_colour(plane: np.ndarray) -> bool:
    return plane.ndim == 3 and plane.shape[-1] == 3


def to_image(plane: np.ndarray, center: float | None = None, width: float | None = None,
             invert: bool = False) -> Image.Image:
    """One slice as an 8-bit PIL image: grey ('L') windowed, or colour ('RGB') scaled; MONOCHROME1 inverted."""
    if is_colour(plane):
        return Image.fromarray(np.ascontiguousarray(_colour_to_uint8(plane)))
    if center is None or width is None:
        center, width = data_window(plane)
    grey = window(plane, center, width)
    if invert:
        grey = 255 - grey
    return Image.fromarray(np.ascontiguousarray(grey))


def encode(image: Image.Image, fmt: str = "jpeg") -> bytes:
    """JPEG or PNG bytes; fixed settings and no metadata, so the same image gives the same bytes."""
    buffer = io.BytesIO()
    clean = Image.frombytes(image.mode, image.size, image.tobytes())  # drops any info/exif carried along
    if fmt.lower() in ("jpeg", "jpg"):
        clean.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    elif fmt.lower() == "png":
        clean.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    else:
        raise ValueError(f"unknown image format {fmt!r} (jpeg or png)")
    return buffer.getvalue()


def z_step_from_affine(affine: Sequence[Sequence[float]] | None) -> float | None:
    """Length of the affine's slice column: the mean step between slices (README: affine_lps)."""
    if not affine:
        return None
    step = float(np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, 2]))
    return step if step > 0 else None


def _mm(value: float | None, fallback: float = 1.0) -> float:
    return float(value) if value else fallback


def physical_image(image: Image.Image, spacing_hw: tuple[float, float], px_per_mm: float) -> Image.Image:
    """Resample so one output pixel is 1/px_per_mm mm in both directions (true aspect ratio)."""
    rows, cols = image.height, image.width
    size = (max(1, round(cols * spacing_hw[1] * px_per_mm)), max(1, round(rows * spacing_hw[0] * px_per_mm)))
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def slice_image(plane: np.ndarray, spacing_yx: Sequence[float | None], display: Display = Display(),
                max_size: int = 256) -> Image.Image:
    """One slice at its physical aspect ratio, the longer side `max_size` pixels."""
    sy, sx = _mm(spacing_yx[0]), _mm(spacing_yx[1])
    image = to_image(plane, display.center, display.width, display.invert)
    return physical_image(image, (sy, sx), max_size / max(plane.shape[0] * sy, plane.shape[1] * sx))


def montage(volume: Any, spacing_zyx: Sequence[float | None], *, z_step: float | None = None,
            display: Display = Display(), height: int = 256) -> Image.Image:
    """The middle plane along z, y and x (axial, coronal, sagittal for an axial stack), side by side.

    `volume` is a Zarr array (z, y, x[, c]); only the three planes are read. Each panel is resampled
    to its physical size at one common scale; the slice axis points up (last slice on top).
    `spacing_zyx[0]` may be None (irregular stacks): then `z_step` (e.g. z_step_from_affine), else 1 mm.
    """
    nz, ny, nx = volume.shape[:3]
    sz = _mm(spacing_zyx[0], _mm(z_step))
    sy, sx = _mm(spacing_zyx[1]), _mm(spacing_zyx[2])
    planes = [np.asarray(volume[nz // 2]), np.asarray(volume[:, ny // 2])[::-1], np.asarray(volume[:, :, nx // 2])[::-1]]
    spacings = [(sy, sx), (sz, sx), (sz, sy)]
    center, width = display.center, display.width
    if (center is None or width is None) and not is_colour(planes[0]):
        center, width = data_window(*planes)
    px_per_mm = height / max(ny * sy, nz * sz)
    panels = [physical_image(to_image(p, center, width, display.invert), s, px_per_mm) for p, s in zip(planes, spacings)]
    canvas = Image.new(panels[0].mode, (sum(p.width for p in panels) + PANEL_GAP * 2, max(p.height for p in panels)))
    left = 0
    for panel in panels:
        canvas.paste(panel, (left, 0))
        left += panel.width + PANEL_GAP
    return canvas


def first_volume(array: Any, record: dict[str, Any]) -> Any:
    """The (z, y, x[, c]) volume previews show: the array itself, or its first volume when 4D."""
    return array[0] if (record.get("n_volumes") or 1) > 1 else array
