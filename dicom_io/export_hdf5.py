"""HDF5 export: DIR/series-IIIII-of-NNNNN.h5 (h5py), one group per series, `/{key}/volume` chunked and compressed.

Series go to the file of their summary-table shard (CRC32 of the key, dicom_io.tables), so one
worker owns one file. A re-run appends the series a file lacks and leaves the groups already in it
untouched (their datasets are neither re-read nor re-encoded). Without timestamps (track_times off)
and with groups written in key order, the same inputs give the same bytes.
Single images are (1, rows, cols); colour keeps its trailing c axis.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence

import h5py
import numpy as np

from dicom_io import schemas, storage, tables
from dicom_io.exports import ExportError, SeriesData, axis_names, export_row, slabs

GZIP_LEVEL = 4
CHUNK = (16, 256, 256)


def shard_uri(to: str, index: int, num_shards: int) -> str:
    return tables.shard_file_uri(schemas.export_prefix(to, schemas.HDF5_PREFIX), index, num_shards, "h5")


def _filters(compression: str) -> dict[str, Any]:
    if compression == "zstd":  # Blosc zstd + bitshuffle, the volumes' own codec; readers need hdf5plugin
        import hdf5plugin

        return dict(hdf5plugin.Blosc(cname="zstd", clevel=3, shuffle=hdf5plugin.Blosc.BITSHUFFLE))
    return {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}


def _attributes(data: SeriesData) -> dict[str, Any]:
    """Group attributes: spacing (NaN where unknown), affine, UIDs, geometry, per-slice UIDs and positions."""
    d, tags = data.volume.dicom, data.volume.dicom.get("tags") or {}
    affine = data.volume.affine_lps
    return {
        "series_key": data.key, "series_instance_uid": d.get("series_instance_uid") or "",
        "study_instance_uid": d.get("study_instance_uid") or "",
        "frame_of_reference_uid": str(tags.get("FrameOfReferenceUID") or ""),
        "modality": d.get("modality") or "", "geometry": d.get("geometry") or "", "dtype": str(d.get("dtype")),
        "spacing": np.array([np.nan if v is None else v for v in d.get("spacing") or []], dtype=np.float64),
        "affine_lps": np.full((4, 4), np.nan) if affine is None else affine,
        "sop_instance_uids": np.array([r["sop_instance_uid"] or "" for r in data.slices], dtype=h5py.string_dtype()),
        "image_position_patient": np.array([[np.nan if r[a] is None else r[a] for a in ("ipp_x", "ipp_y", "ipp_z")]
                                            for r in data.slices], dtype=np.float64).reshape(-1, 3),
        "dicom_json": json.dumps(d, sort_keys=True),
    }


def write_group(h5: h5py.File, data: SeriesData, compression: str) -> None:
    """/{key}/volume from the volume, slab by slab, plus the attributes; removed again on any failure."""
    array = data.volume.array
    shape = tuple(array.shape)
    chunks = tuple(min(c, n) for c, n in zip(CHUNK, shape)) + tuple(shape[3:])
    group = h5.create_group(data.key, track_order=True)
    try:
        dataset = group.create_dataset("volume", shape=shape, dtype=array.dtype, chunks=chunks, track_times=False,
                                       **_filters(compression))
        for z0, slab in slabs(array):
            dataset[z0:z0 + slab.shape[0]] = slab
        dataset.attrs["axes"] = np.array(axis_names(data.volume), dtype=h5py.string_dtype())
        for name, value in _attributes(data).items():
            group.attrs[name] = value
    except BaseException:
        del h5[data.key]
        raise


def _local_copy(uri: str, scratch: str) -> str:
    """The shard file as a local working copy (empty name when there is none yet)."""
    local = os.path.join(scratch, "shard.h5")
    if storage.exists(uri):
        with storage.open_read(uri, block_size=8 * 1024 * 1024) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
    return local


def export_hdf5_shard(to: str, index: int, num_shards: int, keys: Sequence[str],
                      load: Callable[[str], SeriesData], compression: str = "gzip") -> list[dict[str, Any]]:
    """Add the series `keys` that the shard file lacks (in key order); export rows for every key.

    `load(key)` reads one series back (dicom_io.exports.load_series bound to OUT).
    """
    uri = shard_uri(to, index, num_shards)
    rows, added = [], 0
    with tempfile.TemporaryDirectory(prefix="dicomflow-hdf5-") as scratch:
        local = _local_copy(uri, scratch)
        with h5py.File(local, "a", track_order=True) as h5:
            for key in sorted(keys):
                if key in h5:
                    rows.append(export_row(key, "hdf5", schemas.EXPORTED, "already in the file", [uri]))
                    continue
                try:
                    data = load(key)
                    with data.volume:
                        write_group(h5, data, compression)
                except (ExportError, OSError, ValueError, KeyError) as exc:
                    rows.append(export_row(key, "hdf5", schemas.FAILED, f"{type(exc).__name__}: {exc}"))
                    continue
                added += 1
                rows.append(export_row(key, "hdf5", schemas.EXPORTED, "", [uri]))
        if added:
            storage.put_file(local, uri)
    return rows
