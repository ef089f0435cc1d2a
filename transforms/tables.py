"""Write tables as deterministic shards: rows hashed to shards, each shard sorted and written
atomically by one DoFn call (dicom_io/tables.py).

Not beam.io.WriteToParquet: its row order depends on bundling, so a retried or resumed run
would not reproduce the same bytes. Here a shard's content depends only on its rows. The shard
count is forced (--table_shards) or planned in the graph from the rows per hash bucket, a bounded
aggregate (--rows_per_shard), and reaches the keying step as a singleton side input.
"""

from __future__ import annotations

import collections
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton

from dicom_io import schemas
from dicom_io.tables import (SORT_KEYS, ShardPlan, TableSharding, bucket_of_key, forced_plan, plan_shards,
                             shard_file_uri, summary_encoder, write_shard_file)
from transforms.headers import NAMESPACE


def bucket_of_row(row: dict, key_field: str) -> int:
    return bucket_of_key(row.get(key_field))


class CountsCombineFn(beam.CombineFn):
    """A bounded {key: count} aggregate; subclasses say what one element adds (`add_input`)."""

    def create_accumulator(self):
        return collections.Counter()

    def merge_accumulators(self, accumulators):
        merged = collections.Counter()
        for counts in accumulators:
            merged.update(counts)
        return merged

    def extract_output(self, counts):
        return dict(counts)


class BucketCountsFn(CountsCombineFn):
    """(bucket, rows) pairs -> {bucket: rows}: at most BUCKETS entries, whatever the table's size."""

    def add_input(self, counts, pair):
        counts[pair[0]] += pair[1]
        return counts


class PlanShards(beam.PTransform):
    """Rows -> one ShardPlan (a singleton): forced by `sharding.num_shards`, else planned from the rows per
    bucket, counted per bucket key first (spread over workers), then gathered (at most BUCKETS pairs)."""

    def __init__(self, key_field: str, sharding: TableSharding):
        super().__init__()
        self._key_field, self._sharding = key_field, sharding

    def expand(self, rows):
        if self._sharding.num_shards:
            return rows.pipeline | "ForcedShards" >> beam.Create([forced_plan(self._sharding.num_shards)])
        return (rows
                | "BucketOf" >> beam.Map(bucket_of_row, self._key_field)
                | "CountPerBucket" >> beam.combiners.Count.PerElement()
                | "AllBuckets" >> beam.CombineGlobally(BucketCountsFn())
                | "Plan" >> beam.Map(plan_shards, self._sharding.rows_per_shard))


class KeyByShardFn(beam.DoFn):
    """row -> ((shard index, shard count), row), the shard from the plan."""

    def __init__(self, key_field: str):
        super().__init__()
        self._key_field = key_field

    def process(self, row, plan: ShardPlan):
        yield (plan.shard_of(row.get(self._key_field)), plan.num_shards), row


def every_shard(plan: ShardPlan) -> list[tuple[tuple[int, int], None]]:
    """One empty element per shard of the plan, so that every shard file is written, even empty."""
    return [((index, plan.num_shards), None) for index in range(plan.num_shards)]


class WriteShardFilesFn(beam.DoFn):
    """((shard index, count), {"rows": [...], "index": [...]}) -> URIs written, one file per format.

    With a `context` (a bounded singleton side input, e.g. the wide table's columns) each format
    encodes as encode(rows, context)."""

    def __init__(self, prefix: str, formats: Sequence[tuple[str, Callable]]):
        super().__init__()
        self._prefix, self._formats = prefix, tuple(formats)

    def setup(self):
        self.bytes_written = Metrics.counter(NAMESPACE, "bytes_written")

    def process(self, element, context=None):
        (index, num_shards), grouped = element
        rows = list(grouped["rows"])
        for ext, encode in self._formats:
            data = encode(rows) if context is None else encode(rows, context)
            self.bytes_written.inc(write_shard_file(self._prefix, ext, index, num_shards, data))
            yield shard_file_uri(self._prefix, index, num_shards, ext)


class WriteShardedFiles(beam.PTransform):
    """rows -> {prefix}-IIIII-of-NNNNN.{ext} per (ext, encode(rows) -> bytes); every shard written, even empty."""

    def __init__(self, prefix: str, formats: Sequence[tuple[str, Callable]], key_field: str,
                 sharding: TableSharding = TableSharding(), context: beam.PCollection | None = None):
        super().__init__()
        self._prefix, self._formats, self._key_field = prefix, tuple(formats), key_field
        self._sharding, self._context = sharding, context

    def expand(self, rows):
        plan = rows | "PlanShards" >> PlanShards(self._key_field, self._sharding)
        keyed = rows | "KeyByShard" >> beam.ParDo(KeyByShardFn(self._key_field), plan=AsSingleton(plan))
        indexes = plan | "ShardIndexes" >> beam.FlatMap(every_shard)
        context = {} if self._context is None else {"context": AsSingleton(self._context)}
        return (
            {"rows": keyed, "index": indexes}
            | "GroupByShard" >> beam.CoGroupByKey()
            | "WriteShard" >> beam.ParDo(WriteShardFilesFn(self._prefix, self._formats), **context)
        )


class WriteTable(WriteShardedFiles):
    """Summary rows -> OUT/summary/{name}/{name}-IIIII-of-NNNNN.parquet."""

    def __init__(self, output: str, name: str, sharding: TableSharding = TableSharding()):
        super().__init__(schemas.table_prefix(output, name), [("parquet", summary_encoder(name))],
                         SORT_KEYS[name][0], sharding)


class WriteSummaryTables(beam.PTransform):
    """{"series": rows, "instances": rows} -> the two summary tables."""

    def __init__(self, output: str, sharding: TableSharding = TableSharding()):
        super().__init__()
        self._output = output
        self._sharding = sharding

    def expand(self, tables):
        series = tables["series"] | "SeriesTable" >> WriteTable(
            self._output, schemas.SUMMARY_SERIES_PREFIX, self._sharding)
        instances = tables["instances"] | "InstancesTable" >> WriteTable(
            self._output, schemas.SUMMARY_INSTANCES_PREFIX, self._sharding)
        return {"series": series, "instances": instances}
