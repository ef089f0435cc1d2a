"""The convert job as one composite: ListInputs | ReadHeaders | DropLocalizers | ConvertSeries."""

from __future__ import annotations

import apache_beam as beam

from dicom_io.convert import ConvertSettings
from dicom_io.deid import DeidSettings
from transforms.headers import DropLocalizers, ReadHeaders
from transforms.inputs import ListInputs
from transforms.series import ConvertSeries


class ConvertToVolumes(beam.PTransform):
    """PBegin -> {"series": series rows, "instances": one instance row per input file}."""

    def __init__(self, *, input_uri: str, settings: ConvertSettings, manifest_column: str = "uri",
                 deid: DeidSettings | None = None, label_column: str | None = None, processes: int = 1):
        super().__init__()
        self._processes = processes
        self._input_uri = input_uri
        self._settings = settings
        self._manifest_column = manifest_column
        self._deid = deid
        self._label_column = label_column

    def expand(self, pbegin):
        files = pbegin | "ListInputs" >> ListInputs(self._input_uri, self._manifest_column, self._label_column)
        headers = files | "ReadHeaders" >> ReadHeaders(self._deid, self._processes)
        routed = headers["headers"] | "DropLocalizers" >> DropLocalizers(self._deid)
        converted = routed["images"] | "ConvertSeries" >> ConvertSeries(self._settings, self._processes)
        instances = (headers["rejected"], routed["dropped"], converted["instances"]) | "AllInstances" >> beam.Flatten()
        return {"series": converted["series"], "instances": instances}
