"""Read headers (no pixels) and route what cannot become a volume slice to instance rows."""

from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from dicom_io import schemas, storage
from dicom_io.deid import DeidSettings, Deidentifier, burned_in_reason
from dicom_io.errors import DicomflowError, NoPixelDataError
from dicom_io.header import InstanceHeader, read_header

NAMESPACE = "dicomflow"
LOG = logging.getLogger("dicomflow")
PROGRESS_EVERY = 1000


class ReadHeaderFn(beam.DoFn):
    """(uri, size) -> InstanceHeader; unreadable files -> tagged instance rows with the reason."""

    REJECTED = "rejected"

    def __init__(self, deid: DeidSettings | None = None):
        super().__init__()
        self._deid_settings = deid

    def setup(self):
        self._deid = Deidentifier(self._deid_settings) if self._deid_settings else None
        self.read = Metrics.counter(NAMESPACE, "files_read")
        self.failed = Metrics.counter(NAMESPACE, "files_failed")
        self.skipped = Metrics.counter(NAMESPACE, "files_skipped")
        self._seen = 0

    def process(self, element: tuple[str, int | None, str | None]):
        uri, size, label = element
        self.read.inc()
        self._seen += 1
        if self._seen % PROGRESS_EVERY == 0:
            LOG.info("this worker has read %d headers (latest %s)", self._seen, uri)
        try:
            size = storage.size_of(uri) if size is None else size
            with storage.open_source(uri) as fp:
                header = read_header(fp, uri, size)
            header = dataclasses.replace(header, label=label) if label is not None else header
            yield self._deid.header(header) if self._deid else header
        except NoPixelDataError as exc:
            self.skipped.inc()
            yield TaggedOutput(self.REJECTED, schemas.instance_row(uri, schemas.SKIPPED, str(exc)))
        except FileNotFoundError as exc:
            self.failed.inc()
            yield TaggedOutput(self.REJECTED, schemas.instance_row(uri, schemas.FAILED, f"source disappeared: {exc}"))
        except (DicomflowError, OSError) as exc:
            self.failed.inc()
            yield TaggedOutput(self.REJECTED, schemas.instance_row(uri, schemas.FAILED, str(exc)))


class RouteInstancesFn(beam.DoFn):
    """Drop localizers by (0008,0008) ImageType, and when de-identifying instances with burned-in
    text, each as an instance row with the reason."""

    DROPPED = "dropped"

    def __init__(self, deid: DeidSettings | None = None):
        super().__init__()
        self._deid = deid

    def setup(self):
        self.localizers = Metrics.counter(NAMESPACE, "localizers_skipped")

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

    def __init__(self, deid: DeidSettings | None = None):
        super().__init__()
        self._deid = deid

    def expand(self, files):
        results = files | "ParseHeader" >> beam.ParDo(ReadHeaderFn(self._deid)).with_outputs(
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
