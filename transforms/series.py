"""Group headers by SeriesInstanceUID and turn each series into volumes (pixels read here only)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from dicom_io.convert import ConvertSettings, convert_stack, exclusion_rows, merge_instance_rows, pixel_digest
from dicom_io.header import InstanceHeader
from dicom_io.plan import MISSING_SERIES_PREFIX, plan_series
from transforms.headers import LOG, NAMESPACE


def series_uid_of(h: InstanceHeader) -> tuple[str, InstanceHeader]:
    """Group key: (0020,000E) SeriesInstanceUID; an instance without one is a series of its own."""
    return h.series_instance_uid or f"{MISSING_SERIES_PREFIX}{h.source_uri}", h


class ConvertSeriesFn(beam.DoFn):
    """(SeriesInstanceUID, headers) -> series rows (main) and instance rows (tagged)."""

    INSTANCES = "instances"

    def __init__(self, settings: ConvertSettings, decode_threads: int = 8):
        super().__init__()
        self._settings = settings
        self._decode_threads = decode_threads

    def setup(self):
        self._pool = ThreadPoolExecutor(self._decode_threads, thread_name_prefix="dicomflow-decode")
        self.converted = Metrics.counter(NAMESPACE, "series_converted")
        self.reused = Metrics.counter(NAMESPACE, "series_reused")
        self.failed = Metrics.counter(NAMESPACE, "series_failed")
        self.duplicates = Metrics.counter(NAMESPACE, "files_skipped")
        self.bytes_written = Metrics.counter(NAMESPACE, "bytes_written")

    def process(self, element: tuple[str, list[InstanceHeader]]):
        series_uid, headers = element
        try:
            digest = partial(pixel_digest, max_bytes=self._settings.max_pixel_bytes)
            plan = plan_series(series_uid, headers, digest, four_d=self._settings.four_d,
                               philips_scaling=self._settings.philips_scaling)
            rows = exclusion_rows(plan)
            self.duplicates.inc(len(rows))
            for stack in plan.stacks:
                result = convert_stack(stack, self._settings, self._pool)
                self._count(result)
                yield result.series
                rows.extend(result.instances)
            for row in merge_instance_rows(rows):
                yield TaggedOutput(self.INSTANCES, row)
        except Exception as exc:
            raise RuntimeError(f"series {series_uid!r}: {type(exc).__name__}: {exc}") from exc

    def teardown(self):
        self._pool.shutdown(wait=True, cancel_futures=True)

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

    def __init__(self, settings: ConvertSettings):
        super().__init__()
        self._settings = settings

    def expand(self, headers):
        results = (
            headers
            | "KeyBySeries" >> beam.Map(series_uid_of)
            | "GroupBySeries" >> beam.GroupByKey()
            | "AssembleVolumes" >> beam.ParDo(ConvertSeriesFn(self._settings)).with_outputs(
                ConvertSeriesFn.INSTANCES, main="series")
        )
        return {"series": results.series, "instances": results[ConvertSeriesFn.INSTANCES]}
