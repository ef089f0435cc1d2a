"""The dataset job: a converted OUT joined with the user's tables into ML datasets, split by patient.

    python -m pipelines.dataset --output OUT --format vlm --report_table reports.csv \
        [--join_on study_instance_uid|accession_number|series_number+study] [--report_key_column study_id]
        [--report_text_column report_value] [--report_series_column series_number] [--report_texts join|each]
    python -m pipelines.dataset --output OUT --format labels --labels_table train.csv \
        --series_descriptions train_series_descriptions.csv [--study_id_source ...] [--series_id_source ...]
    both: [--split 0.8,0.1,0.1] [--split_salt S] [any Beam option]

Writes OUT/datasets/vlm/pairs-*.{jsonl,parquet} or OUT/datasets/labels/{dataset-*.json,train_dataset-*.csv},
and in both OUT/datasets/<format>/unmatched-*.csv (every user row that did not join, with the reason) and
summary.json (counts). The split is a salted hash of (0010,0020) PatientID, so a patient is in one split.
"""

from __future__ import annotations

import argparse
import json
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from dicom_io import datasets, schemas, storage
from pipelines.common import JobOptions, quiet_main, require, run_job
from pipelines.sharding import table_sharding
from transforms.dataset import BuildLabelDataset, BuildVlmPairs

FORMATS = (schemas.VLM, schemas.LABELS)


class DatasetOptions(PipelineOptions):
    """Flags of pipelines.dataset; --output, --table_shards and --rows_per_shard are JobOptions'.

    Not --labels: Beam's GoogleCloudOptions owns that flag (Dataflow job labels).
    """

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        # Not argparse-required (every options class is parsed on every run): checked in validate().
        parser.add_argument("--format", choices=FORMATS, default=None, help="vlm (image-text pairs) or labels")
        parser.add_argument("--report_table", default=None, help="vlm: report table (.csv or .parquet)")
        parser.add_argument("--join_on", choices=datasets.JOIN_ON, default="study_instance_uid",
                            help="vlm: the series column the report key matches; series_number+study matches "
                                 "(--study_id_source, series_number) against (--report_key_column, --report_series_column)")
        parser.add_argument("--report_key_column", default="study_id", help="vlm: report column holding the key")
        parser.add_argument("--report_text_column", default="report_value", help="vlm: report column holding the text")
        parser.add_argument("--report_series_column", default="series_number",
                            help="vlm with series_number+study: report column holding the series number")
        parser.add_argument("--report_texts", choices=datasets.TEXT_MODES, default="join",
                            help="vlm: join = one pair per series (distinct texts joined by a blank line, table "
                                 "order); each = one pair per distinct text")
        parser.add_argument("--labels_table", default=None, help="labels: train.csv (study_id + one column per label)")
        parser.add_argument("--series_descriptions", default=None,
                            help="labels: train_series_descriptions.csv (study_id, series_id, series_description)")
        parser.add_argument("--study_id_source", choices=datasets.STUDY_ID_SOURCES, default="study_instance_uid",
                            help="Series column the tables' study_id is (RSNA: study_instance_uid)")
        parser.add_argument("--series_id_source", choices=datasets.SERIES_ID_SOURCES, default="series_instance_uid",
                            help="labels: series column the tables' series_id is (RSNA: series_instance_uid)")
        parser.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test fractions (by patient)")
        parser.add_argument("--split_salt", default="dicomflow", help="Salt of the patient hash; change it to re-draw")


def _exists(job: str, flag: str, uri: str | None) -> None:
    if not uri:
        raise SystemExit(f"pipelines.{job}: {flag} required")
    if not storage.exists(uri):
        raise SystemExit(f"pipelines.{job}: {flag} {uri} does not exist")


def validate(opts: DatasetOptions) -> None:
    """Refuse a run that cannot do what was asked, before any worker starts."""
    require("dataset", opts, "output")
    if opts.format not in FORMATS:
        raise SystemExit(f"pipelines.dataset: --format {' or '.join(FORMATS)} required")
    try:
        datasets.parse_fractions(opts.split)
    except ValueError as exc:
        raise SystemExit(f"pipelines.dataset: {exc}") from exc
    output = opts.view_as(JobOptions).output
    if not storage.glob(schemas.table_prefix(output, schemas.SUMMARY_SERIES_PREFIX) + "-*.parquet"):
        raise SystemExit(f"pipelines.dataset: {output} holds no summary/series/*.parquet (run pipelines.convert)")
    if opts.format == schemas.VLM:
        _exists("dataset", "--report_table", opts.report_table)
    else:
        _exists("dataset", "--labels_table", opts.labels_table)
        _exists("dataset", "--series_descriptions", opts.series_descriptions)


def split_of(opts: DatasetOptions) -> datasets.SplitSpec:
    return datasets.SplitSpec(datasets.parse_fractions(opts.split), opts.split_salt)


def build(pipeline: beam.Pipeline, opts: DatasetOptions):
    """Attach the dataset graph of --format to `pipeline`; returns the PCollection of files written last."""
    shared = opts.view_as(JobOptions)
    if opts.format == schemas.VLM:
        spec = datasets.VlmSpec(join_on=opts.join_on, report_key_column=opts.report_key_column,
                                report_text_column=opts.report_text_column,
                                report_series_column=opts.report_series_column, study_id_source=opts.study_id_source,
                                text_mode=opts.report_texts, split=split_of(opts))
        return pipeline | "BuildVlmPairs" >> BuildVlmPairs(
            output=shared.output, report_table=opts.report_table, spec=spec, sharding=table_sharding(opts))
    spec = datasets.LabelSpec(study_id_source=opts.study_id_source, series_id_source=opts.series_id_source,
                              split=split_of(opts))
    return pipeline | "BuildLabelDataset" >> BuildLabelDataset(
        output=shared.output, labels_table=opts.labels_table, series_descriptions=opts.series_descriptions, spec=spec,
        sharding=table_sharding(opts))


def summarize(opts: DatasetOptions) -> None:
    """Print summary.json: what joined, what did not and why."""
    uri = schemas.dataset_uri(opts.view_as(JobOptions).output, opts.format, schemas.DATASET_SUMMARY_JSON)
    print(json.dumps(json.loads(storage.read_bytes(uri)), indent=1, sort_keys=True))


def run(argv: list[str] | None = None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Run the dataset job; see pipelines.common.run_job."""
    return run_job(argv, DatasetOptions, validate, build, summarize, wait)


def main() -> None:
    quiet_main(run, sys.argv[1:])


if __name__ == "__main__":
    main()
