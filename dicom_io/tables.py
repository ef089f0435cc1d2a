"""Summary tables: deterministic shards on write, one table on read, through the storage helper.

Rows go to a shard by a stable hash of their key and are sorted within it, so the same
inputs always give byte-identical Parquet files, whatever order workers produced them in.
"""

from __future__ import annotations

import io
import zlib
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from dicom_io import schemas, storage

SCHEMAS = {schemas.SUMMARY_SERIES_PREFIX: schemas.SERIES_SCHEMA,
           schemas.SUMMARY_INSTANCES_PREFIX: schemas.INSTANCES_SCHEMA}
SORT_KEYS = {schemas.SUMMARY_SERIES_PREFIX: ("series_key", "series_instance_uid"),
             schemas.SUMMARY_INSTANCES_PREFIX: ("source_uri", "series_key")}


def shard_of(row: dict[str, Any], name: str, num_shards: int) -> int:
    """Stable shard index of a row (CRC32 of its first sort key; Python's hash is salted)."""
    key = str(row.get(SORT_KEYS[name][0]) or "")
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % num_shards


def shard_uri(output: str, name: str, index: int, num_shards: int) -> str:
    return f"{schemas.table_prefix(output, name)}-{index:05d}-of-{num_shards:05d}.parquet"


def encode_shard(rows: Iterable[dict[str, Any]], name: str) -> bytes:
    """Parquet bytes of `rows` sorted by the table's key; same rows, same bytes."""
    keys = SORT_KEYS[name]
    ordered = sorted(rows, key=lambda r: tuple(str(r.get(k) or "") for k in keys))
    table = pa.Table.from_pylist(ordered, schema=SCHEMAS[name])
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_shard(output: str, name: str, index: int, num_shards: int, rows: Iterable[dict[str, Any]]) -> int:
    """Write one shard atomically; shard 0 also removes shards of an earlier, other shard count."""
    written = storage.write_bytes(shard_uri(output, name, index, num_shards), encode_shard(rows, name))
    if index == 0:
        suffix = f"-of-{num_shards:05d}.parquet"
        for stale in storage.glob(schemas.table_prefix(output, name) + "-*.parquet"):
            if not stale.endswith(suffix):
                storage.remove(stale)
    return written


def read_table(output: str, name: str) -> pa.Table:
    """All shards of OUT/summary/{name}-*.parquet as one table with the contract's schema."""
    files = storage.glob(schemas.table_prefix(output, name) + "-*.parquet")
    if not files:
        return SCHEMAS[name].empty_table()
    return pa.concat_tables(pq.read_table(io.BytesIO(storage.read_bytes(f)), schema=SCHEMAS[name]) for f in files)
