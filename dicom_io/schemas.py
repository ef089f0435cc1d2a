"""The output contract, written once: layout under OUT, table columns and their types.

Every pipeline builds paths and rows through this module (README: "Output contract").
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from dicom_io import storage

# ---- layout under OUT -------------------------------------------------------------------
VOLUMES_DIR, SERIES_DIR, SLICES_DIR, SUMMARY_DIR = "volumes", "series", "slices", "summary"
SUMMARY_SERIES_PREFIX, SUMMARY_INSTANCES_PREFIX = "series", "instances"


def zarr_uri(output: str, key: str) -> str:
    return storage.join(output, VOLUMES_DIR, f"{key}.zarr")


def series_json_uri(output: str, key: str) -> str:
    """The commit record: written last, so its presence means the series is complete."""
    return storage.join(output, SERIES_DIR, f"{key}.json")


def slices_csv_uri(output: str, key: str) -> str:
    return storage.join(output, SLICES_DIR, f"{key}.csv")


def table_prefix(output: str, name: str) -> str:
    """Prefix of a sharded table: OUT/summary/{name} -> {name}-00000-of-00001.parquet."""
    return storage.join(output, SUMMARY_DIR, name)


# ---- statuses ---------------------------------------------------------------------------
CONVERTED, SKIPPED, FAILED = "converted", "skipped", "failed"

# ---- slices CSV -------------------------------------------------------------------------
SLICE_COLUMNS = ("z_index", "sop_instance_uid", "instance_number", "ipp_x", "ipp_y", "ipp_z",
                 "source_uri", "pixel_md5", "frame_index")

# ---- series-level tags: (DICOM keyword, column, arrow type) -----------------------------
TAG_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("PatientID", "patient_id", pa.string()),
    ("PatientSex", "patient_sex", pa.string()),
    ("PatientAge", "patient_age", pa.string()),
    ("StudyDate", "study_date", pa.string()),
    ("SeriesDate", "series_date", pa.string()),
    ("AccessionNumber", "accession_number", pa.string()),
    ("Manufacturer", "manufacturer", pa.string()),
    ("ManufacturerModelName", "manufacturer_model_name", pa.string()),
    ("BodyPartExamined", "body_part_examined", pa.string()),
    ("SeriesDescription", "series_description", pa.string()),
    ("SeriesNumber", "series_number", pa.int64()),
    ("Rows", "rows", pa.int64()),
    ("Columns", "columns", pa.int64()),
    ("PixelSpacing", "pixel_spacing", pa.list_(pa.float64())),
    ("SliceThickness", "slice_thickness", pa.float64()),
    ("RescaleSlope", "rescale_slope", pa.float64()),
    ("RescaleIntercept", "rescale_intercept", pa.float64()),
    ("RescaleType", "rescale_type", pa.string()),
    ("WindowCenter", "window_center", pa.list_(pa.float64())),
    ("WindowWidth", "window_width", pa.list_(pa.float64())),
    ("ConvolutionKernel", "convolution_kernel", pa.string()),
    ("KVP", "kvp", pa.float64()),
    ("PhotometricInterpretation", "photometric_interpretation", pa.string()),
    ("FrameOfReferenceUID", "frame_of_reference_uid", pa.string()),
)

SERIES_SCHEMA = pa.schema(
    [
        ("series_key", pa.string()),
        ("series_instance_uid", pa.string()),
        ("study_instance_uid", pa.string()),
        ("stack_index", pa.int64()),
        ("modality", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("n_slices", pa.int64()),
        ("shape", pa.list_(pa.int64())),
        ("spacing", pa.list_(pa.float64())),
        ("geometry", pa.string()),
        ("zarr_uri", pa.string()),
        ("dtype", pa.string()),
        ("split_by", pa.list_(pa.string())),
        ("stack_attributes", pa.string()),
        ("order_by", pa.string()),
        ("spacing_min", pa.float64()),
        ("spacing_max", pa.float64()),
        ("max_gap", pa.float64()),
        ("tilt_degrees", pa.float64()),
        ("n_source_files", pa.int64()),
    ]
    + [(column, typ) for _, column, typ in TAG_COLUMNS]
)

INSTANCES_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("series_instance_uid", pa.string()),
        ("series_key", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("z_index", pa.int64()),
    ]
)


def _coerce(value: Any, typ: pa.DataType) -> Any:
    if value is None or value == "":
        return None
    try:
        if pa.types.is_list(typ):
            values = value if isinstance(value, list) else [value]
            return [float(v) for v in values]
        if pa.types.is_integer(typ):
            return int(value[0] if isinstance(value, list) else value)
        if pa.types.is_floating(typ):
            return float(value[0] if isinstance(value, list) else value)
    except (TypeError, ValueError):
        return None
    return "\\".join(map(str, value)) if isinstance(value, list) else str(value)


def tag_columns(tags: dict[str, Any]) -> dict[str, Any]:
    """Series-level tags (pydicom keywords -> JSON values) as typed table columns."""
    return {column: _coerce(tags.get(keyword), typ) for keyword, column, typ in TAG_COLUMNS}


def instance_row(source_uri: str, status: str, reason: str = "", sop_instance_uid: str = "",
                 series_instance_uid: str = "", series_key: str = "", z_index: int | None = None) -> dict[str, Any]:
    """One row of OUT/summary/instances-*.parquet."""
    return {
        "source_uri": source_uri, "sop_instance_uid": sop_instance_uid or None,
        "series_instance_uid": series_instance_uid or None, "series_key": series_key or None,
        "status": status, "reason": reason, "z_index": z_index,
    }


def series_row(record: dict[str, Any]) -> dict[str, Any]:
    """One row of OUT/summary/series-*.parquet from a series record (the series JSON)."""
    tag_names = {column for _, column, _ in TAG_COLUMNS}
    row = {name: record.get(name) for name in SERIES_SCHEMA.names if name not in tag_names}
    row["stack_attributes"] = json.dumps(record.get("stack_attributes") or {}, sort_keys=True)
    row["split_by"] = list(record.get("split_by") or [])
    row.update(tag_columns(record.get("tags") or {}))
    return row


# ---- manifest job (pipelines.manifest): tables at the root of OUT -----------------------------
# OUT/instances-*.parquet, OUT/series-*.parquet, OUT/unreadable-*.csv, OUT/shards/series_shard_XX.csv,
# with --all_tags OUT/tags-*.parquet (wide) and OUT/tags_long-*.parquet (long).
MANIFEST_INSTANCES_PREFIX, MANIFEST_SERIES_PREFIX, UNREADABLE_PREFIX = "instances", "series", "unreadable"
TAGS_PREFIX, TAGS_LONG_PREFIX, SHARDS_DIR = "tags", "tags_long", "shards"
UNREADABLE_COLUMNS = ("uri", "size_bytes", "reason")
SHARD_COLUMNS = ("uri", "series_instance_uid", "series_key", "size_bytes")


def manifest_prefix(output: str, name: str) -> str:
    """Prefix of a manifest table: OUT/{name} -> {name}-00000-of-00001.parquet."""
    return storage.join(output, name)


def shard_csv_uri(output: str, shard: int) -> str:
    """OUT/shards/series_shard_XX.csv: the files of one convert run."""
    return storage.join(output, SHARDS_DIR, f"series_shard_{shard:02d}.csv")


MANIFEST_INSTANCES_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("mtime", pa.float64()),  # epoch seconds, as listed
        ("readable", pa.bool_()),
        ("reason", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("study_instance_uid", pa.string()),
        ("series_instance_uid", pa.string()),
        ("modality", pa.string()),
        ("sop_class_uid", pa.string()),
        ("transfer_syntax_uid", pa.string()),
        ("image_type", pa.list_(pa.string())),
        ("series_number", pa.int64()),
        ("instance_number", pa.int64()),
        ("series_description", pa.string()),
        ("rows", pa.int64()),
        ("columns", pa.int64()),
        ("number_of_frames", pa.int64()),
        ("image_position_patient", pa.list_(pa.float64())),
        ("image_orientation_patient", pa.list_(pa.float64())),
        ("pixel_spacing", pa.list_(pa.float64())),
        ("slice_thickness", pa.float64()),
        ("acquisition_number", pa.int64()),
        ("echo_time", pa.float64()),
        ("is_localizer", pa.bool_()),
    ]
)

MANIFEST_SERIES_SCHEMA = pa.schema(
    [
        ("series_instance_uid", pa.string()),
        ("study_instance_uid", pa.string()),
        ("series_key", pa.string()),  # key of stack 0, as pipelines.convert names it
        ("modality", pa.string()),
        ("series_description", pa.string()),
        ("n_instances", pa.int64()),
        ("n_bytes", pa.int64()),
        ("has_localizers", pa.bool_()),
        ("orientations", pa.list_(pa.string())),
        ("n_localizers", pa.int64()),
        ("n_images", pa.int64()),  # instances with pixel data
    ]
)

TAGS_LONG_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("column", pa.string()),  # the wide table's column
        ("tag", pa.string()),
        ("keyword", pa.string()),
        ("vr", pa.string()),
        ("vm", pa.int64()),
        ("value", pa.string()),
    ]
)


def tags_schema(columns: tuple[str, ...]) -> pa.Schema:
    """The wide tags table: `uri` then one string column per element path, the same in every shard."""
    return pa.schema([("uri", pa.string())] + [(name, pa.string()) for name in columns])
