"""What every export format shares: which series to export, reading one back, rows of the exports table.

Every format reads OUT only (the volume through dicom_io.readers, the series JSON, the slices CSV),
never the DICOM sources: a de-identified OUT exports only its pseudonyms, and sources may be gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from dicom_io import readers, schemas, storage, tables
from dicom_io.errors import DicomflowError

HDF5_COMPRESSIONS = ("gzip", "zstd")


class ExportError(DicomflowError):
    """One series cannot be written in the asked format; the reason goes to the exports table."""


@dataclass(frozen=True)
class ExportSettings:
    """What the export functions need from the job's options."""

    output: str  # OUT, as written by pipelines.convert
    to: str  # DIR
    fmt: str  # schemas.EXPORT_FORMATS
    keep_uids: bool = False  # dicom: keep the source SOP/Series Instance UIDs
    labels: str | None = None  # dicom: a label volume (Zarr or NIfTI) written as DICOM SEG
    hdf5_compression: str = "gzip"  # HDF5_COMPRESSIONS


@dataclass
class SeriesData:
    """One committed series read back: volume (lazy), series JSON, typed slices CSV rows."""

    volume: readers.Volume
    record: dict[str, Any]
    slices: list[dict[str, Any]]

    @property
    def key(self) -> str:
        return self.volume.series_key


def export_row(key: str, fmt: str, status: str, reason: str = "", outputs: Sequence[str] = ()) -> dict[str, Any]:
    """One row of DIR/exports-*.parquet."""
    return {"series_key": key, "format": fmt, "status": status, "reason": reason, "outputs": list(outputs)}


def series_rows(output: str, keys: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(converted series rows to export, export rows of asked keys that cannot be) from the summary table.

    Without `keys`, every converted series; with them, those (an unknown or failed key is a failure row).
    """
    rows = [r for r in tables.read_table(output, schemas.SUMMARY_SERIES_PREFIX).to_pylist()]
    converted = {r["series_key"]: r for r in rows if r["status"] == schemas.CONVERTED}
    if not keys:
        return [converted[k] for k in sorted(converted)], []
    known = {r["series_key"] for r in rows}
    missing = [export_row(k, "", schemas.FAILED, "not converted: the summary table records it as failed"
                          if k in known else "unknown series: not in the summary table")
               for k in sorted(set(keys)) if k not in converted]
    return [converted[k] for k in sorted(set(keys)) if k in converted], missing


def load_series(output: str, key: str) -> SeriesData:
    """The committed series `key`: refuse a volume without its commit record."""
    uri = schemas.series_json_uri(output, key)
    if not storage.exists(uri):
        raise ExportError(f"not committed: {uri} is missing")
    record = json.loads(storage.read_bytes(uri))
    slices = tables.parse_slices_csv(storage.read_bytes(schemas.slices_csv_uri(output, key)))
    return SeriesData(readers.open_volume(output, key), record, slices)


def axis_names(volume: readers.Volume) -> tuple[str, ...]:
    """Axis names of a volume array: its Zarr dimension_names, else (z, y, x) plus c for colour."""
    names = getattr(getattr(volume.array, "metadata", None), "dimension_names", None)
    if names and all(names):
        return tuple(names)
    return ("z", "y", "x") if len(volume.shape) == 3 else ("z", "y", "x", "c")


def slabs(array: Any) -> Iterator[tuple[int, np.ndarray]]:
    """(first index, slab) along axis 0, one stored shard (else chunk) deep: bounded memory."""
    depth = (getattr(array, "shards", None) or array.chunks)[0]
    for z0 in range(0, array.shape[0], depth):
        yield z0, np.asarray(array[z0:z0 + depth])
