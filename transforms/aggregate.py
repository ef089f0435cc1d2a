"""Summary parts: WriteSummaryPart (a convert run's rows, kept under OUT/summary/parts/{part}/) and
AggregateParts (every part -> the summary tables, each file and series exactly once)."""

from __future__ import annotations

import apache_beam as beam

from dicom_io import aggregate, schemas
from dicom_io.tables import SORT_KEYS, TableSharding, summary_encoder
from transforms.tables import WriteShardedFiles, WriteSummaryTables

NAMES = (schemas.SUMMARY_SERIES_PREFIX, schemas.SUMMARY_INSTANCES_PREFIX)


class WriteSummaryPart(beam.PTransform):
    """{"series": rows, "instances": rows} -> OUT/summary/parts/{part}/{series,instances}/*.parquet."""

    def __init__(self, output: str, part: str, sharding: TableSharding = TableSharding()):
        super().__init__()
        self._output, self._part, self._sharding = output, aggregate.check_part(part), sharding

    def expand(self, tables):
        return {name: tables[name] | f"Part{name.title()}" >> WriteShardedFiles(
                    schemas.part_prefix(self._output, self._part, name), [("parquet", summary_encoder(name))],
                    SORT_KEYS[name][0], self._sharding)
                for name in NAMES}


def _keyed(row: dict, field: str):
    return row[field], row


def _pick(element):
    return aggregate.pick(element[1])


class UnionOfParts(beam.PTransform):
    """PBegin -> rows of summary table `name` from every part, one per key (dicom_io.aggregate.pick)."""

    def __init__(self, files: list[str], name: str):
        super().__init__()
        self._files, self._name = list(files), name

    def expand(self, pbegin):
        return (pbegin
                | "PartFiles" >> beam.Create(self._files)
                | "ReadPart" >> beam.FlatMap(aggregate.read_part, name=self._name)
                | "KeyRows" >> beam.Map(_keyed, field=aggregate.KEY_FIELDS[self._name])
                | "GroupByKey" >> beam.GroupByKey()
                | "PickOne" >> beam.Map(_pick))


class AggregateParts(beam.PTransform):
    """PBegin -> the rewritten summary tables (OUT/summary/{series,instances}/*.parquet).

    `parts` maps each table name to its part files (dicom_io.aggregate.part_files, listed by the pipeline).
    """

    def __init__(self, output: str, parts: dict[str, list[str]], sharding: TableSharding = TableSharding()):
        super().__init__()
        self._output, self._parts, self._sharding = output, parts, sharding

    def expand(self, pbegin):
        tables = {name: pbegin | f"Union{name.title()}" >> UnionOfParts(self._parts.get(name, []), name)
                  for name in NAMES}
        return tables | "WriteSummary" >> WriteSummaryTables(self._output, self._sharding)
