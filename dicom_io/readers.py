"""Read a converted volume back, whatever store convert used, on local paths or gs://.

    with open_volume(OUT, key) as vol:
        vol.array[10:20]      # lazy zarr array, axes (z, y, x[, c]) (or (t, z, y, x) for 4D stacks)
        vol.affine_ras        # 4x4 numpy, NIfTI convention

Every reader (verify, dataset, export) goes through `open_volume`, so the directory layout
(`volumes/{key}.zarr`) and the one-object layout (`volumes/{key}.zarr.zip`) are read alike.
Locations are taken relative to the OUT a reader is given, so a moved or copied OUT reads the same.
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


def open_series(output: str, row: dict[str, Any]) -> Volume:
    """The volume a series table row (or series JSON) links to, resolved against `output` (where OUT is now).

    Contract 3 rows link by `zarr_path`; contract-2 rows (absolute `zarr_uri` only) are found by key.
    """
    if row.get("zarr_path"):
        return open_volume_uri(schemas.resolve_output_path(output, row["zarr_path"]), row["series_key"])
    return open_volume(output, row["series_key"])


# ---- training loaders: a map-style dataset over the series table (torch-free; DataLoader collates it) ------

IMAGE, LABEL, AFFINE, ORIGIN, KEY = "image", "label", "affine", "origin", "series_key"


class NoGeometry(DicomflowError, ValueError):
    """The volume has no affine (no ImagePositionPatient/ImageOrientationPatient): no world placement."""


def channel_first(array: Any, dimension_names: tuple[str, ...] | None, window: tuple[slice, ...]) -> np.ndarray:
    """The (z, y, x) `window` of a stored array as (channel, z, y, x): t (4D) or c (colour) is the channel."""
    names = tuple(dimension_names or ())
    if names and names[0] == "t":
        return np.asarray(array[(slice(None), *window)])
    if names and names[-1] == "c":
        return np.moveaxis(np.asarray(array[(*window, slice(None))]), -1, 0)
    return np.asarray(array[window])[np.newaxis]


def spatial_shape(shape: tuple[int, ...], dimension_names: tuple[str, ...] | None) -> tuple[int, int, int]:
    """(z, y, x) of a stored array, whatever its channel axis."""
    names = tuple(dimension_names or ())
    if names and names[0] == "t":
        return tuple(shape[1:4])
    return tuple(shape[:3])


def random_origin(shape_zyx: tuple[int, ...], patch_zyx: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
    """A uniformly drawn corner of a patch inside the volume (0 along an axis the patch does not fit)."""
    return tuple(int(rng.integers(0, max(0, n - p) + 1)) for n, p in zip(shape_zyx, patch_zyx))


def read_patch(array: Any, dimension_names: tuple[str, ...] | None, origin: tuple[int, ...],
               patch_zyx: tuple[int, ...], pad_value: float = 0.0) -> np.ndarray:
    """(channel, *patch_zyx) read from `origin` (only the shards it touches), padded where the volume ends."""
    window = tuple(slice(o, o + p) for o, p in zip(origin, patch_zyx))
    data = channel_first(array, dimension_names, window)
    short = [(0, 0)] + [(0, p - n) for p, n in zip(patch_zyx, data.shape[1:])]
    return np.pad(data, short, constant_values=pad_value) if any(after for _, after in short) else data


def patch_affine(affine_ras: np.ndarray | None, origin: tuple[int, ...]) -> np.ndarray:
    """The RAS affine of a patch whose (z, y, x) corner is `origin` (NaN without geometry, so batches collate)."""
    if affine_ras is None:
        return np.full((4, 4), np.nan)
    shift = np.eye(4)
    shift[:3, 3] = origin[::-1]  # affine index order is (x, y, z)
    return affine_ras @ shift


def read_labels(uri: str, key_column: str = KEY) -> dict[str, dict[str, Any]]:
    """A labels table (CSV or Parquet, one row per series_key) as {series_key: row}."""
    from dicom_io.tables import read_parquet  # tables imports schemas only; kept local to keep this module light

    if uri.endswith(".parquet"):
        rows = read_parquet(uri).to_pylist()
    else:
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO(storage.read_bytes(uri).decode("utf-8"))))
    return {str(r[key_column]): r for r in rows if r.get(key_column)}


def converted_rows(output: str) -> list[dict[str, Any]]:
    """The converted rows of OUT's series table, in series_key order."""
    from dicom_io.tables import read_table

    rows = [r for r in read_table(output, "series").to_pylist() if r["status"] == schemas.CONVERTED]
    return sorted(rows, key=lambda r: r["series_key"])


class VolumeDataset:
    """Map-style dataset over OUT's converted series, optionally joined with a labels table.

    Item i is a dict: `image` (channel, z, y, x) as `dtype` (the whole volume, or a random `patch_size`
    patch read from only the shards it touches), `affine` (the patch's RAS affine), `origin` (its z, y, x
    corner), `series_key`, and `label` (the row's `label_column`) when labels are given: then only labelled
    series are items. Volumes are opened lazily, once per worker process, so `DataLoader(num_workers=N)`
    and gs:// work. Patches are drawn from a generator seeded by (seed, epoch, index): reproducible.
    """

    def __init__(self, output: str, labels: str | dict[str, dict[str, Any]] | None = None, *,
                 label_column: str = LABEL, patch_size: tuple[int, int, int] | None = None, seed: int = 0,
                 dtype: str | None = "float32", pad_value: float = 0.0) -> None:
        self.output, self.label_column, self.seed, self.dtype, self.pad_value = output, label_column, seed, dtype, pad_value
        self.patch_size = tuple(patch_size) if patch_size else None
        self.labels = read_labels(labels) if isinstance(labels, str) else labels
        rows = converted_rows(output)
        self.rows = [r for r in rows if self.labels is None or r["series_key"] in self.labels]
        self.epoch = 0
        self._volumes: dict[str, Volume] = {}

    def set_epoch(self, epoch: int) -> None:
        """Draw other patches next epoch (call before each epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_volumes": {}}  # open stores stay in the process that opened them

    def volume(self, row: dict[str, Any]) -> Volume:
        key = row["series_key"]
        if key not in self._volumes:
            self._volumes[key] = open_series(self.output, row)
        return self._volumes[key]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        key, vol = row["series_key"], self.volume(row)
        names = vol.array.metadata.dimension_names
        shape = spatial_shape(vol.shape, names)
        patch = self.patch_size or shape
        origin = random_origin(shape, patch, np.random.default_rng([self.seed, self.epoch, index]))
        image = read_patch(vol.array, names, origin, patch, self.pad_value)
        item = {IMAGE: image if self.dtype is None else image.astype(self.dtype, copy=False),
                AFFINE: patch_affine(vol.affine_ras, origin), ORIGIN: np.asarray(origin), KEY: key}
        if self.labels is not None:
            item[LABEL] = self.labels[key][self.label_column]
        return item

    def close(self) -> None:
        for vol in self._volumes.values():
            vol.close()
        self._volumes.clear()
