"""Dataset builders as Beam graphs: user tables CoGroupByKey'd with the summary series, rows from dicom_io.datasets.

Also ReadSummaryTable, which the verify job shares.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton, TaggedOutput

from dicom_io import datasets, schemas, storage, tables
from dicom_io.errors import DicomflowError
from dicom_io.tables import TableSharding
from transforms.tables import CountsCombineFn, WriteShardedFiles
from transforms.headers import LOG, NAMESPACE

UNMATCHED = "unmatched"


# ---- shared: read a summary table, write sharded files -------------------------------------------

class ReadSummaryTable(beam.PTransform):
    """PBegin -> rows (dicts) of every OUT/summary/{name}/{name}-*.parquet shard."""

    def __init__(self, output: str, name: str):
        super().__init__()
        self._pattern = schemas.table_prefix(output, name) + "-*.parquet"

    def expand(self, pbegin):
        return pbegin | "ReadParquet" >> beam.io.ReadFromParquet(self._pattern)


# ---- user tables and images ------------------------------------------------------------------------

class ReadUserTable(beam.PTransform):
    """PBegin -> rows of a CSV/Parquet table (streamed by one worker, `_row` = its 0-based row), spread out."""

    def __init__(self, uri: str, columns: Sequence[str] = ()):
        super().__init__()
        self._uri, self._columns = uri, tuple(columns)

    def expand(self, pbegin):
        return (
            pbegin
            | "TableUri" >> beam.Create([self._uri])
            | "ReadRows" >> beam.FlatMap(datasets.iter_checked_rows, columns=self._columns)
            | "Spread" >> beam.Reshuffle()
        )


class AttachImagesFn(beam.DoFn):
    """{"series": row, ...} -> the same plus "images" (volume, slices CSV, previews from the slices CSV).

    An unreadable slices CSV still yields the element (volume and CSV URIs, no previews), counted.
    """

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def setup(self):
        self.unreadable = Metrics.counter(NAMESPACE, "slices_csv_unreadable")

    def process(self, element):
        key = element["series"]["series_key"]
        try:
            images = datasets.series_images(self._output, key)
        except (OSError, DicomflowError, ValueError) as exc:
            self.unreadable.inc()
            LOG.warning("%s: slices CSV unreadable (%s); no previews", key, exc)
            images = datasets.images_of(self._output, *datasets.series_paths(self._output, key))
        yield {**element, "images": images}


def _keyed(row: dict[str, Any], key_fn: Callable, spec: Any) -> tuple[str | None, dict[str, Any]]:
    return key_fn(row, spec), row


def _has_key(element: tuple[str | None, Any]) -> bool:
    return element[0] is not None


def _is_converted(row: dict[str, Any]) -> bool:
    return row.get("status") == schemas.CONVERTED


class JoinFn(beam.DoFn):
    """(key, {"series": [...], "rows": [...]}) -> matched elements (main) and unmatched rows (tagged)."""

    def __init__(self, join: Callable, counter: str):
        super().__init__()
        self._join, self._counter = join, counter

    def setup(self):
        self.unmatched = Metrics.counter(NAMESPACE, self._counter)

    def process(self, element):
        key, grouped = element
        matched, unmatched = self._join(key, list(grouped["series"]), list(grouped["rows"]))
        yield from matched
        for row in unmatched:
            self.unmatched.inc()
            yield TaggedOutput(UNMATCHED, row)


class Join(beam.PTransform):
    """{"series": rows, "rows": user rows} -> {"matched", "unmatched"}: keyed by the given functions,
    CoGroupByKey'd, `join(key, series, rows)` per key (bind options with functools.partial). Series without a key cannot match; dropped from the join."""

    def __init__(self, series_key: Callable, row_key: Callable, join: Callable, spec: Any, counter: str):
        super().__init__()
        self._series_key, self._row_key, self._join, self._spec = series_key, row_key, join, spec
        self._counter = counter

    def expand(self, tables):
        series = (tables["series"] | "KeySeries" >> beam.Map(_keyed, self._series_key, self._spec)
                  | "SeriesWithKey" >> beam.Filter(_has_key))
        rows = tables["rows"] | "KeyRows" >> beam.Map(_keyed, self._row_key, self._spec)
        results = (
            {"series": series, "rows": rows}
            | "CoGroup" >> beam.CoGroupByKey()
            | "JoinRows" >> beam.ParDo(JoinFn(self._join, self._counter)).with_outputs(
                UNMATCHED, main="matched")
        )
        return {"matched": results.matched, "unmatched": results[UNMATCHED]}


# ---- outputs of both formats ---------------------------------------------------------------------

class WriteSummaryJsonFn(beam.DoFn):
    """summary.json (one small dict of counts) -> OUT/datasets/{fmt}/summary.json."""

    def __init__(self, output: str, fmt: str):
        super().__init__()
        self._output, self._fmt = output, fmt

    def process(self, summary):
        storage.write_bytes(schemas.dataset_uri(self._output, self._fmt, schemas.DATASET_SUMMARY_JSON),
                            datasets.encode_json(summary))
        yield schemas.DATASET_SUMMARY_JSON


class CountByFn(CountsCombineFn):
    """Elements -> {key_fn(element): count}: a bounded aggregate when the keys are few (splits, reasons)."""

    def __init__(self, key_fn: Callable):
        super().__init__()
        self._key_fn = key_fn

    def add_input(self, counts, element):
        counts[self._key_fn(element)] += 1
        return counts


class WriteUnmatched(beam.PTransform):
    """Unmatched rows -> OUT/datasets/{fmt}/unmatched/unmatched-IIIII-of-NNNNN.csv; returns {(table, reason): rows}."""

    def __init__(self, output: str, fmt: str, sharding: TableSharding):
        super().__init__()
        self._prefix = schemas.dataset_prefix(output, fmt, schemas.UNMATCHED_PREFIX)
        self._sharding = sharding

    def expand(self, unmatched):
        unmatched | "WriteCsv" >> WriteShardedFiles(self._prefix, (("csv", datasets.encode_unmatched),), "record",
                                                    self._sharding)
        return unmatched | "CountByReason" >> beam.CombineGlobally(CountByFn(datasets.unmatched_reason))


def _split_of_row(row: dict[str, Any]) -> str:
    return row["split"]


def _split_and_patient(row: dict[str, Any]) -> tuple[str, str]:
    return row["split"], row.get("patient_id") or row.get("study_id") or ""


def _first(pair: tuple) -> Any:
    return pair[0]


def _series_key_of(element: dict[str, Any]) -> str:
    return element["series_key"]


class SplitCounts(beam.PTransform):
    """Rows with a `split` -> singletons {"<split>": n} and {"<split>": distinct patients}."""

    def expand(self, rows):
        per_split = rows | "CountRows" >> beam.CombineGlobally(CountByFn(_split_of_row))
        patients = (rows | "SplitPatient" >> beam.Map(_split_and_patient) | "DistinctPatients" >> beam.Distinct()
                    | "CountPatients" >> beam.CombineGlobally(CountByFn(_first)))
        return {"rows": per_split, "patients": patients}


def _vlm_counts(_, report_rows, pairs_by_split, patients_by_split, converted, with_pairs, unmatched) -> dict[str, Any]:
    return datasets.summary(schemas.VLM, {
        "report_rows": report_rows, "pairs": sum(pairs_by_split.values()),
        "pairs_by_split": {s: pairs_by_split.get(s, 0) for s in schemas.SPLITS},
        "patients_by_split": {s: patients_by_split.get(s, 0) for s in schemas.SPLITS},
        "series_converted": converted, "series_with_report": with_pairs,
        "series_without_report": converted - with_pairs}, unmatched)


def _labels_counts(_, label_rows, description_rows, studies_by_split, patients_by_split, series_rows,
                   unmatched) -> dict[str, Any]:
    return datasets.summary(schemas.LABELS, {
        "label_rows": label_rows, "series_description_rows": description_rows,
        "studies": sum(studies_by_split.values()),
        "studies_by_split": {s: studies_by_split.get(s, 0) for s in schemas.SPLITS},
        "patients_by_split": {s: patients_by_split.get(s, 0) for s in schemas.SPLITS},
        "train_rows": series_rows}, unmatched)


# ---- vlm ---------------------------------------------------------------------------------------------

class BuildVlmPairs(beam.PTransform):
    """PBegin -> image-text pairs: OUT/datasets/vlm/pairs-*.{jsonl,parquet}, unmatched-*.csv, summary.json."""

    PAIR_SORT = ("series_key", "pair_id")

    def __init__(self, *, output: str, report_table: str, spec: datasets.VlmSpec,
                 sharding: TableSharding = TableSharding()):
        super().__init__()
        self._output, self._report_table, self._spec, self._sharding = output, report_table, spec, sharding

    def expand(self, pbegin):
        series = pbegin | "ReadSeries" >> ReadSummaryTable(self._output, schemas.SUMMARY_SERIES_PREFIX)
        reports = pbegin | "ReadReports" >> ReadUserTable(self._report_table, self._spec.report_columns)
        joined = {"series": series, "rows": reports} | "JoinReports" >> Join(
            datasets.series_report_key, datasets.report_key, functools.partial(datasets.join_reports, spec=self._spec),
            self._spec, "report_rows_unmatched")
        pairs = (joined["matched"] | "AttachImages" >> beam.ParDo(AttachImagesFn(self._output))
                 | "PairRecords" >> beam.Map(_pair_record, self._spec.split))
        formats = (("jsonl", functools.partial(tables.encode_jsonl, sort_keys=self.PAIR_SORT)),
                   ("parquet", functools.partial(tables.encode_parquet, schema=schemas.VLM_PAIRS_SCHEMA,
                                                 sort_keys=self.PAIR_SORT)))
        pairs | "WritePairs" >> WriteShardedFiles(
            schemas.dataset_prefix(self._output, schemas.VLM, schemas.PAIRS_PREFIX), formats, "pair_id", self._sharding)
        splits = pairs | "SplitCounts" >> SplitCounts()
        converted = series | "Converted" >> beam.Filter(_is_converted) | "CountConverted" >> beam.combiners.Count.Globally()
        with_pairs = (pairs | "PairSeries" >> beam.Map(_series_key_of) | "DistinctSeries" >> beam.Distinct()
                      | "CountSeriesWithPairs" >> beam.combiners.Count.Globally())
        report_rows = reports | "CountReportRows" >> beam.combiners.Count.Globally()
        unmatched = joined["unmatched"] | "WriteUnmatched" >> WriteUnmatched(self._output, schemas.VLM, self._sharding)
        return (pbegin
                | "Once" >> beam.Create([None])
                | "Counts" >> beam.Map(_vlm_counts, AsSingleton(report_rows), AsSingleton(splits["rows"]),
                                       AsSingleton(splits["patients"]), AsSingleton(converted),
                                       AsSingleton(with_pairs), AsSingleton(unmatched))
                | "WriteSummary" >> beam.ParDo(WriteSummaryJsonFn(self._output, schemas.VLM)))


def _pair_record(element: dict[str, Any], split: datasets.SplitSpec) -> dict[str, Any]:
    return datasets.pair_record(element, element["images"], split)


# ---- labels ------------------------------------------------------------------------------------------

def _study_of(match: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return match["study_id"], match


def _label_study(row: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    return datasets.normalize_key(row.get(datasets.STUDY_ID)), row


class StudyEntryFn(beam.DoFn):
    """(study_id, {"labels": [...], "series": [...]}) -> dataset entry (main), unmatched rows (tagged)."""

    def __init__(self, spec: datasets.LabelSpec):
        super().__init__()
        self._spec = spec

    def setup(self):
        self.unmatched = Metrics.counter(NAMESPACE, "label_rows_unmatched")

    def process(self, element):
        study_id, grouped = element
        entry, unmatched = datasets.study_entry(study_id, list(grouped["labels"]), list(grouped["series"]), self._spec)
        if entry is not None:
            yield entry
        for row in unmatched:
            self.unmatched.inc()
            yield TaggedOutput(UNMATCHED, row)


class WriteDatalistFn(beam.DoFn):
    """Every datalist item (one list: the datalist is one file) -> datalist.json and label_classes.json."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def process(self, items):
        classes = datasets.label_classes(items)
        for name, value in ((schemas.LABEL_CLASSES_JSON, classes),
                            (schemas.DATALIST_JSON, datasets.datalist(items, classes))):
            storage.write_bytes(schemas.dataset_uri(self._output, schemas.LABELS, name), datasets.encode_json(value))
            yield name


def _train_row_count(entry: dict[str, Any]) -> int:
    return len(datasets.train_rows(entry))


class BuildLabelDataset(beam.PTransform):
    """PBegin -> OUT/datasets/labels/{dataset-*.json, train_dataset-*.csv, unmatched-*.csv, summary.json,
    datalist.json, label_classes.json}."""

    def __init__(self, *, output: str, labels_table: str, series_descriptions: str, spec: datasets.LabelSpec,
                 sharding: TableSharding = TableSharding()):
        super().__init__()
        self._output, self._labels, self._descriptions, self._spec = output, labels_table, series_descriptions, spec
        self._sharding = sharding

    def expand(self, pbegin):
        series = pbegin | "ReadSeries" >> ReadSummaryTable(self._output, schemas.SUMMARY_SERIES_PREFIX)
        descriptions = pbegin | "ReadDescriptions" >> ReadUserTable(
            self._descriptions, (datasets.STUDY_ID, datasets.SERIES_ID, datasets.DESCRIPTION))
        labels = pbegin | "ReadLabels" >> ReadUserTable(self._labels, (datasets.STUDY_ID,))
        described = {"series": series, "rows": descriptions} | "JoinDescriptions" >> Join(
            datasets.series_label_key, _description_key, datasets.join_descriptions, self._spec,
            "description_rows_unmatched")
        matched = (described["matched"] | "AttachImages" >> beam.ParDo(AttachImagesFn(self._output))
                   | "KeyByStudy" >> beam.Map(_study_of))
        studies = (
            {"labels": labels | "KeyLabels" >> beam.Map(_label_study), "series": matched}
            | "GroupByStudy" >> beam.CoGroupByKey()
            | "StudyEntries" >> beam.ParDo(StudyEntryFn(self._spec)).with_outputs(UNMATCHED, main="entries")
        )
        entries = studies.entries
        unmatched = (described["unmatched"], studies[UNMATCHED]) | "AllUnmatched" >> beam.Flatten()
        splits = entries | "SplitCounts" >> SplitCounts()
        train_rows = (entries | "TrainRows" >> beam.Map(_train_row_count)
                      | "SumTrainRows" >> beam.CombineGlobally(sum))
        entries | "WriteEntries" >> WriteShardedFiles(
            schemas.dataset_prefix(self._output, schemas.LABELS, schemas.LABELS_PREFIX),
            (("json", datasets.encode_entries),), "study_id", self._sharding)
        entries | "WriteTrainCsv" >> WriteShardedFiles(
            schemas.dataset_prefix(self._output, schemas.LABELS, schemas.TRAIN_PREFIX),
            (("csv", datasets.encode_train_rows),), "study_id", self._sharding)
        (entries | "DatalistItems" >> beam.FlatMap(datasets.datalist_items, self._output)
         | "GatherDatalist" >> beam.combiners.ToList() | "WriteDatalist" >> beam.ParDo(WriteDatalistFn(self._output)))
        unmatched_counts = unmatched | "WriteUnmatched" >> WriteUnmatched(self._output, schemas.LABELS, self._sharding)
        return (pbegin
                | "Once" >> beam.Create([None])
                | "Counts" >> beam.Map(
                    _labels_counts, AsSingleton(labels | "CountLabels" >> beam.combiners.Count.Globally()),
                    AsSingleton(descriptions | "CountDescriptions" >> beam.combiners.Count.Globally()),
                    AsSingleton(splits["rows"]), AsSingleton(splits["patients"]), AsSingleton(train_rows),
                    AsSingleton(unmatched_counts))
                | "WriteSummary" >> beam.ParDo(WriteSummaryJsonFn(self._output, schemas.LABELS)))


def _description_key(row: dict[str, Any], spec: datasets.LabelSpec) -> str | None:
    return datasets.description_key(row)
