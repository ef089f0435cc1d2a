"""The export job as Beam steps: ListSeries | ExportSeries (or GroupByHdf5File | WriteHdf5Files) | WriteExportsTable.

The formats themselves are dicom_io.export_*; a series that cannot be exported leaves on the
`failed` output with its reason and lands in DIR/exports-*.parquet next to the exported ones.
"""

from __future__ import annotations

from functools import partial

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from dicom_io import export_format, export_hdf5, schemas, tables
from dicom_io.errors import DicomflowError
from dicom_io.exports import ExportSettings, export_row, load_series, series_rows
from transforms.headers import LOG, NAMESPACE
from transforms.tables import WriteShardedFiles

FAILED = "failed"
EXPORT_ERRORS = (DicomflowError, OSError, ValueError, KeyError)


class ListSeriesFn(beam.DoFn):
    """OUT -> converted series rows to export (main) and export rows of asked keys that cannot be (failed)."""

    def __init__(self, keys: tuple[str, ...]):
        super().__init__()
        self._keys = keys

    def process(self, output):
        rows, missing = series_rows(output, self._keys)
        yield from rows
        for row in missing:
            yield TaggedOutput(FAILED, row)


class ExportSeriesFn(beam.DoFn):
    """Series row -> its exports row (main), or a failed exports row with the reason (tagged)."""

    def __init__(self, settings: ExportSettings):
        super().__init__()
        self._settings = settings

    def setup(self):
        self.exported = Metrics.counter(NAMESPACE, "series_exported")
        self.failed = Metrics.counter(NAMESPACE, "series_export_failed")

    def process(self, row):
        key, fmt = row["series_key"], self._settings.fmt
        try:
            result = export_format.export_series(load_series(self._settings.output, key), self._settings)
        except EXPORT_ERRORS as exc:
            self.failed.inc()
            LOG.warning("%s: not exported as %s: %s", key, fmt, exc)
            yield TaggedOutput(FAILED, export_row(key, fmt, schemas.FAILED, f"{type(exc).__name__}: {exc}"))
            return
        except Exception as exc:  # a bug, not a bad series: fail the job, naming the series
            raise RuntimeError(f"exporting {key} ({row.get('series_instance_uid')}) as {fmt}: {exc}") from exc
        self.exported.inc()
        yield result


def _shard_key(row, num_shards: int):
    return tables.shard_of_key(row["series_key"], num_shards), row["series_key"]


class WriteHdf5FileFn(beam.DoFn):
    """(shard index, keys) -> exports rows: the file's missing series appended (dicom_io.export_hdf5)."""

    def __init__(self, settings: ExportSettings, num_shards: int):
        super().__init__()
        self._settings, self._num_shards = settings, num_shards

    def setup(self):
        self.exported = Metrics.counter(NAMESPACE, "series_exported")
        self.failed = Metrics.counter(NAMESPACE, "series_export_failed")

    def process(self, element):
        index, keys = element
        s = self._settings
        for row in export_hdf5.export_hdf5_shard(s.to, index, self._num_shards, list(keys),
                                                 partial(load_series, s.output), s.hdf5_compression):
            (self.exported if row["status"] == schemas.EXPORTED else self.failed).inc()
            yield row


class ExportSeries(beam.PTransform):
    """PBegin -> exports rows (exported and failed) of every asked series of OUT."""

    def __init__(self, settings: ExportSettings, keys: tuple[str, ...] = (), hdf5_files: int = 1):
        super().__init__()
        self._settings, self._keys, self._hdf5_files = settings, tuple(keys), max(1, hdf5_files)

    def expand(self, pbegin):
        listed = (pbegin
                  | "Output" >> beam.Create([self._settings.output])
                  | "ListSeries" >> beam.ParDo(ListSeriesFn(self._keys)).with_outputs(FAILED, main="series"))
        series = listed["series"] | "Spread" >> beam.Reshuffle()
        if self._settings.fmt == "hdf5":
            done = (series
                    | "KeyByHdf5File" >> beam.Map(_shard_key, num_shards=self._hdf5_files)
                    | "GroupByHdf5File" >> beam.GroupByKey()
                    | "WriteHdf5Files" >> beam.ParDo(WriteHdf5FileFn(self._settings, self._hdf5_files)))
            return (done, listed[FAILED]) | "AllRows" >> beam.Flatten()
        exported = series | "ExportEach" >> beam.ParDo(ExportSeriesFn(self._settings)).with_outputs(FAILED, main="rows")
        return (exported["rows"], exported[FAILED], listed[FAILED]) | "AllRows" >> beam.Flatten()


class WriteExportsTable(WriteShardedFiles):
    """Exports rows -> DIR/exports-00000-of-00001.parquet (sorted: same rows, same bytes)."""

    def __init__(self, to: str):
        encoder = partial(tables.encode_parquet, schema=schemas.EXPORT_SCHEMA, sort_keys=("series_key", "format"))
        super().__init__(schemas.export_prefix(to, schemas.EXPORTS_PREFIX), [("parquet", encoder)], "series_key", tables.TableSharding(num_shards=1))
