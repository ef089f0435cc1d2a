"""The verify job as Beam steps: ReadSummary | SampleSeries | GroupWithInstances | VerifySeries, CheckFiles,
WriteVerifyTables and WriteReport. The checks themselves are dicom_io.verify; the page dicom_io.report_html."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from dicom_io import report_html, report_summary, schemas, storage, verify
from dicom_io.tables import TableSharding, encode_parquet
from dicom_io.verify import VerifySettings
from transforms.dataset import ReadSummaryTable
from transforms.tables import WriteShardedFiles
from transforms.counters import LOG, NAMESPACE, Counter

VERIFY_SORT, FILES_SORT = ("series_key",), ("source_uri", "check")


def _is_converted(row: dict[str, Any]) -> bool:
    return row.get("status") == schemas.CONVERTED


def _rank(row: dict[str, Any], seed: int) -> str:
    return verify.sample_rank(row["series_key"], seed)


def _each(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows


class SampleSeries(beam.PTransform):
    """Series rows -> the `n` with the smallest sample_rank for `seed` (all rows when n is None)."""

    def __init__(self, n: int | None, seed: int = 0):
        super().__init__()
        self._n, self._seed = n, seed

    def expand(self, rows):
        if self._n is None:
            return rows
        return (rows
                | "SmallestRanks" >> beam.combiners.Top.Smallest(self._n, key=functools.partial(_rank, seed=self._seed))
                | "Each" >> beam.FlatMap(_each))


def _by_series_key(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return row["series_key"], row


def _has_series_key(row: dict[str, Any]) -> bool:
    return bool(row.get("series_key"))


class VerifySeriesFn(beam.DoFn):
    """(series_key, {"series": [row], "instances": rows}) -> one verify row per checked series.

    An unexpected error becomes the series' verify row (status failed, check "error"), never a lost series.
    """

    def __init__(self, settings: VerifySettings, decode_threads: int = 8):
        super().__init__()
        self._settings, self._decode_threads = settings, decode_threads

    def setup(self):
        self._pool = ThreadPoolExecutor(self._decode_threads, thread_name_prefix="dicomflow-verify")
        self.ok = Counter("series_verified_ok", shown_as="series_checked")
        self.failed = Counter("series_verify_failed", shown_as="series_checked")
        self.checks_failed = Metrics.counter(NAMESPACE, "verify_checks_failed")

    def process(self, element):
        _, grouped = element
        instances = list(grouped["instances"])
        for series in grouped["series"]:
            try:
                row = verify.verify_series(series, instances, self._settings, self._pool)
            except Exception as exc:  # dead letter: the series is reported failed with the error
                LOG.exception("verify %s", series["series_key"])
                row = verify.error_row(series, exc)
            (self.ok if row["status"] == schemas.OK else self.failed).inc()
            self.checks_failed.inc(row["checks_failed"])
            LOG.info("verified %s: %s (%d checks failed)", row["series_key"], row["status"], row["checks_failed"])
            yield row

    def teardown(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


class MissingFileFn(beam.DoFn):
    """Instances row -> a files failure row when its source no longer exists."""

    def setup(self):
        self.missing = Metrics.counter(NAMESPACE, "verify_files_missing")

    def process(self, row):
        for failure in verify.missing_rows(row):
            self.missing.inc()
            yield failure


def _by_source_uri(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return row["source_uri"], row


def _duplicates(element: tuple[str, Any]) -> list[dict[str, Any]]:
    uri, rows = element
    return verify.duplicate_rows(uri, list(rows))


class CheckFiles(beam.PTransform):
    """Instances rows -> files failure rows: a source_uri listed more than once, a source that is gone."""

    def expand(self, instances):
        duplicates = (instances
                      | "KeyBySourceUri" >> beam.Map(_by_source_uri)
                      | "GroupBySourceUri" >> beam.GroupByKey()
                      | "Duplicates" >> beam.FlatMap(_duplicates))
        missing = instances | "StillExists" >> beam.ParDo(MissingFileFn())
        return (duplicates, missing) | "FileFailures" >> beam.Flatten()


class VerifyOutput(beam.PTransform):
    """PBegin -> {"verify": verify rows, "files": files failure rows, "series": summary series rows,
    "instances": summary instances rows}."""

    def __init__(self, settings: VerifySettings, sample: int | None = None, seed: int = 0):
        super().__init__()
        self._settings, self._sample, self._seed = settings, sample, seed

    def expand(self, pbegin):
        out = self._settings.output
        series = pbegin | "ReadSeries" >> ReadSummaryTable(out, schemas.SUMMARY_SERIES_PREFIX)
        instances = pbegin | "ReadInstances" >> ReadSummaryTable(out, schemas.SUMMARY_INSTANCES_PREFIX)
        checked = (series
                   | "Converted" >> beam.Filter(_is_converted)
                   | "SampleSeries" >> SampleSeries(self._sample, self._seed)
                   | "KeySeries" >> beam.Map(_by_series_key))
        of_series = (instances
                     | "InSomeSeries" >> beam.Filter(_has_series_key)
                     | "KeyInstances" >> beam.Map(_by_series_key))
        verified = (
            {"series": checked, "instances": of_series}
            | "GroupWithInstances" >> beam.CoGroupByKey()
            | "VerifySeries" >> beam.ParDo(VerifySeriesFn(self._settings))
        )
        files = instances | "CheckFiles" >> CheckFiles()
        return {"verify": verified, "files": files, "series": series, "instances": instances}


class WriteVerifyTables(beam.PTransform):
    """{"verify": rows, "files": rows} -> OUT/verify/verify-*.parquet and OUT/verify/files-*.parquet."""

    def __init__(self, output: str, sharding: TableSharding = TableSharding()):
        super().__init__()
        self._output, self._sharding = output, sharding

    def expand(self, tables):
        verify_format = (("parquet", functools.partial(encode_parquet, schema=schemas.VERIFY_SCHEMA,
                                                       sort_keys=VERIFY_SORT)),)
        files_format = (("parquet", functools.partial(encode_parquet, schema=schemas.VERIFY_FILES_SCHEMA,
                                                      sort_keys=FILES_SORT)),)
        written_verify = tables["verify"] | "VerifyTable" >> WriteShardedFiles(
            schemas.verify_prefix(self._output, schemas.VERIFY_PREFIX), verify_format, "series_key", self._sharding)
        written_files = tables["files"] | "FilesTable" >> WriteShardedFiles(
            schemas.verify_prefix(self._output, schemas.VERIFY_FILES_PREFIX), files_format, "source_uri",
            self._sharding)
        return {"verify": written_verify, "files": written_files}


def _series_element(element: tuple[str, Any]) -> tuple[str, tuple[list, list]]:
    _, grouped = element
    return report_summary.SERIES, (list(grouped["series"]), list(grouped["verify"]))


def _file_element(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return report_summary.FILE, row


def _instance_element(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return report_summary.INSTANCE, {k: row.get(k) for k in ("source_uri", "status", "reason")}


class SummarizeReportFn(beam.CombineFn):
    """Tagged series / file / instance elements -> one ReportSummary: counts and the first N rows of each listing."""

    def __init__(self, max_rows: int, max_thumbnails: int):
        super().__init__()
        self._max_rows, self._max_thumbnails = max_rows, max_thumbnails

    def create_accumulator(self):
        return report_summary.ReportSummary(self._max_rows, self._max_thumbnails)

    def add_input(self, summary, element):
        return report_summary.add_element(summary, *element)

    def merge_accumulators(self, summaries):
        return report_summary.merge(summaries)

    def extract_output(self, summary):
        return summary


class WriteReportFn(beam.DoFn):
    """ReportSummary -> the HTML report, with the thumbnails of the summary's bounded sample embedded."""

    def __init__(self, output: str, report_uri: str, sample: int | None, seed: int):
        super().__init__()
        self._output, self._report_uri, self._sample, self._seed = output, report_uri, sample, seed

    def _thumbnails(self, summary: report_summary.ReportSummary) -> dict[str, bytes]:
        found = {}
        for name in (n for row in summary.thumbnails.items() for n in row.get("thumbnails") or []):
            uri = schemas.thumbnail_uri(self._output, name)
            if storage.exists(uri):
                found[name] = storage.read_bytes(uri)
        return found

    def process(self, summary):
        data = report_html.ReportData(output=self._output, summary=summary, thumbnails=self._thumbnails(summary),
                                      sample=self._sample, seed=self._seed)
        storage.write_bytes(self._report_uri, report_html.render_report(data).encode("utf-8"))
        yield self._report_uri


class WriteReport(beam.PTransform):
    """{"verify", "files", "series", "instances"} -> the self-contained HTML report at `report_uri`.

    Series and verify rows are joined by CoGroupByKey; the page is rendered from one bounded aggregate
    (report_summary), so no worker ever holds every row."""

    def __init__(self, output: str, report_uri: str, sample: int | None = None, seed: int = 0,
                 max_thumbnails: int = 50, max_rows: int = report_summary.MAX_ROWS):
        super().__init__()
        self._summarize = SummarizeReportFn(max_rows, max_thumbnails)
        self._fn = WriteReportFn(output, report_uri, sample, seed)

    def expand(self, tables):
        series = (
            {"series": tables["series"] | "KeySeriesRows" >> beam.Map(_by_series_key),
             "verify": tables["verify"] | "KeyVerifyRows" >> beam.Map(_by_series_key)}
            | "JoinVerified" >> beam.CoGroupByKey()
            | "SeriesElements" >> beam.Map(_series_element)
        )
        files = tables["files"] | "FileElements" >> beam.Map(_file_element)
        instances = tables["instances"] | "InstanceElements" >> beam.Map(_instance_element)
        return (
            (series, files, instances)
            | "AllElements" >> beam.Flatten()
            | "Summarize" >> beam.CombineGlobally(self._summarize)
            | "Render" >> beam.ParDo(self._fn)
        )
