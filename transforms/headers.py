"""Read headers (no pixels) and route what cannot become a volume slice to instance rows."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from dicom_io import schemas
from dicom_io.deid import DeidSettings, burned_in_reason
from dicom_io.header import InstanceHeader
from dicom_io.header_pass import HEADER, read_batch
from transforms.bundles import PooledFn
from transforms.counters import LOG, NAMESPACE, Counter

__all__ = ["DropLocalizers", "LOG", "NAMESPACE", "ReadHeaderFn", "ReadHeaders", "RouteInstancesFn"]
PROGRESS_EVERY = 1000


class ReadHeaderFn(PooledFn):
    """(uri, size, label) -> InstanceHeader; unreadable files -> tagged instance rows with the reason.

    `processes` > 1 (local runs): files are parsed in batches of BATCH in forked processes
    (dicom_io.workers, transforms.bundles.PooledFn).
    """

    REJECTED = "rejected"
    BATCH = 64
    work = staticmethod(read_batch)

    def __init__(self, deid: DeidSettings | None = None, processes: int = 1):
        super().__init__(processes)
        self._deid_settings = deid

    def setup(self):
        super().setup()
        self.read = Counter("files_read")
        self.failed = Counter("files_failed")
        self.skipped = Counter("files_skipped")
        self._seen = 0

    def _task(self, batch: list) -> tuple:
        return batch, self._deid_settings

    def _outputs(self, outcomes):
        for kind, value in outcomes:
            self.read.inc()
            self._seen += 1
            if self._seen % PROGRESS_EVERY == 0:
                LOG.info("this worker has read %d headers", self._seen)
            if kind == HEADER:
                yield value
            else:
                (self.skipped if kind == schemas.SKIPPED else self.failed).inc()
                yield TaggedOutput(self.REJECTED, value)


class RouteInstancesFn(beam.DoFn):
    """Drop localizers by (0008,0008) ImageType, and when de-identifying instances with burned-in
    text, each as an instance row with the reason."""

    DROPPED = "dropped"

    def __init__(self, deid: DeidSettings | None = None):
        super().__init__()
        self._deid = deid

    def setup(self):
        self.localizers = Counter("localizers_skipped")

    def process(self, h: InstanceHeader):
        burned_in = burned_in_reason(h, self._deid)
        if burned_in:
            yield TaggedOutput(self.DROPPED, schemas.instance_row(
                h.source_uri, schemas.SKIPPED, burned_in, h.sop_instance_uid, h.series_instance_uid))
        elif h.is_localizer:
            self.localizers.inc()
            reason = "localizer: ImageType " + "\\".join(h.image_type)
            yield TaggedOutput(self.DROPPED, schemas.instance_row(
                h.source_uri, schemas.SKIPPED, reason, h.sop_instance_uid, h.series_instance_uid))
        else:
            yield h


class ReadHeaders(beam.PTransform):
    """(uri, size) -> {"headers": InstanceHeader (de-identified when asked), "rejected": instance rows}."""

    def __init__(self, deid: DeidSettings | None = None, processes: int = 1):
        super().__init__()
        self._deid = deid
        self._processes = processes

    def expand(self, files):
        results = files | "ParseHeader" >> beam.ParDo(ReadHeaderFn(self._deid, self._processes)).with_outputs(
            ReadHeaderFn.REJECTED, main="headers")
        return {"headers": results.headers, "rejected": results[ReadHeaderFn.REJECTED]}


class DropLocalizers(beam.PTransform):
    """InstanceHeader -> {"images": InstanceHeader, "dropped": instance rows (localizers, burned-in text)}."""

    def __init__(self, deid: DeidSettings | None = None):
        super().__init__()
        self._deid = deid

    def expand(self, headers):
        results = headers | "Route" >> beam.ParDo(RouteInstancesFn(self._deid)).with_outputs(
            RouteInstancesFn.DROPPED, main="images")
        return {"images": results.images, "dropped": results[RouteInstancesFn.DROPPED]}
