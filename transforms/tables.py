"""Write the summary tables of the output contract as Parquet through Beam's file sink."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from dicom_io import schemas


class WriteTable(beam.PTransform):
    """Rows (dicts matching `schema`) -> OUT/summary/{name}-SSSSS-of-NNNNN.parquet."""

    def __init__(self, output: str, name: str, schema: pa.Schema, num_shards: int = 1):
        super().__init__()
        self._prefix = schemas.table_prefix(output, name)
        self._schema = schema
        self._num_shards = num_shards

    def expand(self, rows):
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix, self._schema, file_name_suffix=".parquet", num_shards=self._num_shards)


class WriteSummaryTables(beam.PTransform):
    """{"series": rows, "instances": rows} -> the two summary tables."""

    def __init__(self, output: str, num_shards: int = 1):
        super().__init__()
        self._output = output
        self._num_shards = num_shards

    def expand(self, tables):
        series = tables["series"] | "SeriesTable" >> WriteTable(
            self._output, schemas.SUMMARY_SERIES_PREFIX, schemas.SERIES_SCHEMA, self._num_shards)
        instances = tables["instances"] | "InstancesTable" >> WriteTable(
            self._output, schemas.SUMMARY_INSTANCES_PREFIX, schemas.INSTANCES_SCHEMA, self._num_shards)
        return {"series": series, "instances": instances}
