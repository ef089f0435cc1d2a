"""8-bit previews of converted volumes (JPEG or PNG): where they go and how they are drawn.

Windowing comes from the series' VOI tags, else a modality default, else the data range
(dicom_io.render); MONOCHROME1 is inverted; colour is kept. Bytes are deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicom_io import render, storage

PREVIEWS_DIR = "previews"
MODES = ("none", "middle", "all")
FORMATS = ("jpeg", "png")
_UNSAFE = re.compile(r"[^0-9A-Za-z.\-]+")


@dataclass(frozen=True)
class PreviewSettings:
    """--previews, --preview_format and --preview_naming (key | sop | manifest:COLUMN)."""

    mode: str = "none"
    fmt: str = "jpeg"
    naming: str = "key"

    @property
    def ext(self) -> str:
        return "jpg" if self.fmt == "jpeg" else "png"

    @property
    def label_column(self) -> str | None:
        """The manifest column that names per-instance previews, if any."""
        return self.naming.split(":", 1)[1] if self.naming.startswith("manifest:") else None


def parse_naming(naming: str) -> str:
    """Validate --preview_naming; returns it unchanged."""
    if naming in ("key", "sop") or (naming.startswith("manifest:") and len(naming) > len("manifest:")):
        return naming
    raise ValueError(f"--preview_naming must be key, sop or manifest:COLUMN, not {naming!r}")


def safe_name(text: str) -> str:
    """A file-name-safe version of a UID or manifest value (no separators, no leading dots)."""
    return _UNSAFE.sub("-", text).strip(".-")[:128] or "unnamed"


def slice_preview_uri(output: str, settings: PreviewSettings, series_key: str, z: int, sop: str,
                      label: str | None, frame: int, frames: int) -> str:
    """OUT/previews/{series_key}/{z:05d}.ext, or flat by SOP UID / manifest label (frame-suffixed)."""
    if settings.naming == "key":
        return storage.join(output, PREVIEWS_DIR, series_key, f"{z:05d}.{settings.ext}")
    name = safe_name(label if settings.label_column else sop) if (label or sop) else f"{series_key}-{z:05d}"
    suffix = f"_f{frame:04d}" if frames > 1 else ""
    return storage.join(output, PREVIEWS_DIR, f"{name}{suffix}.{settings.ext}")


def series_preview_uris(output: str, settings: PreviewSettings, series_key: str) -> tuple[str, str]:
    """OUT/previews/{series_key}.ext (middle slice) and {series_key}_montage.ext."""
    return (storage.join(output, PREVIEWS_DIR, f"{series_key}.{settings.ext}"),
            storage.join(output, PREVIEWS_DIR, f"{series_key}_montage.{settings.ext}"))


def slice_bytes(plane: np.ndarray, dicom: dict[str, Any], settings: PreviewSettings) -> bytes:
    """One slice as an image file, at its physical aspect ratio."""
    display = render.display_of(dicom)
    image = render.slice_image(plane, dicom["spacing"][1:], display, max_size=max(plane.shape[:2]))
    return render.encode(image, settings.fmt)


def write_slice(uri: str, plane: np.ndarray, dicom: dict[str, Any], settings: PreviewSettings) -> int:
    return storage.write_bytes(uri, slice_bytes(plane, dicom, settings))


def write_series(volume: Any, dicom: dict[str, Any], settings: PreviewSettings, uris: tuple[str, str]) -> int:
    """Middle slice and axial/coronal/sagittal montage, read from the written volume (3 planes; the
    first volume of a 4D array)."""
    display = render.display_of(dicom)
    volume = render.first_volume(volume, dicom)
    plane = np.asarray(volume[volume.shape[0] // 2])
    middle = render.slice_image(plane, dicom["spacing"][1:], display, max_size=max(plane.shape[:2]))
    montage = render.montage(volume, dicom["spacing"], z_step=render.z_step_from_affine(dicom.get("affine_lps")),
                             display=display)
    return (storage.write_bytes(uris[0], render.encode(middle, settings.fmt))
            + storage.write_bytes(uris[1], render.encode(montage, settings.fmt)))
