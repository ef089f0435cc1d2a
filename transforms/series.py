"""Group headers by SeriesInstanceUID and turn each series into volumes (pixels read here only)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from dicom_io.convert import ConvertSettings
from dicom_io.header import InstanceHeader
from dicom_io.plan import MISSING_SERIES_PREFIX
from dicom_io.series import SeriesResult, convert_series
from transforms.bundles import PooledFn
from transforms.counters import LOG, Counter


def series_uid_of(h: InstanceHeader) -> tuple[str, InstanceHeader]:
    """Group key: (0020,000E) SeriesInstanceUID; an instance without one is a series of its own."""
    return h.series_instance_uid or f"{MISSING_SERIES_PREFIX}{h.source_uri}", h


class ConvertSeriesFn(PooledFn):
    """(SeriesInstanceUID, headers) -> series rows (main) and instance rows (tagged).

    `processes` > 1 (local runs): series are converted in forked processes (dicom_io.workers), and
    whatever is still in flight at the end of a bundle is emitted from finish_bundle.
    """

    INSTANCES = "instances"
    work = staticmethod(convert_series)

    def __init__(self, settings: ConvertSettings, processes: int = 1):
        super().__init__(processes)
        self._settings = settings

    def setup(self):
        super().setup()
        self.converted = Counter("series_converted", shown_as="series_written")
        self.reused = Counter("series_reused")
        self.failed = Counter("series_failed")
        self.duplicates = Counter("files_skipped")
        self.bytes_written = Counter("bytes_written")

    def _task(self, batch: list[tuple[str, list[InstanceHeader]]]) -> tuple:
        [(series_uid, headers)] = batch  # BATCH 1: a series is a task
        return series_uid, list(headers), self._settings

    def _outputs(self, result: SeriesResult):
        self.duplicates.inc(result.duplicates)
        for stack in result.stacks:
            self._count(stack)
            yield stack.series
        for row in result.instances:
            yield TaggedOutput(self.INSTANCES, row)

    def _count(self, result) -> None:
        row = result.series
        LOG.info("%s %s: %s slices, %d bytes written%s", row["series_key"], row["status"], row["n_slices"],
                 result.bytes_written, " (reused)" if result.reused else "")
        if row["status"] != "converted":
            self.failed.inc()
        elif result.reused:
            self.reused.inc()
        else:
            self.converted.inc()
        self.bytes_written.inc(result.bytes_written)


class ConvertSeries(beam.PTransform):
    """InstanceHeader -> {"series": series rows, "instances": instance rows}."""

    def __init__(self, settings: ConvertSettings, processes: int = 1):
        super().__init__()
        self._settings = settings
        self._processes = processes

    def expand(self, headers):
        results = (
            headers
            | "KeyBySeries" >> beam.Map(series_uid_of)
            | "GroupBySeries" >> beam.GroupByKey()
            | "AssembleVolumes" >> beam.ParDo(ConvertSeriesFn(self._settings, self._processes)).with_outputs(
                ConvertSeriesFn.INSTANCES, main="series")
        )
        return {"series": results.series, "instances": results[ConvertSeriesFn.INSTANCES]}
