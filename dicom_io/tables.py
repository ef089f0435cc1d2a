"""Deterministic sharded files: every table the pipelines write, and reading them back.

Rows go to a shard by CRC32 of their key (Python's hash is salted) and are sorted within it,
so the same rows always give byte-identical files, whatever order workers produced them in.
Every shard is written, even empty, atomically; shard 0 removes shards of an earlier run with
another shard count.

The shard count is either forced (`TableSharding.num_shards`) or planned from the rows: keys are
hashed into BUCKETS fine buckets, the rows per bucket counted (a bounded aggregate), and runs of
consecutive buckets packed into shards of at most `rows_per_shard` rows (`plan_shards`). The plan
depends only on the rows, so the same rows give the same shards.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

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


BUCKETS = 1 << 16  # fine hash buckets a planned table is cut from: a shard holds whole buckets
ROWS_PER_SHARD = 500_000  # default cap: one worker sorts and encodes one shard in memory


@dataclass(frozen=True)
class TableSharding:
    """How many files a table gets: `num_shards` forces a count (hash modulo N); otherwise as few
    as keep every shard at or under `rows_per_shard` rows."""

    num_shards: int | None = None
    rows_per_shard: int = ROWS_PER_SHARD


@dataclass(frozen=True)
class ShardPlan:
    """Where a key's rows go. Planned: shard i holds buckets [bounds[i-1], bounds[i]); forced: CRC32 % N."""

    num_shards: int
    bounds: tuple[int, ...] = ()
    forced: bool = False

    def shard_of(self, key: Any) -> int:
        if self.forced:
            return shard_of_key(key, self.num_shards)
        return bisect.bisect_right(self.bounds, bucket_of_key(key))


def bucket_of_key(key: Any) -> int:
    """Stable fine bucket of a key (what a planned table counts and cuts)."""
    return shard_of_key(key, BUCKETS)


def forced_plan(num_shards: int) -> ShardPlan:
    return ShardPlan(max(1, num_shards), forced=True)


def plan_shards(bucket_counts: Mapping[int, int], rows_per_shard: int) -> ShardPlan:
    """Pack consecutive buckets into shards of at most ceil(total / ceil(total / rows_per_shard)) rows.

    No shard exceeds `rows_per_shard` unless one bucket alone does (many rows of one key); an empty
    table is one empty shard.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    total = sum(bucket_counts.values())
    target = math.ceil(total / max(1, math.ceil(total / rows_per_shard)))
    bounds, filled = [], 0
    for bucket in sorted(bucket_counts):
        count = bucket_counts[bucket]
        if filled and filled + count > target:
            bounds.append(bucket)
            filled = 0
        filled += count
    return ShardPlan(len(bounds) + 1, tuple(bounds))


def shard_file_uri(prefix: str, index: int, num_shards: int, ext: str) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.{ext}"


def sort_rows(rows: Iterable[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: tuple(str(r.get(k) or "") for k in keys))


def encode_parquet(rows: Iterable[dict[str, Any]], schema: pa.Schema, sort_keys: Sequence[str]) -> bytes:
    """Parquet bytes of `rows` sorted by `sort_keys`: same rows, same bytes."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(sort_rows(rows, sort_keys), schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


WIDE_ROW_WEIGHT = 20  # a wide tags row holds every element of a file: its shards hold 20x fewer rows


def encode_wide_tags(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> bytes:
    """A wide tags shard: every column of the union (`columns`), so all shards share one schema."""
    return encode_parquet(rows, schemas.tags_schema(columns), ("uri",))


def wide_sharding(sharding: TableSharding) -> TableSharding:
    """The sharding of the wide tags table: the same forced count, or WIDE_ROW_WEIGHT times fewer rows."""
    return TableSharding(sharding.num_shards, max(1, sharding.rows_per_shard // WIDE_ROW_WEIGHT))


def encode_jsonl(rows: Iterable[dict[str, Any]], sort_keys: Sequence[str]) -> bytes:
    """JSON Lines of `rows` sorted by `sort_keys`, keys sorted within each object."""
    lines = (json.dumps(r, sort_keys=True, ensure_ascii=False) for r in sort_rows(rows, sort_keys))
    return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")


def legacy_prefix(prefix: str) -> str | None:
    """Where contract 1 put the shards of a table now in its own folder: FOLDER/name/name -> FOLDER/name."""
    parent, _, name = prefix.rpartition("/")
    return parent if parent.endswith("/" + name) else None


def write_shard_file(prefix: str, ext: str, index: int, num_shards: int, data: bytes) -> int:
    """Write one shard atomically; shard 0 also removes shards of an earlier, other shard count, and the
    same table's shards in the contract-1 layout (beside its folder), so no glob ever sees both."""
    written = storage.write_bytes(shard_file_uri(prefix, index, num_shards, ext), data)
    if index == 0:
        for stale in storage.glob(f"{prefix}-*.{ext}"):
            if not stale.endswith(f"-of-{num_shards:05d}.{ext}"):
                storage.remove(stale)
        legacy = legacy_prefix(prefix)
        for stale in storage.glob(f"{legacy}-*-of-*.{ext}") if legacy else ():
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


def stream_parquet(fp) -> pq.ParquetFile:
    """A Parquet file too big to copy whole (a manifest), read from a Python file in the calling
    thread only: no pre-buffering, and callers read with use_threads=False (see read_parquet)."""
    return pq.ParquetFile(fp, pre_buffer=False)


def decode_parquet(data: bytes, schema: pa.Schema | None = None) -> pa.Table:
    """A Parquet file's bytes as a table, decoded from an Arrow-owned copy in this thread (see read_parquet)."""
    sink = pa.BufferOutputStream()
    sink.write(data)
    # ParquetFile, not pq.read_table: read_table builds a ParquetDataset, whose first use imports
    # pyarrow.dataset (0.3-0.5 s of every job's end-of-run summary)
    table = pq.ParquetFile(pa.BufferReader(sink.getvalue()), pre_buffer=False).read(use_threads=False)
    return table if schema is None else conform(table, schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in its order and types: a column the file lacks is
    all null (an older shard), one the schema lacks is left out (as a dataset read with a schema does)."""
    if table.schema.equals(schema):
        return table
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


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
    """All shards of OUT/summary/{name}/{name}-*.parquet as one table with the contract's schema."""
    return read_shards(schemas.table_prefix(output, name), SCHEMAS[name])


# ---- the slices CSV (verify, dataset and export jobs read it) --------------------------------

_SLICE_INTS, _SLICE_FLOATS = ("z_index", "t_index", "instance_number", "frame_index"), ("ipp_x", "ipp_y", "ipp_z")


def _typed(value: str | None, cast: type) -> Any:
    return None if value is None or value == "" else cast(value)


def parse_slices_csv(data: bytes) -> list[dict[str, Any]]:
    """Rows of slices/{key}.csv with schemas.SLICE_COLUMNS typed (ints, floats, None when empty).

    Columns beyond schemas.SLICE_COLUMNS (e.g. a later addition) are kept as strings.
    """
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8", "surrogateescape"))))
    for row in rows:
        for name in _SLICE_INTS:
            row[name] = _typed(row.get(name), int)
        row["t_index"] = row["t_index"] or 0  # outputs written before 4D have no t_index
        for name in _SLICE_FLOATS:
            row[name] = _typed(row.get(name), float)
    return rows
