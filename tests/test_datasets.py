"""dicom_io.datasets: keys, joins, splits, unmatched rows and the sharded writer, without Beam."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_io.tables import decode_parquet
from dicom_io import datasets, schemas, storage, tables
from dicom_io.datasets import ROW, LabelSpec, SplitSpec, VlmSpec
from dicom_io.errors import OutsideOutputError


def test_normalize_key_compares_csv_text_and_parquet_numbers():
    assert datasets.normalize_key(5) == datasets.normalize_key("5") == datasets.normalize_key(5.0) == "5"
    assert datasets.normalize_key(" 5.0 ") == "5" and datasets.normalize_key("1.2.840.5") == "1.2.840.5"
    assert datasets.normalize_key("") is None and datasets.normalize_key(float("nan")) is None
    assert datasets.normalize_key(None) is None and datasets.normalize_key("-3.0") == "-3"


def test_parse_fractions():
    assert datasets.parse_fractions("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    for bad in ("0.8,0.1", "0.5,0.5,0.5", "a,b,c", "1.2,-0.1,-0.1"):
        with pytest.raises(ValueError):
            datasets.parse_fractions(bad)


def test_split_is_by_patient_deterministic_and_near_the_fractions():
    spec = SplitSpec((0.8, 0.1, 0.1), "salt-a")
    groups = [f"patient:P{i:05d}" for i in range(5000)]
    splits = [datasets.split_of(g, spec) for g in groups]
    assert splits == [datasets.split_of(g, spec) for g in groups]  # stable
    counts = Counter(splits)
    assert abs(counts["train"] / 5000 - 0.8) < 0.03 and abs(counts["test"] / 5000 - 0.1) < 0.02
    resalted = [datasets.split_of(g, SplitSpec((0.8, 0.1, 0.1), "salt-b")) for g in groups]
    assert resalted != splits
    assert {datasets.split_of(g, SplitSpec((0.0, 0.0, 1.0))) for g in groups[:50]} == {"test"}


def test_every_series_of_a_patient_lands_in_one_split():
    series = [{"series_key": f"s{i}", "patient_id": f"P{i % 7}", "study_instance_uid": f"st{i % 13}"} for i in range(200)]
    spec = SplitSpec((0.4, 0.3, 0.3), "x")
    by_patient: dict[str, set[str]] = {}
    for s in series:
        by_patient.setdefault(s["patient_id"], set()).add(datasets.split_of(datasets.split_group(s), spec))
    assert all(len(v) == 1 for v in by_patient.values())
    assert len({next(iter(v)) for v in by_patient.values()}) > 1
    assert datasets.split_group({"patient_id": "", "study_instance_uid": "1.2"}) == "study:1.2"


def _series(key, study="1.2.3", status="converted", **extra):
    return {"series_key": key, "study_instance_uid": study, "status": status, "patient_id": "P1",
            "accession_number": "ACC1", "series_number": 4, "series_instance_uid": f"uid-{key}", **extra}


def _report(row, text, key="1.2.3", series_number=4):
    return {ROW: row, "study_id": key, "series_number": series_number, "report_value": text}


def test_join_reports_one_pair_per_series_with_distinct_texts_in_table_order():
    spec = VlmSpec()
    reports = [_report(2, "Impression: fine."), _report(0, "Findings: x."), _report(1, "Findings: x."), _report(3, " ")]
    stubs, unmatched = datasets.join_reports("1.2.3", [_series("b"), _series("a"), _series("f", status="failed")],
                                             reports, spec)
    assert [s["series"]["series_key"] for s in stubs] == ["a", "b"]
    assert stubs[0]["report_text"] == "Findings: x.\n\nImpression: fine." and stubs[0]["report_rows"] == [0, 1, 2]
    assert [(u["row"], u["reason"]) for u in unmatched] == [(3, datasets.EMPTY_TEXT)]
    each, _ = datasets.join_reports("1.2.3", [_series("a")], reports, VlmSpec(text_mode="each"))
    assert [(s["report_text"], s["report_rows"]) for s in each] == [("Findings: x.", [0, 1]), ("Impression: fine.", [2])]


def test_join_reports_unmatched_reasons():
    spec = VlmSpec()
    rows = [_report(0, "t")]
    assert datasets.join_reports("k", [], rows, spec)[1][0]["reason"] == datasets.NO_SERIES
    assert datasets.join_reports("k", [_series("a", status="failed")], rows, spec)[1][0]["reason"] == datasets.NOT_CONVERTED
    [empty] = datasets.join_reports(None, [], rows, spec)[1]
    assert empty["reason"] == datasets.EMPTY_KEY and empty["table"] == "report" and empty["key"] == ""
    assert json.loads(empty["record"]) == {"study_id": "1.2.3", "series_number": 4, "report_value": "t"}
    assert datasets.join_reports("k", [_series("a")], [], spec) == ([], [])  # a series without a report: no row


def test_join_keys_for_each_join_on():
    series = _series("a")
    assert datasets.series_report_key(series, VlmSpec()) == "1.2.3"
    assert datasets.series_report_key(series, VlmSpec(join_on="accession_number")) == "ACC1"
    both = VlmSpec(join_on="series_number+study")
    assert datasets.series_report_key(series, both) == "1.2.3|4" == datasets.report_key(_report(0, "t", series_number="4"), both)
    by_accession = VlmSpec(join_on="series_number+study", study_id_source="accession_number")
    assert datasets.series_report_key(series, by_accession) == "ACC1|4"
    assert datasets.report_key({"study_id": "", "series_number": 4}, both) is None
    assert both.report_columns == ("study_id", "report_value", "series_number")


def test_pair_record_has_the_schema_columns():
    stub = {"series": _series("a", modality="CT", series_description="AX"), "report_key": "1.2.3",
            "report_text": "t", "report_rows": [0]}
    images = datasets.images_of("/o", "volumes/a.zarr", "slices/a.csv")
    assert images["volume_uri"] == "/o/volumes/a.zarr" and images["volume_path"] == "volumes/a.zarr"
    record = datasets.pair_record(stub, images, SplitSpec())
    assert list(record) == schemas.VLM_PAIRS_SCHEMA.names
    pa.Table.from_pylist([record], schema=schemas.VLM_PAIRS_SCHEMA)  # types fit
    assert record["pair_id"] == datasets.pair_record(stub, images, SplitSpec())["pair_id"]


def _desc(row, study, series, description):
    return {ROW: row, "study_id": study, "series_id": series, "series_description": description}


def test_labels_join_descriptions_then_study():
    spec = LabelSpec()
    series = [_series("s00", series_instance_uid="77"), _series("s01", series_instance_uid="77")]  # two stacks
    assert datasets.series_label_key(series[0], spec) == "1.2.3|77"
    assert datasets.description_key(_desc(0, "1.2.3", 77, "Axial T2")) == "1.2.3|77"
    matched, unmatched = datasets.join_descriptions("1.2.3|77", series, [_desc(4, "1.2.3", "77", "Axial T2"),
                                                                         _desc(9, "1.2.3", "77", "Axial T2")])
    assert [m["series"]["series_key"] for m in matched] == ["s00", "s01"]
    assert [(u["row"], u["reason"]) for u in unmatched] == [(9, datasets.DUPLICATE_DESCRIPTION)]
    images = datasets.images_of("/o", "volumes/v.zarr", "slices/v.csv", ["previews/p.png"], "previews/p.png")
    matched = [{**m, "images": images} for m in matched]
    labels = [{ROW: 0, "study_id": "1.2.3", "spinal_canal_stenosis_l1_l2": "Moderate", "left_x": ""},
              {ROW: 5, "study_id": "1.2.3", "spinal_canal_stenosis_l1_l2": "Severe", "left_x": "Severe"}]
    entry, unmatched = datasets.study_entry("1.2.3", labels, matched, spec)
    assert entry["labels"] == {"spinal_canal_stenosis_l1_l2": "Moderate", "left_x": None}
    assert list(entry["series"]) == ["Axial T2"] and len(entry["series"]["Axial T2"]) == 2
    assert [(u["row"], u["reason"]) for u in unmatched] == [(5, datasets.DUPLICATE_STUDY)]
    rows = datasets.train_rows(entry)
    assert [r["series_key"] for r in rows] == ["s00", "s01"] and rows[0]["preview_uri"] == "/o/previews/p.png"
    assert rows[0]["preview_path"] == "previews/p.png" and rows[0]["volume_path"] == "volumes/v.zarr"
    assert set(datasets.TRAIN_COLUMNS) <= set(rows[0])
    assert rows[0]["spinal_canal_stenosis_l1_l2"] == "Moderate"
    none, lost = datasets.study_entry("1.2.3", [], matched, spec)
    assert none is None and [(u["table"], u["reason"]) for u in lost] == [("series_descriptions", datasets.NO_LABELS)]
    none, lost = datasets.study_entry("9", labels[:1], [], spec)
    assert none is None and [u["reason"] for u in lost] == [datasets.NO_DESCRIBED_SERIES]


def test_read_rows_csv_and_parquet_with_their_row_index(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeffstudy_id,report_value\n1,a\n2,\"b, c\"\n", encoding="utf-8")
    assert datasets.read_rows(str(path)) == [{"study_id": "1", "report_value": "a", ROW: 0},
                                             {"study_id": "2", "report_value": "b, c", ROW: 1}]
    pq.write_table(pa.table({"study_id": [7, 8], "report_value": ["x", None]}), tmp_path / "t.parquet")
    rows = datasets.read_rows(str(tmp_path / "t.parquet"))
    assert rows[1] == {"study_id": 8, "report_value": None, ROW: 1}
    with pytest.raises(datasets.TableError, match="no column 'text'"):
        datasets.require_columns(rows, ["study_id", "text"], "t.parquet")
    with pytest.raises(datasets.TableError, match="cannot read"):
        datasets.read_rows(str(tmp_path / "missing.csv"))


def test_series_images_use_the_previews_of_the_slices_csv_relative_to_out(tmp_path):
    out = str(tmp_path)
    header = ",".join(schemas.SLICE_COLUMNS)
    plain = "\n".join([header] + [f"{z},u{z},{z + 1},0,0,{z},/in/{z},md5,0," for z in range(3)]) + "\n"
    storage.write_bytes(schemas.slices_csv_uri(out, "k"), plain.encode())
    images = datasets.series_images(out, "k")
    assert images == {"volume_uri": schemas.zarr_uri(out, "k"), "slices_uri": schemas.slices_csv_uri(out, "k"),
                      "preview_uri": None, "image_uris": [], "volume_path": "volumes/k.zarr",
                      "slices_path": "slices/k.csv", "preview_path": None, "image_paths": []}
    contract_2 = "\n".join([header.removesuffix(",preview_path")] + [
        f"{z},u{z},{z + 1},0,0,{z},/in/{z},md5,0,{os.path.join(out, 'previews', f'p{z}.png')}" for z in range(3)])
    storage.write_bytes(schemas.slices_csv_uri(out, "k"), (contract_2 + "\n").encode())
    images = datasets.series_images(out, "k")
    assert images["preview_uri"] == os.path.join(out, "previews", "p1.png") and images["preview_path"] == "previews/p1.png"
    assert images["image_paths"] == ["previews/p0.png", "previews/p1.png", "previews/p2.png"]
    moved = "\n".join([header] + [f"{z},u{z},{z + 1},0,0,{z},/in/{z},md5,0,/old/out/previews/p{z}.png,0,k,previews/p{z}.png"
                                    for z in range(3)])  # contract 3, written under another OUT: the paths win
    storage.write_bytes(schemas.slices_csv_uri(out, "k"), (moved + "\n").encode())
    assert datasets.series_images(out, "k")["image_uris"] == [os.path.join(out, "previews", f"p{z}.png") for z in range(3)]
    storage.write_bytes(schemas.slices_csv_uri(out, "k"), plain.replace("md5,0,\n", "md5,0,/elsewhere/p.png\n").encode())
    with pytest.raises(OutsideOutputError, match="not under the output"):
        datasets.series_images(out, "k")


def test_sharded_files_are_sorted_deterministic_and_replace_other_shard_counts(tmp_path):
    prefix = str(tmp_path / "pairs")
    rows = [{"pair_id": "b", "n": 2}, {"pair_id": "a", "n": 1}]
    data = tables.encode_jsonl(rows, ("pair_id",))
    assert data == tables.encode_jsonl(rows[::-1], ("pair_id",))
    assert [json.loads(line)["pair_id"] for line in data.decode().splitlines()] == ["a", "b"]
    for i in range(2):
        tables.write_shard_file(prefix, "jsonl", i, 2, data)
    tables.write_shard_file(prefix, "jsonl", 0, 1, data)
    assert storage.glob(prefix + "-*.jsonl") == [prefix + "-00000-of-00001.jsonl"]
    assert tables.shard_of_key("x", 7) == tables.shard_of_key("x", 7) < 7
    schema = pa.schema([("pair_id", pa.string()), ("n", pa.int64())])
    parquet = tables.encode_parquet(rows, schema, ("pair_id",))
    assert parquet == tables.encode_parquet(rows[::-1], schema, ("pair_id",))
    assert decode_parquet(parquet).column("pair_id").to_pylist() == ["a", "b"]


def test_unmatched_csv_and_summary():
    unmatched = [datasets.unmatched_row("report", {ROW: 3, "study_id": "x"}, "x", datasets.NO_SERIES),
                 datasets.unmatched_row("labels", {ROW: 1, "study_id": "y"}, "y", datasets.NO_DESCRIBED_SERIES)]
    text = datasets.encode_csv(unmatched, schemas.UNMATCHED_COLUMNS).decode()
    assert list(csv.DictReader(io.StringIO(text)))[0]["reason"] == datasets.NO_SERIES
    summary = datasets.summary("vlm", {"pairs": 3}, Counter(map(datasets.unmatched_reason, unmatched)))
    assert summary["unmatched"] == 2 and summary["pairs"] == 3
    assert summary["unmatched_by_reason"] == {"report": {datasets.NO_SERIES: 1}, "labels": {datasets.NO_DESCRIBED_SERIES: 1}}


def test_user_tables_stream_and_are_refused_at_their_first_row(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("study_id,report_value\n" + "".join(f"{i},\"line {i}\nsecond line\"\n" for i in range(3000)))
    rows = datasets.iter_checked_rows(str(path), ["study_id"])
    assert next(rows) == {"study_id": "0", "report_value": "line 0\nsecond line", ROW: 0}  # quoted newline kept
    assert sum(1 for _ in rows) == 2999
    pq.write_table(pa.table({"study_id": list(range(70_000))}), tmp_path / "big.parquet")
    assert [r[ROW] for r in datasets.iter_rows(str(tmp_path / "big.parquet"))][-2:] == [69_998, 69_999]
    with pytest.raises(datasets.TableError, match="no column 'text'"):
        next(datasets.iter_checked_rows(str(path), ["study_id", "text"]))


def test_series_images_of_a_4d_series_use_the_first_volume_middle_preview(tmp_path):
    out = str(tmp_path)
    header = ",".join(schemas.SLICE_COLUMNS)
    mid = os.path.join(out, "previews", "mid.png")
    rows = [f"{z},u{t}{z},{z + 1},0,0,{z},/in/{t},md5,{z},{mid if (t, z) == (0, 1) else ''},{t}"
            for t in range(2) for z in range(3)]  # --previews=middle on a (2, 3, y, x) array
    storage.write_bytes(schemas.slices_csv_uri(out, "k4"), ("\n".join([header] + rows) + "\n").encode())
    images = datasets.series_images(out, "k4")
    assert images["preview_uri"] == mid and images["image_uris"] == [mid] and images["preview_path"] == "previews/mid.png"


def test_datalist_classes_are_sorted_values_and_empty_cells_are_minus_one():
    def item(study, split, value):
        return {"image": f"../../volumes/{study}.zarr", "split": split, "study_id": study, "series_key": study,
                "series_description": "Axial T2", "label_values": {"grade": value}}

    items = [item("b", "train", "Severe"), item("a", "train", "Moderate"), item("c", "test", None),
             item("d", "validation", "Moderate")]
    classes = datasets.label_classes(items)
    assert classes == {"columns": ["grade"], "classes": {"grade": ["Moderate", "Severe"]}, "missing": -1}
    data = datasets.datalist(items, classes)
    assert [(i["study_id"], i["label"]) for i in data["training"]] == [("a", 0), ("b", 1)]  # one column: an int
    assert data["test"][0]["label"] == -1 and data["numValidation"] == 1 and "split" not in data["training"][0]
    assert datasets.datalist_image("/o", "/o/volumes/k.zarr") == "../../volumes/k.zarr"
