"""Read a converted volume back, whatever store convert used, on local paths or gs://.

    with open_volume(OUT, key) as vol:
        vol.array[10:20]      # lazy zarr array, axes (z, y, x[, c]) (or (t, z, y, x) for 4D stacks)
        vol.affine_ras        # 4x4 numpy, NIfTI convention

Every reader (verify, dataset, export) goes through `open_volume`, so the directory layout
(`volumes/{key}.zarr`) and the one-object layout (`volumes/{key}.zarr.zip`) are read alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from dicom_io import schemas, storage, zipstore
from dicom_io.errors import DicomflowError
from dicom_io.volume import ARRAY_NAME

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeNotFound(DicomflowError, FileNotFoundError):
    """OUT holds neither volumes/{key}.zarr nor volumes/{key}.zarr.zip."""


@dataclass
class Volume:
    """A converted volume opened read-only: lazy array, its `dicom` attributes and affines."""

    series_key: str
    uri: str
    store_kind: str  # schemas.STORE_DIRECTORY | schemas.STORE_ZIP
    array: Any  # zarr.Array; slicing reads only the shards it needs
    dicom: dict[str, Any]
    attributes: dict[str, Any] = field(default_factory=dict)  # every group attribute (ome, dicom, ...)
    _store: Any = None

    @property
    def affine_lps(self) -> np.ndarray | None:
        """(column, row, slice, 1) -> patient LPS mm (README "affine_lps"); None without geometry."""
        affine = self.dicom.get("affine_lps")
        return None if affine is None else np.asarray(affine, dtype=np.float64)

    @property
    def affine_ras(self) -> np.ndarray | None:
        """The same map into RAS (first two rows negated), as NIfTI and nibabel expect."""
        lps = self.affine_lps
        return None if lps is None else LPS_TO_RAS @ lps

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def close(self) -> None:
        if self._store is not None and hasattr(self._store, "close"):
            self._store.close()

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_volume_uri(uri: str, series_key: str = "") -> Volume:
    """Open the volume stored at `uri` (a `.zarr` directory or a `.zarr.zip` object)."""
    kind = schemas.volume_store_of(uri)
    store = zipstore.read_store(uri) if kind == schemas.STORE_ZIP else storage.zarr_store(uri)
    try:
        group = zarr.open_group(store, mode="r")
        array = group[ARRAY_NAME]
    except (FileNotFoundError, KeyError) as exc:
        raise VolumeNotFound(f"{uri}: no Zarr group with array {ARRAY_NAME!r}") from exc
    attributes = dict(group.attrs)
    dicom = dict(attributes.get("dicom") or {})
    return Volume(series_key or dicom.get("series_key", ""), uri, kind, array, dicom, attributes, store)


def open_volume(output: str, series_key: str) -> Volume:
    """The committed volume of `series_key` under OUT, zip object first, else directory."""
    uri = schemas.committed_volume_uri(output, series_key)
    if not storage.exists(uri):
        raise VolumeNotFound(f"{output}: no volume for series {series_key}")
    return open_volume_uri(uri, series_key)
