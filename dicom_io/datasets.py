"""Dataset builders, Beam-free: user tables joined to converted series, split by patient, every row accounted.

Two layouts: `vlm` (a report table, e.g. the PACS extract's `study_id, series_number, report_value`)
gives image-text pairs; `labels` (the RSNA lumbar spine `train.csv` + `train_series_descriptions.csv`)
gives one entry per study. A user row that does not join becomes an unmatched row with a reason.
Also the sharded, sorted writer both jobs use for their output files.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa

from dicom_io import schemas, storage, tables

ROW = "_row"  # 0-based data row of a user table, kept on every row read
JOIN_ON = ("study_instance_uid", "accession_number", "series_number+study")
STUDY_ID_SOURCES = ("study_instance_uid", "accession_number", "patient_id")
SERIES_ID_SOURCES = ("series_instance_uid", "series_number")
TEXT_MODES = ("join", "each")
TEXT_SEPARATOR = "\n\n"

# Unmatched reasons (categorical, counted in summary.json; the key is its own column).
EMPTY_KEY = "empty join key"
NO_SERIES = "no series with this key"
NOT_CONVERTED = "matching series failed conversion"
EMPTY_TEXT = "empty report text"
DUPLICATE_STUDY = "duplicate study_id in the labels table"
DUPLICATE_DESCRIPTION = "duplicate (study_id, series_id) in the series descriptions"
NO_DESCRIBED_SERIES = "no series description matched a converted series"
NO_LABELS = "study has no row in the labels table"


class TableError(ValueError):
    """A user table cannot be used: unreadable, or a named column is missing."""


# ---- user tables ----------------------------------------------------------------------------------

STREAM_BATCH_ROWS = 65_536  # Parquet rows decoded at a time while a user table is streamed


def iter_rows(uri: str) -> Iterator[dict[str, Any]]:
    """Rows of a CSV (UTF-8, header line) or Parquet table, each with its 0-based index under `_row`,
    streamed: a report table of 10 million rows never sits whole in one worker's memory."""
    try:
        with storage.open_read(uri, block_size=8 * 1024 * 1024) as fp:
            if uri.lower().endswith(".parquet"):
                batches = (b.to_pylist() for b in
                           tables.stream_parquet(fp).iter_batches(STREAM_BATCH_ROWS, use_threads=False))
                rows: Iterable[dict[str, Any]] = (row for batch in batches for row in batch)
            else:
                rows = csv.DictReader(io.TextIOWrapper(fp, encoding="utf-8-sig", newline=""))
            for i, row in enumerate(rows):
                yield {**row, ROW: i}
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise TableError(f"cannot read {uri}: {type(exc).__name__}: {exc}") from exc


def read_rows(uri: str) -> list[dict[str, Any]]:
    """Every row of a CSV or Parquet table at once (small tables, tests); see iter_rows."""
    return list(iter_rows(uri))


def iter_checked_rows(uri: str, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """iter_rows, refusing the table at its first row when it lacks one of `columns`."""
    for row in iter_rows(uri):
        if row[ROW] == 0:
            require_columns([row], columns, uri)
        yield row


def require_columns(rows: list[dict[str, Any]], columns: Iterable[str], uri: str) -> None:
    """Refuse a table that lacks a column the options name (an empty table passes)."""
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise TableError(f"{uri} has no column {', '.join(map(repr, missing))} (columns: {sorted(rows[0])})")


def normalize_key(value: Any) -> str | None:
    """Join keys compare as text: stripped; integral numbers without '.0' (CSV '5' = Parquet 5 = 5.0)."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            value = int(value)
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].lstrip("-").isdigit():
        text = text[:-2]
    return text or None


def _pair_key(*parts: Any) -> str | None:
    values = [normalize_key(p) for p in parts]
    return None if any(v is None for v in values) else "|".join(values)  # type: ignore[arg-type]


def unmatched_row(table: str, row: dict[str, Any], key: str | None, reason: str) -> dict[str, Any]:
    """One row of unmatched.csv: which table, which data row, the key it had, why, and the row itself."""
    record = {k: v for k, v in row.items() if k != ROW}
    return {"table": table, "row": row.get(ROW), "key": key or "", "reason": reason,
            "record": json.dumps(record, sort_keys=True, default=str)}


# ---- splits ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitSpec:
    """Fractions of (train, validation, test) and the salt of the patient hash."""

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    salt: str = "dicomflow"


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); three non-negative numbers summing to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise ValueError(f"--split {text!r}: expected three numbers like 0.8,0.1,0.1") from exc
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"--split {text!r}: expected three non-negative fractions summing to 1")
    return values  # type: ignore[return-value]


def split_group(series: dict[str, Any]) -> str:
    """What a split keeps together: (0010,0020) PatientID; the study when a series has none."""
    patient = normalize_key(series.get("patient_id"))
    if patient:
        return f"patient:{patient}"
    return f"study:{series.get('study_instance_uid') or series.get('series_key')}"


def split_of(group: str, spec: SplitSpec) -> str:
    """train / validation / test from a salted SHA-256 of the group: stable, and one group one split."""
    digest = hashlib.sha256(f"{spec.salt}\x00{group}".encode("utf-8", "surrogatepass")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    train, validation, _ = spec.fractions
    if u < train:
        return schemas.SPLITS[0]
    return schemas.SPLITS[1] if u < train + validation else schemas.SPLITS[2]


# ---- images of a series -----------------------------------------------------------------------------

def images_of(output: str, volume_path: str, slices_path: str, preview_paths: Sequence[str] = (),
              middle_path: str = "") -> dict[str, Any]:
    """The images a dataset row points at, given relative to OUT: as `*_path` (contract 3) and as URIs under OUT."""
    uri = functools.partial(schemas.resolve_output_path, output)
    return {"volume_uri": uri(volume_path), "slices_uri": uri(slices_path),
            "preview_uri": uri(middle_path) if middle_path else None, "image_uris": [uri(p) for p in preview_paths],
            "volume_path": volume_path, "slices_path": slices_path, "preview_path": middle_path or None,
            "image_paths": list(preview_paths)}


def preview_path_of(output: str, row: dict[str, Any]) -> str:
    """A slices CSV row's preview relative to OUT: `preview_path`, or (contract 2) from `preview_uri`; "" without."""
    if row.get("preview_path"):
        return row["preview_path"]
    return schemas.relative_to_output(output, row["preview_uri"]) if row.get("preview_uri") else ""


def series_paths(output: str, series_key: str) -> tuple[str, str]:
    """(volume, slices CSV) of a committed series, relative to OUT (the volume in the store it was written in)."""
    return (schemas.relative_to_output(output, schemas.committed_volume_uri(output, series_key)),
            schemas.relative_to_output(output, schemas.slices_csv_uri(output, series_key)))


def series_images(output: str, series_key: str) -> dict[str, Any]:
    """The images of a converted series: the volume, the slices CSV and, when convert wrote previews, every
    slice preview (z order, volume after volume for 4D) and the middle one of the first volume."""
    slices_uri = schemas.slices_csv_uri(output, series_key)
    slices = tables.parse_slices_csv(storage.read_bytes(slices_uri))
    previews = [preview_path_of(output, r) for r in slices]
    first_volume = [p for p, r in zip(previews, slices) if not r["t_index"]]
    middle = first_volume[len(first_volume) // 2] if first_volume else ""
    return images_of(output, *series_paths(output, series_key), [p for p in previews if p], middle)


# ---- vlm: report table x series ---------------------------------------------------------------------

@dataclass(frozen=True)
class VlmSpec:
    """How report rows find their series, and how texts become pairs."""

    join_on: str = "study_instance_uid"
    report_key_column: str = "study_id"
    report_text_column: str = "report_value"
    report_series_column: str = "series_number"  # with join_on series_number+study
    study_id_source: str = "study_instance_uid"  # the study side of series_number+study
    text_mode: str = "join"  # join: one pair per series; each: one pair per distinct text
    split: SplitSpec = SplitSpec()

    @property
    def report_columns(self) -> tuple[str, ...]:
        extra = (self.report_series_column,) if self.join_on == "series_number+study" else ()
        return (self.report_key_column, self.report_text_column) + extra


def series_report_key(series: dict[str, Any], spec: VlmSpec) -> str | None:
    """The join key a summary series row offers the report table."""
    if spec.join_on == "series_number+study":
        return _pair_key(series.get(spec.study_id_source), series.get("series_number"))
    return normalize_key(series.get(spec.join_on))


def report_key(row: dict[str, Any], spec: VlmSpec) -> str | None:
    """The join key of one report row."""
    if spec.join_on == "series_number+study":
        return _pair_key(row.get(spec.report_key_column), row.get(spec.report_series_column))
    return normalize_key(row.get(spec.report_key_column))


def _texts(rows: list[dict[str, Any]], column: str) -> list[tuple[str, list[int]]]:
    """Distinct non-empty texts in table order, each with the rows that carry it."""
    found: dict[str, list[int]] = {}
    for row in sorted(rows, key=lambda r: r[ROW]):
        text = str(row.get(column) or "").strip()
        if text:
            found.setdefault(text, []).append(row[ROW])
    return list(found.items())


def join_reports(key: str | None, series: list[dict[str, Any]], reports: list[dict[str, Any]],
                 spec: VlmSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One join key's series and report rows -> (pair stubs: series row + text + rows, unmatched rows)."""
    if not reports:
        return [], []
    if key is None:
        return [], [unmatched_row("report", r, None, EMPTY_KEY) for r in reports]
    converted = sorted((s for s in series if s.get("status") == schemas.CONVERTED), key=lambda s: s["series_key"])
    if not converted:
        reason = NOT_CONVERTED if series else NO_SERIES
        return [], [unmatched_row("report", r, key, reason) for r in reports]
    unmatched = [unmatched_row("report", r, key, EMPTY_TEXT) for r in reports
                 if not str(r.get(spec.report_text_column) or "").strip()]
    texts = _texts(reports, spec.report_text_column)
    if spec.text_mode == "join" and texts:
        texts = [(TEXT_SEPARATOR.join(t for t, _ in texts), sorted(i for _, rows in texts for i in rows))]
    stubs = [{"series": s, "report_key": key, "report_text": text, "report_rows": rows}
             for s in converted for text, rows in texts]
    return stubs, unmatched


def pair_id(series_key: str, text: str) -> str:
    return hashlib.sha1(f"{series_key}\x00{text}".encode("utf-8", "surrogatepass")).hexdigest()[:20]


def pair_record(stub: dict[str, Any], images: dict[str, Any], spec: SplitSpec) -> dict[str, Any]:
    """One image-text pair (a row of pairs-*.jsonl and pairs-*.parquet)."""
    s = stub["series"]
    return {
        "pair_id": pair_id(s["series_key"], stub["report_text"]), "split": split_of(split_group(s), spec),
        "series_key": s["series_key"], "series_instance_uid": s.get("series_instance_uid"),
        "study_instance_uid": s.get("study_instance_uid"), "accession_number": s.get("accession_number"),
        "series_number": s.get("series_number"), "patient_id": s.get("patient_id"), "modality": s.get("modality"),
        "series_description": s.get("series_description"), **images,
        "report_key": stub["report_key"], "report_rows": stub["report_rows"], "report_text": stub["report_text"],
    }


# ---- labels: RSNA lumbar spine layout -------------------------------------------------------------

@dataclass(frozen=True)
class LabelSpec:
    """Which series column the tables' study_id and series_id are (RSNA: the DICOM UIDs themselves)."""

    study_id_source: str = "study_instance_uid"
    series_id_source: str = "series_instance_uid"
    split: SplitSpec = SplitSpec()


STUDY_ID, SERIES_ID, DESCRIPTION = "study_id", "series_id", "series_description"


def series_label_key(series: dict[str, Any], spec: LabelSpec) -> str | None:
    """(study, series) of a summary series row, in the label tables' terms."""
    return _pair_key(series.get(spec.study_id_source), series.get(spec.series_id_source))


def description_key(row: dict[str, Any]) -> str | None:
    """(study_id, series_id) of a train_series_descriptions.csv row."""
    return _pair_key(row.get(STUDY_ID), row.get(SERIES_ID))


def label_columns(row: dict[str, Any]) -> list[str]:
    """Condition columns of train.csv (every column but study_id), in table order."""
    return [c for c in row if c not in (STUDY_ID, ROW)]


def join_descriptions(key: str | None, series: list[dict[str, Any]], descriptions: list[dict[str, Any]]
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One (study, series) key -> (matched: description row + each converted stack, unmatched rows)."""
    if not descriptions:
        return [], []
    if key is None:
        return [], [unmatched_row("series_descriptions", d, None, EMPTY_KEY) for d in descriptions]
    converted = sorted((s for s in series if s.get("status") == schemas.CONVERTED), key=lambda s: s["series_key"])
    if not converted:
        reason = NOT_CONVERTED if series else NO_SERIES
        return [], [unmatched_row("series_descriptions", d, key, reason) for d in descriptions]
    first, *others = sorted(descriptions, key=lambda d: d[ROW])
    matched = [{"study_id": normalize_key(first.get(STUDY_ID)), "series_id": normalize_key(first.get(SERIES_ID)),
                "description": str(first.get(DESCRIPTION) or "").strip(), "description_row": first, "series": s}
               for s in converted]
    return matched, [unmatched_row("series_descriptions", d, key, DUPLICATE_DESCRIPTION) for d in others]


def _series_entry(match: dict[str, Any], images: dict[str, Any]) -> dict[str, Any]:
    s = match["series"]
    return {"series_id": match["series_id"], "series_key": s["series_key"],
            "series_instance_uid": s.get("series_instance_uid"), "stack_index": s.get("stack_index"),
            "n_slices": s.get("n_slices"), "shape": s.get("shape"), "spacing": s.get("spacing"), **images}


def study_entry(study_id: str | None, labels: list[dict[str, Any]], matched: list[dict[str, Any]],
                spec: LabelSpec) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """One study's label rows and matched series (each with its `images`) -> (dataset.json entry, unmatched)."""
    labels = sorted(labels, key=lambda r: r[ROW])
    unmatched = [unmatched_row("labels", r, study_id, DUPLICATE_STUDY) for r in labels[1:]]
    if not labels:
        rows = {m["description_row"][ROW]: m["description_row"] for m in matched}  # one per row, not per stack
        return None, unmatched + [unmatched_row("series_descriptions", r, study_id, NO_LABELS) for r in rows.values()]
    if not matched:
        return None, unmatched + [unmatched_row("labels", labels[0], study_id, NO_DESCRIBED_SERIES)]
    matched = sorted(matched, key=lambda m: (m["description"], m["series_id"] or "", m["series"]["series_key"]))
    by_description: dict[str, list[dict[str, Any]]] = {}
    for m in matched:
        by_description.setdefault(m["description"], []).append(_series_entry(m, m["images"]))
    group = min(split_group(m["series"]) for m in matched)
    row = labels[0]
    entry = {"study_id": study_id, "patient_id": matched[0]["series"].get("patient_id"),
             "split": split_of(group, spec.split), "series": by_description,
             "labels": {c: (None if row[c] in (None, "") else row[c]) for c in label_columns(row)}}
    return entry, unmatched


TRAIN_COLUMNS = ("study_id", "series_id", "series_description", "series_key", "patient_id", "split", "volume_uri",
                 "slices_uri", "preview_uri", "n_slices", "volume_path", "slices_path", "preview_path")  # contract 3


def train_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat training rows of one study: one per series stack, image paths then every label."""
    rows = []
    for description, series in entry["series"].items():
        for s in series:
            rows.append({"study_id": entry["study_id"], "series_id": s["series_id"], "series_description": description,
                         "series_key": s["series_key"], "patient_id": entry["patient_id"], "split": entry["split"],
                         "volume_uri": s["volume_uri"], "slices_uri": s["slices_uri"],
                         "preview_uri": s["preview_uri"] or "", "n_slices": s["n_slices"],
                         "volume_path": s["volume_path"], "slices_path": s["slices_path"],
                         "preview_path": s["preview_path"] or "", **entry["labels"]})
    return rows


# ---- output files ---------------------------------------------------------------------------------

def encode_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> bytes:
    """CSV bytes, header first, None as empty, '\\n' line ends."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buffer.getvalue().encode("utf-8", "surrogateescape")


def encode_json(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")


def unmatched_reason(row: dict[str, Any]) -> tuple[str, str]:
    """(table, reason) of an unmatched row: what summary.json counts."""
    return row["table"], row["reason"]


def summary(fmt: str, counts: dict[str, Any], unmatched_by_reason: dict[tuple[str, str], int]) -> dict[str, Any]:
    """summary.json: the job's counts plus unmatched rows by table and reason (never dropped in silence)."""
    by_reason: dict[str, dict[str, int]] = {}
    for (table, reason), n in sorted(unmatched_by_reason.items()):
        by_reason.setdefault(table, {})[reason] = n
    return {"format": fmt, **counts, "unmatched": sum(unmatched_by_reason.values()), "unmatched_by_reason": by_reason}


def encode_unmatched(rows: list[dict[str, Any]]) -> bytes:
    """One unmatched CSV shard: sorted by table, row, reason."""
    ordered = sorted(rows, key=lambda r: tuple(str(r.get(k) or "") for k in ("table", "row", "reason", "record")))
    return encode_csv(ordered, schemas.UNMATCHED_COLUMNS)


def encode_entries(entries: list[dict[str, Any]]) -> bytes:
    """One dataset JSON shard: the study entries sorted by study_id, as a JSON array."""
    return encode_json(sorted(entries, key=lambda e: e["study_id"]))


def encode_train_rows(entries: list[dict[str, Any]]) -> bytes:
    """One train CSV shard: the flat rows of the entries (study_id order), image paths then every label."""
    entries = sorted(entries, key=lambda e: e["study_id"])
    labels = list(entries[0]["labels"]) if entries else []
    return encode_csv([r for e in entries for r in train_rows(e)], TRAIN_COLUMNS + tuple(labels))


# ---- Decathlon datalist (MONAI load_decathlon_datalist) ------------------------------------------------

DATALIST_KEYS = {"train": "training", "validation": "validation", "test": "test"}  # split -> datalist key
NO_CLASS = -1  # a label cell left empty


def datalist_image(output: str, uri: str) -> str:
    """A volume URI under OUT as a path relative to OUT/datasets/labels/ (MONAI joins it to the datalist's folder)."""
    root = output.rstrip("/") + "/"
    return "../../" + uri[len(root):] if uri.startswith(root) else uri


def datalist_items(entry: dict[str, Any], output: str) -> list[dict[str, Any]]:
    """One study entry -> one datalist item per series stack: image (relative), split, ids, label values."""
    return [{"image": datalist_image(output, s["volume_uri"]), "split": entry["split"], "study_id": entry["study_id"],
             "series_key": s["series_key"], "series_description": description, "label_values": entry["labels"]}
            for description, series in sorted(entry["series"].items()) for s in series]


def label_classes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Each label column's distinct values, sorted: a value's class index is its position."""
    columns = sorted({c for item in items for c in item["label_values"]})
    classes = {c: sorted({str(i["label_values"][c]) for i in items if i["label_values"].get(c) not in (None, "")})
               for c in columns}
    return {"columns": columns, "classes": classes, "missing": NO_CLASS}


def class_index(value: Any, classes: list[str]) -> int:
    return NO_CLASS if value in (None, "") else classes.index(str(value))


def datalist(items: list[dict[str, Any]], classes: dict[str, Any]) -> dict[str, Any]:
    """datalist.json: items by split, `label` = class index (one column) or indices in `columns` order."""
    columns = classes["columns"]
    lists: dict[str, list[dict[str, Any]]] = {key: [] for key in DATALIST_KEYS.values()}
    for item in sorted(items, key=lambda i: (i["study_id"], i["series_description"], i["series_key"])):
        labels = [class_index(item["label_values"].get(c), classes["classes"][c]) for c in columns]
        record = {k: v for k, v in item.items() if k != "split"}
        lists[DATALIST_KEYS[item["split"]]].append({**record, "label": labels[0] if len(labels) == 1 else labels})
    return {"name": "dicomflow labels", "label_columns": columns, **lists,
            **{f"num{key[0].upper()}{key[1:]}": len(value) for key, value in lists.items()}}
