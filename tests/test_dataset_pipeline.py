"""End to end: pipelines.dataset over a converted multi-patient corpus, vlm and labels, every user row accounted."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_io.tables import decode_parquet
from dicom_io import datasets, schemas, storage
from dicom_io.tables import read_table
from pipelines import dataset as dataset_job
from pipelines.convert import run as convert
from tests import synthetic
from tests.conftest import RUNNER_ARGS

SEED = 21
SAGITTAL_IOP = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
DESCRIPTIONS = {1: ("Sagittal T1", SAGITTAL_IOP), 2: ("Axial T2", synthetic.AXIAL_IOP),
                3: ("Sagittal T2/STIR", SAGITTAL_IOP)}
STUDIES = [(f"LS{k % 7}", k) for k in range(8)]  # patient LS0 has two studies
LABELS = ("spinal_canal_stenosis_l1_l2", "spinal_canal_stenosis_l4_l5", "left_neural_foraminal_narrowing_l5_s1")
SEVERITIES = ("Normal/Mild", "Moderate", "Severe")


@pytest.fixture(scope="module")
def lumbar(tmp_path_factory):
    """Eight MR studies of seven patients, three series each (RSNA descriptions), converted."""
    root = tmp_path_factory.mktemp("lumbar-in")
    for patient, k in STUDIES:
        study = synthetic.uid_from("lumbar-study", k)
        for number, (description, iop) in DESCRIPTIONS.items():
            spec = synthetic.SeriesSpec(
                series_uid=synthetic.uid_from("lumbar-series", k, number), study_uid=study, patient_id=patient,
                modality="MR", positions=synthetic.stack_positions(3, 4.0, (-20.0, -20.0, 0.0), iop), iop=iop,
                pixel_spacing=(5.0, 5.0), rows=8, cols=8, intercept=0.0, series_number=number,
                series_description=description, slice_thickness=4.0)
            synthetic.write_series(root / patient / str(k) / str(number), spec, seed=SEED)
    out = str(tmp_path_factory.mktemp("lumbar-out"))
    convert(["--input", str(root), "--output", out, *RUNNER_ARGS])
    series = [r for r in read_table(out, "series").to_pylist() if r["status"] == "converted"]
    assert len(series) == 3 * len(STUDIES)
    return out, series


def _by_study(series: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for row in series:
        grouped[row["study_instance_uid"]].append(row)
    return dict(sorted(grouped.items()))


def _write_csv(path, header, rows) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _read(out: str, fmt: str, name: str) -> bytes:
    return storage.read_bytes(schemas.dataset_uri(out, fmt, name))


def _shards(out: str, fmt: str, prefix: str, ext: str) -> list[bytes]:
    """Every shard of OUT/datasets/{fmt}/{prefix}-*.{ext}, in shard order."""
    return [storage.read_bytes(f) for f in storage.glob(schemas.dataset_prefix(out, fmt, prefix) + f"-*.{ext}")]


def _csv_rows(out: str, fmt: str, prefix: str) -> list[dict]:
    return [row for data in _shards(out, fmt, prefix, "csv") for row in csv.DictReader(io.StringIO(data.decode()))]


def _entries(out: str) -> list[dict]:
    return [e for data in _shards(out, "labels", schemas.LABELS_PREFIX, "json") for e in json.loads(data)]


def _unmatched(out: str, fmt: str) -> list[dict]:
    return _csv_rows(out, fmt, schemas.UNMATCHED_PREFIX)


def _one_split_per_patient(rows: list[dict]) -> dict[str, str]:
    splits = defaultdict(set)
    for row in rows:
        splits[row["patient_id"]].add(row["split"])
    assert all(len(s) == 1 for s in splits.values()), splits  # never one patient in two splits
    return {p: s.pop() for p, s in splits.items()}


def test_vlm_pairs_from_a_pacs_style_report_table(lumbar, tmp_path):
    out, series = lumbar
    studies = _by_study(series)
    unreported = list(studies)[-1]
    rows = []
    for study, members in studies.items():  # one row per instance, the report repeated (the PACS extract)
        if study == unreported:
            continue
        for s in members:
            rows += [[study, s["series_number"], f"{s['series_key']}-{i}", f"Findings for {study}."] for i in range(3)]
    rows.append([list(studies)[0], 1, "extra", "Impression: degenerative change."])
    rows += [["9.9.9", 1, "x1", "a report for no study"], ["", 2, "x2", "no key"], [list(studies)[1], 1, "x3", ""]]
    table = _write_csv(tmp_path / "reports.csv", ["study_id", "series_number", "instance_id", "report_value"], rows)
    key = sorted(s["series_key"] for s in studies[list(studies)[0]])[0]
    csv_uri = schemas.slices_csv_uri(out, key)  # a slices CSV with previews as contract 2 wrote it: URIs only
    original = storage.read_bytes(csv_uri)
    slice_rows = list(csv.DictReader(io.StringIO(original.decode())))
    previews = [os.path.join(out, "prev", f"{i}.png") for i in range(len(slice_rows))]
    contract_2 = io.StringIO()
    writer = csv.DictWriter(contract_2, [c for c in schemas.SLICE_COLUMNS if c != "preview_path"], lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**row, "preview_uri": uri} for row, uri in zip(slice_rows, previews))
    storage.write_bytes(csv_uri, contract_2.getvalue().encode())
    try:
        dataset_job.run(["--output", out, "--format", "vlm", "--report_table", table, "--split", "0.4,0.3,0.3",
                         *RUNNER_ARGS])
    finally:
        storage.write_bytes(csv_uri, original)

    jsonl = _read(out, "vlm", "pairs/pairs-00000-of-00001.jsonl").decode().splitlines()
    pairs = [json.loads(line) for line in jsonl]
    assert all(list(sorted(p)) == sorted(schemas.VLM_PAIRS_SCHEMA.names) for p in pairs)
    pa.Table.from_pylist(pairs, schema=schemas.VLM_PAIRS_SCHEMA)  # every value has the schema's type
    parquet = decode_parquet(_read(out, "vlm", "pairs/pairs-00000-of-00001.parquet")).to_pylist()
    assert parquet == pairs  # same rows, same order
    reported = [s for st, members in studies.items() if st != unreported for s in members]
    assert sorted(p["series_key"] for p in pairs) == sorted(s["series_key"] for s in reported)
    first = next(p for p in pairs if p["series_key"] == key)
    assert first["report_text"] == f"Findings for {list(studies)[0]}.\n\nImpression: degenerative change."
    assert first["image_uris"] == previews and first["preview_uri"] == previews[1]
    assert first["image_paths"] == ["prev/0.png", "prev/1.png", "prev/2.png"] and first["preview_path"] == "prev/1.png"
    assert all(p["volume_path"] == f"volumes/{p['series_key']}.zarr" and p["slices_path"] == f"slices/{p['series_key']}.csv"
               for p in pairs)
    assert all(p["volume_uri"] == schemas.zarr_uri(out, p["series_key"]) and p["preview_uri"] is None
               for p in pairs if p["series_key"] != key)
    splits = _one_split_per_patient(pairs)
    assert len(set(splits.values())) > 1

    unmatched = _unmatched(out, "vlm")
    assert [(u["row"], u["reason"]) for u in unmatched] == [
        (str(len(rows) - 3), datasets.NO_SERIES), (str(len(rows) - 2), datasets.EMPTY_KEY),
        (str(len(rows) - 1), datasets.EMPTY_TEXT)]
    summary = json.loads(_read(out, "vlm", schemas.DATASET_SUMMARY_JSON))
    assert summary["report_rows"] == len(rows) and summary["unmatched"] == 3 and summary["pairs"] == len(pairs)
    assert summary["series_without_report"] == len(studies[unreported]) == 3
    assert sum(summary["pairs_by_split"].values()) == len(pairs)
    assert summary["unmatched_by_reason"]["report"] == {datasets.NO_SERIES: 1, datasets.EMPTY_KEY: 1,
                                                        datasets.EMPTY_TEXT: 1}


def test_vlm_join_on_series_number_and_accession_from_parquet(lumbar, tmp_path):
    out, series = lumbar
    axial = [s for s in series if s["series_number"] == 2]
    rows = {"study_id": [s["accession_number"] for s in axial] + [axial[0]["accession_number"]],
            "series": [2] * len(axial) + [99],
            "text": [f"Axial report {i}" for i in range(len(axial))] + ["no such series"]}
    pq.write_table(pa.table(rows), tmp_path / "reports.parquet")
    dataset_job.run(["--output", out, "--format", "vlm", "--report_table", str(tmp_path / "reports.parquet"),
                     "--join_on", "series_number+study", "--study_id_source", "accession_number",
                     "--report_series_column", "series", "--report_text_column", "text", "--report_texts", "each",
                     *RUNNER_ARGS])
    pairs = [json.loads(line) for line in _read(out, "vlm", "pairs/pairs-00000-of-00001.jsonl").decode().splitlines()]
    assert sorted(p["series_key"] for p in pairs) == sorted(s["series_key"] for s in axial)
    assert all(p["report_key"] == f"{p['accession_number']}|2" for p in pairs)
    assert [(u["key"], u["reason"]) for u in _unmatched(out, "vlm")] == [
        (f"{axial[0]['accession_number']}|99", datasets.NO_SERIES)]


def _label_value(k: int, j: int) -> str:
    return "" if (k + j) % 5 == 0 else SEVERITIES[(k + j) % 3]


def test_labels_in_the_rsna_layout(lumbar, tmp_path):
    out, series = lumbar
    studies = _by_study(series)
    uids = list(studies)
    labelled, described_only = uids[:-1], uids[-1]
    train = _write_csv(tmp_path / "train.csv", ["study_id", *LABELS],
                       [[st, *(_label_value(k, j) for j in range(len(LABELS)))] for k, st in enumerate(labelled)]
                       + [["4242", "Severe", "Severe", "Severe"]])
    descriptions = [[st, s["series_instance_uid"], s["series_description"]] for st in uids for s in studies[st]]
    descriptions.append([uids[0], "1.2.3.4.5", "Axial T2"])
    table = _write_csv(tmp_path / "train_series_descriptions.csv", ["study_id", "series_id", "series_description"],
                       descriptions)
    dataset_job.run(["--output", out, "--format", "labels", "--labels_table", train, "--series_descriptions", table,
                     "--split", "0.4,0.3,0.3", *RUNNER_ARGS])

    entries = _entries(out)
    assert [e["study_id"] for e in entries] == sorted(labelled)  # one shard, sorted by study
    for k, entry in enumerate(sorted(entries, key=lambda e: labelled.index(e["study_id"]))):
        assert sorted(entry["series"]) == sorted(d for d, _ in DESCRIPTIONS.values())
        assert entry["labels"] == {c: (_label_value(k, j) or None) for j, c in enumerate(LABELS)}
        for description, members in entry["series"].items():
            [s] = members
            assert s["volume_uri"] == schemas.zarr_uri(out, s["series_key"]) and storage.exists(s["volume_uri"])
            assert schemas.resolve_output_path(out, s["volume_path"]) == s["volume_uri"]
    train_rows = _csv_rows(out, "labels", schemas.TRAIN_PREFIX)
    assert list(train_rows[0]) == [*datasets.TRAIN_COLUMNS, *LABELS]
    assert all(schemas.resolve_output_path(out, r["volume_path"]) == r["volume_uri"] for r in train_rows)
    assert len(train_rows) == 3 * len(labelled)
    assert Counter(r["series_description"] for r in train_rows) == {d: len(labelled) for d, _ in DESCRIPTIONS.values()}
    splits = _one_split_per_patient(entries)
    assert _one_split_per_patient(train_rows) == splits and len(set(splits.values())) > 1

    unmatched = sorted((u["table"], u["key"], u["reason"]) for u in _unmatched(out, "labels"))
    assert unmatched == sorted(
        [("labels", "4242", datasets.NO_DESCRIBED_SERIES), ("series_descriptions", f"{uids[0]}|1.2.3.4.5", datasets.NO_SERIES)]
        + [("series_descriptions", described_only, datasets.NO_LABELS)] * 3)
    summary = json.loads(_read(out, "labels", schemas.DATASET_SUMMARY_JSON))
    assert summary["label_rows"] == len(labelled) + 1 and summary["series_description_rows"] == len(descriptions)
    assert summary["studies"] == len(entries) and summary["train_rows"] == len(train_rows) and summary["unmatched"] == 5


def test_labels_mapped_by_accession_and_series_number(lumbar, tmp_path):
    out, series = lumbar
    studies = _by_study(series)
    accession = {st: members[0]["accession_number"] for st, members in studies.items()}
    train = _write_csv(tmp_path / "train.csv", ["study_id", LABELS[0]], [[a, "Moderate"] for a in accession.values()])
    table = _write_csv(tmp_path / "d.csv", ["study_id", "series_id", "series_description"],
                       [[accession[st], s["series_number"], s["series_description"]]
                        for st, members in studies.items() for s in members])
    dataset_job.run(["--output", out, "--format", "labels", "--labels_table", train, "--series_descriptions", table,
                     "--study_id_source", "accession_number", "--series_id_source", "series_number", *RUNNER_ARGS])
    entries = _entries(out)
    assert sorted(e["study_id"] for e in entries) == sorted(accession.values())
    assert all(len(e["series"]) == 3 for e in entries) and _unmatched(out, "labels") == []
    # cut into shards of at most 2 studies: the same entries and train rows, the 1-shard files removed
    train_rows = sorted(map(str, _csv_rows(out, "labels", schemas.TRAIN_PREFIX)))
    dataset_job.run(["--output", out, "--format", "labels", "--labels_table", train, "--series_descriptions", table,
                     "--study_id_source", "accession_number", "--series_id_source", "series_number",
                     "--rows_per_shard", "2", *RUNNER_ARGS])
    shards = [json.loads(data) for data in _shards(out, "labels", schemas.LABELS_PREFIX, "json")]
    assert len(shards) >= len(entries) / 2 and max(map(len, shards)) <= 2
    assert sorted(map(str, _entries(out))) == sorted(map(str, entries))
    assert sorted(map(str, _csv_rows(out, "labels", schemas.TRAIN_PREFIX))) == train_rows


def test_validate_names_what_is_missing(lumbar, tmp_path):
    out, _ = lumbar
    with pytest.raises(SystemExit, match="--format vlm or labels required"):
        dataset_job.run(["--output", out, *RUNNER_ARGS])
    with pytest.raises(SystemExit, match="--report_table required"):
        dataset_job.run(["--output", out, "--format", "vlm", *RUNNER_ARGS])
    with pytest.raises(SystemExit, match="does not exist"):
        dataset_job.run(["--output", out, "--format", "labels", "--labels_table", str(tmp_path / "no.csv"),
                         "--series_descriptions", str(tmp_path / "no.csv"), *RUNNER_ARGS])
    with pytest.raises(SystemExit, match="summing to 1"):
        dataset_job.run(["--output", out, "--format", "vlm", "--split", "0.9,0.9,0.1", *RUNNER_ARGS])
    with pytest.raises(SystemExit, match="holds no summary"):
        dataset_job.run(["--output", str(tmp_path), "--format", "vlm", "--report_table", "x", *RUNNER_ARGS])


def test_labels_write_a_decathlon_datalist_monai_loads(lumbar, tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    from dicom_io.monai_reader import DicomflowReader

    out, series = lumbar
    studies = list(_by_study(series))
    train = _write_csv(tmp_path / "train.csv", ["study_id", *LABELS],
                       [[st, *(_label_value(k, j) for j in range(len(LABELS)))] for k, st in enumerate(studies)])
    descriptions = [[st, s["series_instance_uid"], s["series_description"]] for st in studies
                    for s in _by_study(series)[st]]
    table = _write_csv(tmp_path / "descriptions.csv", ["study_id", "series_id", "series_description"], descriptions)
    dataset_job.run(["--output", out, "--format", "labels", "--labels_table", train, "--series_descriptions", table,
                     "--split", "0.4,0.3,0.3", "--split_salt", "s6", *RUNNER_ARGS])
    path = schemas.dataset_uri(out, "labels", schemas.DATALIST_JSON)
    classes = json.loads(_read(out, "labels", schemas.LABEL_CLASSES_JSON))
    assert classes["columns"] == sorted(LABELS) and classes["missing"] == -1
    entries = {e["study_id"]: e for e in _entries(out)}
    loaded = {key: load_decathlon_datalist(path, data_list_key=key) for key in ("training", "validation", "test")}
    assert sum(map(len, loaded.values())) == len(_csv_rows(out, "labels", schemas.TRAIN_PREFIX)) == 3 * len(studies)
    assert all(loaded.values())  # salt s6: 3 / 3 / 1 of the seven patients
    split_names = {"training": "train", "validation": "validation", "test": "test"}
    for key, items in loaded.items():
        for item in items:
            entry = entries[item["study_id"]]
            assert entry["split"] == split_names[key]
            assert item["image"] == schemas.zarr_uri(out, item["series_key"]) and storage.exists(item["image"])
            assert [classes["classes"][c][i] if i >= 0 else None for c, i in zip(classes["columns"], item["label"])] \
                == [entry["labels"][c] for c in classes["columns"]]
            assert all(isinstance(i, int) for i in item["label"])
    first = loaded["training"][0]
    image = LoadImaged(keys="image", reader=DicomflowReader(), image_only=True)(first)["image"]
    assert tuple(image.shape) == tuple(next(s for s in series if s["series_key"] == first["series_key"])["shape"][::-1])
    before = storage.read_bytes(path)
    dataset_job.run(["--output", out, "--format", "labels", "--labels_table", train, "--series_descriptions", table,
                     "--split", "0.4,0.3,0.3", "--split_salt", "s6", *RUNNER_ARGS])
    assert storage.read_bytes(path) == before  # one deterministic writer
