"""The manifest crawl as Beam steps: list with mtimes, reuse an earlier run, read headers, write tables.

ListFiles | ReuseUnchanged | CrawlHeaders, then SummarizeSeries, WriteShards and the table writers.
Domain logic lives in dicom_io.manifest and dicom_io.tags; these classes only wire it.
"""

from __future__ import annotations

import functools

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton, TaggedOutput

from dicom_io import manifest, schemas, storage, tags
from dicom_io.deid import DeidSettings
from dicom_io.errors import DicomflowError
from dicom_io.inputs import resolve_input
from dicom_io.manifest import CrawlSettings
from dicom_io.tables import TableSharding, encode_parquet, encode_wide_tags, wide_sharding
from transforms.bundles import PooledFn
from transforms.counters import NAMESPACE, Counter, CountFn
from transforms.inputs import ListInputs, MatchSpread
from transforms.tables import WriteShardedFiles

TAGS = "tags"


# ---- listing ----------------------------------------------------------------------------------

def listing_of(metadata) -> tuple[str, int, float | None]:
    """(uri, size, mtime) from Beam's match metadata."""
    return metadata.path, metadata.size_in_bytes, metadata.last_updated_in_seconds


class StatFn(beam.DoFn):
    """(uri, size or None, label) from a manifest -> (uri, size, mtime); a missing file keeps Nones (read reports it)."""

    def setup(self):
        self.missing = Metrics.counter(NAMESPACE, "files_missing_at_listing")

    def process(self, element: tuple[str, int | None, str | None]):
        uri = element[0]
        try:
            size, mtime = storage.file_info(uri)
        except (OSError, DicomflowError):
            self.missing.inc()
            size, mtime = None, None
        yield uri, size, mtime


class ListFiles(beam.PTransform):
    """PBegin -> (uri, size, mtime) per input file: MatchFiles metadata, or a stat per manifest URI."""

    def __init__(self, input_uri: str, manifest_column: str = "uri"):
        super().__init__()
        self._input_uri = input_uri
        self._manifest_column = manifest_column

    def expand(self, pbegin):
        spec = resolve_input(self._input_uri)
        if spec.kind == "manifest":
            return (pbegin
                    | "ListManifestUris" >> ListInputs(self._input_uri, self._manifest_column)
                    | "Stat" >> beam.ParDo(StatFn()))
        return (pbegin
                | "MatchFiles" >> MatchSpread(spec.pattern)
                | "PathSizeMtime" >> beam.Map(listing_of)
                | "CountListed" >> beam.ParDo(CountFn("files_listed"))
                | "Spread" >> beam.Reshuffle())


# ---- reuse of an earlier run ------------------------------------------------------------------

def key_by_uri(row: dict) -> tuple[str, dict]:
    return row["uri"], row


def key_listing(listing: tuple[str, int | None, float | None]) -> tuple[str, tuple]:
    return listing[0], listing


def keyed_entry(row: dict) -> tuple[str, tags.TagEntry]:
    return row[tags.URI_COLUMN], tags.entry_from_long_row(row)


class ReuseOrReadFn(beam.DoFn):
    """(uri, {listed, previous, tags}) -> the earlier row (main) and its elements, or the listing to read."""

    TO_READ = "to_read"

    def __init__(self, all_tags: bool):
        super().__init__()
        self._all_tags = all_tags

    def setup(self):
        self.reused = Metrics.counter(NAMESPACE, "files_reused")

    def process(self, element):
        uri, grouped = element
        listed, previous, entries = list(grouped["listed"]), list(grouped["previous"]), list(grouped[TAGS])
        if not listed:  # gone since the earlier run: not in the new index
            return
        _, size, mtime = listed[0]
        row = previous[0] if previous else None
        if manifest.can_reuse(row, size, mtime, len(entries), self._all_tags):
            self.reused.inc()
            yield row
            if self._all_tags and entries:
                yield TaggedOutput(TAGS, (uri, entries))
        else:
            yield TaggedOutput(self.TO_READ, listed[0])


class ReuseUnchanged(beam.PTransform):
    """(uri, size, mtime) -> {"to_read": listings, "rows": reused rows, "tags": reused (uri, entries)}."""

    def __init__(self, settings: CrawlSettings):
        super().__init__()
        self._settings = settings

    def expand(self, listed):
        s = self._settings
        if not s.previous:
            nothing = listed.pipeline | "NothingToReuse" >> beam.Create([])
            return {"to_read": listed, "rows": nothing, TAGS: nothing}
        pattern = schemas.manifest_prefix(s.previous, schemas.MANIFEST_INSTANCES_PREFIX) + "-*.parquet"
        previous = (listed.pipeline
                    | "ReadPreviousInstances" >> beam.io.ReadFromParquet(pattern)
                    | "KeyPreviousRows" >> beam.Map(key_by_uri))
        previous_tags = listed.pipeline | "NoPreviousTags" >> beam.Create([])
        if s.all_tags and s.previous_tags:
            tags_pattern = schemas.manifest_prefix(s.previous, schemas.TAGS_LONG_PREFIX) + "-*.parquet"
            previous_tags = (listed.pipeline
                             | "ReadPreviousTags" >> beam.io.ReadFromParquet(tags_pattern)
                             | "KeyPreviousTags" >> beam.Map(keyed_entry))
        results = (
            {"listed": listed | "KeyListing" >> beam.Map(key_listing), "previous": previous, TAGS: previous_tags}
            | "JoinByUri" >> beam.CoGroupByKey()
            | "ReuseOrRead" >> beam.ParDo(ReuseOrReadFn(s.all_tags)).with_outputs(
                ReuseOrReadFn.TO_READ, TAGS, main="rows")
        )
        return {"to_read": results[ReuseOrReadFn.TO_READ], "rows": results.rows, TAGS: results[TAGS]}


# ---- headers ----------------------------------------------------------------------------------

class CrawlHeaderFn(PooledFn):
    """(uri, size, mtime) -> one instances row (main) and, with all_tags, (uri, entries) (tagged).

    `processes` > 1 (local runs): files are parsed in batches of BATCH in forked processes
    (dicom_io.workers, transforms.bundles.PooledFn).
    """

    BATCH = 64
    work = staticmethod(manifest.crawl_batch)

    def __init__(self, all_tags: bool, max_items: int | None, deid: DeidSettings | None = None,
                 processes: int = 1):
        super().__init__(processes)
        self._all_tags = all_tags
        self._max_items = max_items
        self._deid_settings = deid

    def setup(self):
        super().setup()
        self.parsed = Counter("headers_parsed", shown_as="files_read")
        self.failed = Metrics.counter(NAMESPACE, "files_failed")
        self.no_pixels = Metrics.counter(NAMESPACE, "files_without_pixel_data")

    def _task(self, batch: list) -> tuple:
        return batch, self._all_tags, self._max_items, self._deid_settings

    def _outputs(self, crawled_files):
        for crawled in crawled_files:
            self.parsed.inc()
            if not crawled.row["readable"]:
                self.failed.inc()
            elif crawled.row["reason"]:
                self.no_pixels.inc()
            yield crawled.row
            if crawled.tags is not None:
                yield TaggedOutput(TAGS, (crawled.row["uri"], crawled.tags))


class CrawlHeaders(beam.PTransform):
    """(uri, size, mtime) -> {"rows": instances rows, "tags": (uri, entries)}."""

    def __init__(self, all_tags: bool = False, max_items: int | None = None, deid: DeidSettings | None = None,
                 processes: int = 1):
        super().__init__()
        self._all_tags = all_tags
        self._max_items = max_items
        self._deid = deid
        self._processes = processes

    def expand(self, files):
        parse = CrawlHeaderFn(self._all_tags, self._max_items, self._deid, self._processes)
        results = files | "ParseHeader" >> beam.ParDo(parse).with_outputs(
            TAGS, main="rows")
        return {"rows": results.rows, TAGS: results[TAGS]}


class CrawlManifest(beam.PTransform):
    """PBegin -> {"instances": one row per input file, "tags": (uri, entries) per parsed file}."""

    def __init__(self, settings: CrawlSettings):
        super().__init__()
        self._settings = settings

    def expand(self, pbegin):
        s = self._settings
        listed = pbegin | "ListFiles" >> ListFiles(s.input_uri, s.manifest_column)
        split = listed | "ReuseUnchanged" >> ReuseUnchanged(s)
        crawled = split["to_read"] | "CrawlHeaders" >> CrawlHeaders(s.all_tags, s.tags_max_items, s.deid, s.processes)
        instances = (split["rows"], crawled["rows"]) | "AllInstances" >> beam.Flatten()
        entries = (split[TAGS], crawled[TAGS]) | "AllTags" >> beam.Flatten()
        return {"instances": instances, TAGS: entries}


# ---- series and shards ------------------------------------------------------------------------

def is_readable(row: dict) -> bool:
    return bool(row["readable"])


def is_unreadable(row: dict) -> bool:
    return not row["readable"]


def key_by_series(row: dict) -> tuple[str, dict]:
    return manifest.series_group(row), row


def series_row_of(element: tuple[str, manifest.SeriesSummary]) -> dict:
    return manifest.series_row(*element)


class SeriesSummaryFn(beam.CombineFn):
    """Instances rows of one series -> SeriesSummary (counts, bytes, orientations)."""

    def create_accumulator(self):
        return manifest.SeriesSummary()

    def add_input(self, summary, row):
        return manifest.add_instance(summary, row)

    def merge_accumulators(self, summaries):
        return manifest.merge_summaries(summaries)

    def extract_output(self, summary):
        return summary


class SummarizeSeries(beam.PTransform):
    """Readable instances rows -> one series row per SeriesInstanceUID (as convert groups them)."""

    def expand(self, rows):
        return (rows
                | "KeyBySeries" >> beam.Map(key_by_series)
                | "CombineSeries" >> beam.CombinePerKey(SeriesSummaryFn())
                | "SeriesRow" >> beam.Map(series_row_of))


def series_bytes(row: dict) -> tuple[str, int]:
    return row["series_key"], row["n_bytes"]


def bytes_of(item: tuple[str, int]) -> int:
    return item[1]


def shard_of_file(row: dict, assignment: manifest.ShardAssignment) -> tuple[int, tuple]:
    line = manifest.shard_row(row)
    return assignment.shard_of(line[2]), line


def remove_stale_shards(written: list[str], output: str) -> list[str]:
    """Delete series_shard_XX.csv files that this run did not write (an earlier run had more shards)."""
    existing = storage.glob(storage.join(output, schemas.SHARDS_DIR, "series_shard_*.csv"))
    stale = manifest.stale_shards(existing, written)
    for uri in stale:
        storage.remove(uri)
    return stale


class WriteShardFn(beam.DoFn):
    """(shard, file lines) -> OUT/shards/series_shard_XX.csv (sorted, written atomically); yields its URI."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def setup(self):
        self.written = Metrics.counter(NAMESPACE, "shards_written")

    def process(self, element):
        shard, lines = element
        ordered = sorted((line for line in lines if line is not None), key=lambda line: (line[2], line[0]))
        uri = schemas.shard_csv_uri(self._output, shard)
        storage.write_bytes(uri, manifest.csv_text(schemas.SHARD_COLUMNS, ordered).encode("utf-8"))
        self.written.inc()
        yield uri


class WriteShards(beam.PTransform):
    """{"series": series rows, "instances": rows} -> num_shards CSVs of readable files, series whole, bytes balanced
    (the HEAVY_SERIES largest series placed largest first, the rest by hash into the room left: bounded memory)."""

    def __init__(self, output: str, num_shards: int):
        super().__init__()
        self._output = output
        self._num_shards = num_shards

    def expand(self, tables):
        sized = tables["series"] | "SeriesBytes" >> beam.Map(series_bytes)
        total = sized | "BytesOnly" >> beam.Map(bytes_of) | "TotalBytes" >> beam.CombineGlobally(sum)
        assignment = (sized
                      | "HeaviestSeries" >> beam.combiners.Top.Smallest(manifest.HEAVY_SERIES, key=manifest.heavy_order)
                      | "AssignShards" >> beam.Map(manifest.plan_assignment, AsSingleton(total), self._num_shards))
        files = (tables["instances"]
                 | "Readable" >> beam.Filter(is_readable)
                 | "ShardOfFile" >> beam.Map(shard_of_file, assignment=AsSingleton(assignment)))
        every_shard = tables["instances"].pipeline | "EveryShard" >> beam.Create(
            [(shard, None) for shard in range(self._num_shards)])
        return ((files, every_shard)
                | "WithEmptyShards" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShardCsv" >> beam.ParDo(WriteShardFn(self._output))
                | "AllWritten" >> beam.combiners.ToList()
                | "RemoveStaleShards" >> beam.Map(remove_stale_shards, self._output))


# ---- table writers ----------------------------------------------------------------------------

class WriteManifestTable(WriteShardedFiles):
    """Rows (dicts matching `schema`) -> OUT/{name}-IIIII-of-NNNNN.parquet, deterministic shards
    sorted by `sort_keys` (the first one also picks the shard), like every dicomflow table."""

    def __init__(self, output: str, name: str, schema: pa.Schema, sharding: TableSharding = TableSharding(),
                 sort_keys: tuple[str, ...] = ("uri",)):
        encoder = functools.partial(encode_parquet, schema=schema, sort_keys=sort_keys)
        super().__init__(schemas.manifest_prefix(output, name), [("parquet", encoder)], sort_keys[0], sharding)


class WriteUnreadable(beam.PTransform):
    """Instances rows -> OUT/unreadable-*.csv (uri,size_bytes,reason) of the files that gave no record."""

    def __init__(self, output: str, sharding: TableSharding = TableSharding()):
        super().__init__()
        self._prefix = schemas.manifest_prefix(output, schemas.UNREADABLE_PREFIX)
        self._sharding = sharding

    def expand(self, rows):
        return (rows
                | "Unreadable" >> beam.Filter(is_unreadable)
                | "WriteCsv" >> WriteShardedFiles(self._prefix, (("csv", manifest.encode_unreadable),), "uri", self._sharding))


def wide_tag_row(element: tuple[str, list[tags.TagEntry]]) -> dict[str, str]:
    uri, entries = element
    return {tags.URI_COLUMN: uri, **tags.wide_row(entries)}


def long_tag_rows(element: tuple[str, list[tags.TagEntry]]) -> list[dict]:
    return tags.long_rows(*element)


class ColumnUnionFn(beam.CombineFn):
    """Wide rows -> sorted tuple of every tag column any file has (the shared schema)."""

    def create_accumulator(self):
        return set()

    def add_input(self, names, row):
        names.update(row)
        names.discard(tags.URI_COLUMN)
        return names

    def merge_accumulators(self, accumulators):
        return set().union(*accumulators)

    def extract_output(self, names):
        return tuple(sorted(names))


class WriteTagTables(beam.PTransform):
    """(uri, entries) -> OUT/tags-*.parquet (wide, union of columns) and OUT/tags_long-*.parquet."""

    def __init__(self, output: str, sharding: TableSharding = TableSharding()):
        super().__init__()
        self._output = output
        self._sharding = sharding

    def expand(self, entries):
        wide = entries | "WideRow" >> beam.Map(wide_tag_row)
        columns = wide | "ColumnUnion" >> beam.CombineGlobally(ColumnUnionFn())
        wide_files = wide | "WriteWide" >> WriteShardedFiles(
            schemas.manifest_prefix(self._output, schemas.TAGS_PREFIX), (("parquet", encode_wide_tags),), "uri",
            wide_sharding(self._sharding), context=columns)
        long_files = (entries
                      | "LongRows" >> beam.FlatMap(long_tag_rows)
                      | "WriteLong" >> WriteManifestTable(self._output, schemas.TAGS_LONG_PREFIX,
                                                          schemas.TAGS_LONG_SCHEMA, self._sharding,
                                                          ("uri", "column")))
        return {"wide": wide_files, "long": long_files}


class WriteManifest(beam.PTransform):
    """{"instances", "tags"} -> every manifest output under OUT (shards and tags when asked)."""

    def __init__(self, output: str, *, sharding: TableSharding = TableSharding(), num_shards: int | None = None,
                 all_tags: bool = False):
        super().__init__()
        self._output = output
        self._sharding = sharding
        self._num_shards = num_shards
        self._all_tags = all_tags

    def expand(self, crawled):
        instances = crawled["instances"]
        series = (instances
                  | "Readable" >> beam.Filter(is_readable)
                  | "SummarizeSeries" >> SummarizeSeries())
        written = {
            "instances": instances | "InstancesTable" >> WriteManifestTable(
                self._output, schemas.MANIFEST_INSTANCES_PREFIX, schemas.MANIFEST_INSTANCES_SCHEMA, self._sharding),
            "series": series | "SeriesTable" >> WriteManifestTable(
                self._output, schemas.MANIFEST_SERIES_PREFIX, schemas.MANIFEST_SERIES_SCHEMA, self._sharding,
                ("series_key", "series_instance_uid")),
            "unreadable": instances | "UnreadableCsv" >> WriteUnreadable(self._output, self._sharding),
        }
        if self._num_shards:
            written["shards"] = {"series": series, "instances": instances} | "WriteShards" >> WriteShards(
                self._output, self._num_shards)
        if self._all_tags:
            written[TAGS] = crawled[TAGS] | "TagTables" >> WriteTagTables(self._output, self._sharding)
        return written
