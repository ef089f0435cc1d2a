"""Deterministic sharded files: every table the pipelines write, and reading them back.

Rows go to a shard by CRC32 of their key (Python's hash is salted) and are sorted within it,
so the same rows always give byte-identical files, whatever order workers produced them in.
Every shard is written, even empty, atomically; shard 0 removes shards of an earlier run with
another shard count.
"""

from __future__ import annotations

import io
import json
import zlib
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from dicom_io import schemas, storage

Encoder = Callable[[list[dict[str, Any]]], bytes]

SCHEMAS = {schemas.SUMMARY_SERIES_PREFIX: schemas.SERIES_SCHEMA,
           schemas.SUMMARY_INSTANCES_PREFIX: schemas.INSTANCES_SCHEMA}
SORT_KEYS = {schemas.SUMMARY_SERIES_PREFIX: ("series_key", "series_instance_uid"),
             schemas.SUMMARY_INSTANCES_PREFIX: ("source_uri", "series_key")}


def shard_of_key(key: Any, num_shards: int) -> int:
    """Stable shard index of a key."""
    return zlib.crc32(str(key or "").encode("utf-8", "surrogatepass")) % num_shards


def shard_file_uri(prefix: str, index: int, num_shards: int, ext: str) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.{ext}"


def sort_rows(rows: Iterable[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: tuple(str(r.get(k) or "") for k in keys))


def encode_parquet(rows: Iterable[dict[str, Any]], schema: pa.Schema, sort_keys: Sequence[str]) -> bytes:
    """Parquet bytes of `rows` sorted by `sort_keys`: same rows, same bytes."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(sort_rows(rows, sort_keys), schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


def encode_jsonl(rows: Iterable[dict[str, Any]], sort_keys: Sequence[str]) -> bytes:
    """JSON Lines of `rows` sorted by `sort_keys`, keys sorted within each object."""
    lines = (json.dumps(r, sort_keys=True, ensure_ascii=False) for r in sort_rows(rows, sort_keys))
    return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")


def write_shard_file(prefix: str, ext: str, index: int, num_shards: int, data: bytes) -> int:
    """Write one shard atomically; shard 0 also removes shards of an earlier, other shard count."""
    written = storage.write_bytes(shard_file_uri(prefix, index, num_shards, ext), data)
    if index == 0:
        for stale in storage.glob(f"{prefix}-*.{ext}"):
            if not stale.endswith(f"-of-{num_shards:05d}.{ext}"):
                storage.remove(stale)
    return written


def read_parquet(uri: str, schema: pa.Schema | None = None) -> pa.Table:
    """One Parquet object, read whole into Arrow-owned memory, then decoded: the one way dicomflow reads Parquet.

    Not `pq.read_table(python_file)`: its pre-buffering hands buffers that wrap Python objects to Arrow's
    IO threads, and when one of those threads frees such a buffer while the interpreter exits, it must
    take the GIL, Python ends the thread, and the unwind through a C++ destructor aborts the process
    (the SIGABRT after complete runs, seen in a core dump right after the end-of-run summary read).
    """
    return decode_parquet(storage.read_bytes(uri), schema)


def decode_parquet(data: bytes, schema: pa.Schema | None = None) -> pa.Table:
    """A Parquet file's bytes as a table, decoded from an Arrow-owned copy in this thread (see read_parquet)."""
    sink = pa.BufferOutputStream()
    sink.write(data)
    return pq.read_table(pa.BufferReader(sink.getvalue()), schema=schema, pre_buffer=False)


def read_shards(prefix: str, schema: pa.Schema) -> pa.Table:
    """Every {prefix}-*.parquet shard as one table (empty with `schema` when there is none)."""
    files = storage.glob(f"{prefix}-*.parquet")
    if not files:
        return schema.empty_table()
    return pa.concat_tables(read_parquet(f, schema) for f in files)


def summary_encoder(name: str) -> Encoder:
    """The Parquet encoder of summary table `name` (series or instances)."""
    return partial(encode_parquet, schema=SCHEMAS[name], sort_keys=SORT_KEYS[name])


def read_table(output: str, name: str) -> pa.Table:
    """All shards of OUT/summary/{name}-*.parquet as one table with the contract's schema."""
    return read_shards(schemas.table_prefix(output, name), SCHEMAS[name])
