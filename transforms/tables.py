"""Write tables as deterministic shards: rows hashed to a fixed number of shards, each shard
sorted and written atomically by one DoFn call (dicom_io/tables.py).

Not beam.io.WriteToParquet: its row order depends on bundling, so a retried or resumed run
would not reproduce the same bytes. Here a shard's content depends only on its rows.
"""

from __future__ import annotations

from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from dicom_io import schemas
from dicom_io.tables import SORT_KEYS, shard_file_uri, shard_of_key, summary_encoder, write_shard_file
from transforms.headers import NAMESPACE


class KeyByShardFn(beam.DoFn):
    """row -> (CRC32(row[key_field]) % num_shards, row)."""

    def __init__(self, key_field: str, num_shards: int):
        super().__init__()
        self._key_field, self._num_shards = key_field, num_shards

    def process(self, row):
        yield shard_of_key(row.get(self._key_field), self._num_shards), row


class WriteShardFilesFn(beam.DoFn):
    """(shard index, {"rows": [...], "index": [...]}) -> URIs written, one file per format."""

    def __init__(self, prefix: str, num_shards: int, formats: Sequence[tuple[str, Callable]]):
        super().__init__()
        self._prefix, self._num_shards, self._formats = prefix, num_shards, tuple(formats)

    def setup(self):
        self.bytes_written = Metrics.counter(NAMESPACE, "bytes_written")

    def process(self, element):
        index, grouped = element
        rows = list(grouped["rows"])
        for ext, encode in self._formats:
            self.bytes_written.inc(write_shard_file(self._prefix, ext, index, self._num_shards, encode(rows)))
            yield shard_file_uri(self._prefix, index, self._num_shards, ext)


class WriteShardedFiles(beam.PTransform):
    """rows -> {prefix}-IIIII-of-NNNNN.{ext} per (ext, encode(rows) -> bytes); every shard written, even empty."""

    def __init__(self, prefix: str, formats: Sequence[tuple[str, Callable]], key_field: str, num_shards: int = 1):
        super().__init__()
        self._prefix, self._formats, self._key_field = prefix, tuple(formats), key_field
        self._num_shards = max(1, num_shards)

    def expand(self, rows):
        keyed = rows | "KeyByShard" >> beam.ParDo(KeyByShardFn(self._key_field, self._num_shards))
        every_shard = rows.pipeline | "ShardIndexes" >> beam.Create([(i, None) for i in range(self._num_shards)])
        return (
            {"rows": keyed, "index": every_shard}
            | "GroupByShard" >> beam.CoGroupByKey()
            | "WriteShard" >> beam.ParDo(WriteShardFilesFn(self._prefix, self._num_shards, self._formats))
        )


class WriteTable(WriteShardedFiles):
    """Summary rows -> OUT/summary/{name}-IIIII-of-NNNNN.parquet."""

    def __init__(self, output: str, name: str, num_shards: int = 1):
        super().__init__(schemas.table_prefix(output, name), [("parquet", summary_encoder(name))],
                         SORT_KEYS[name][0], num_shards)


class WriteSummaryTables(beam.PTransform):
    """{"series": rows, "instances": rows} -> the two summary tables."""

    def __init__(self, output: str, num_shards: int = 1):
        super().__init__()
        self._output = output
        self._num_shards = num_shards

    def expand(self, tables):
        series = tables["series"] | "SeriesTable" >> WriteTable(
            self._output, schemas.SUMMARY_SERIES_PREFIX, self._num_shards)
        instances = tables["instances"] | "InstancesTable" >> WriteTable(
            self._output, schemas.SUMMARY_INSTANCES_PREFIX, self._num_shards)
        return {"series": series, "instances": instances}
