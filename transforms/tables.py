"""Write the summary tables: rows hashed to a fixed number of shards, each sorted and written atomically.

Not beam.io.WriteToParquet: its row order depends on bundling, so a retried or resumed
run would not reproduce the same bytes. Here a shard's content depends only on its rows.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from dicom_io import schemas
from dicom_io.tables import shard_of, write_shard
from transforms.headers import NAMESPACE


class KeyByShardFn(beam.DoFn):
    """row -> (shard index, row)."""

    def __init__(self, name: str, num_shards: int):
        super().__init__()
        self._name, self._num_shards = name, num_shards

    def process(self, row):
        yield shard_of(row, self._name, self._num_shards), row


class WriteShardFn(beam.DoFn):
    """(shard index, {"rows": [...], "index": [...]}) -> URI of the written shard."""

    def __init__(self, output: str, name: str, num_shards: int):
        super().__init__()
        self._output, self._name, self._num_shards = output, name, num_shards

    def setup(self):
        self.bytes_written = Metrics.counter(NAMESPACE, "bytes_written")

    def process(self, element):
        index, grouped = element
        self.bytes_written.inc(write_shard(self._output, self._name, index, self._num_shards, grouped["rows"]))
        yield index


class WriteTable(beam.PTransform):
    """Rows (dicts matching the table's schema) -> OUT/summary/{name}-IIIII-of-NNNNN.parquet."""

    def __init__(self, output: str, name: str, num_shards: int = 1):
        super().__init__()
        self._output, self._name, self._num_shards = output, name, max(1, num_shards)

    def expand(self, rows):
        keyed = rows | "KeyByShard" >> beam.ParDo(KeyByShardFn(self._name, self._num_shards))
        every_shard = rows.pipeline | "ShardIndexes" >> beam.Create([(i, None) for i in range(self._num_shards)])
        return (
            {"rows": keyed, "index": every_shard}
            | "GroupByShard" >> beam.CoGroupByKey()
            | "WriteShard" >> beam.ParDo(WriteShardFn(self._output, self._name, self._num_shards))
        )


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
