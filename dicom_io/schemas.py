"""The output contract, written once: layout under OUT, table columns and their types.

Every pipeline builds paths and rows through this module (README: "Output contract").
Volumes are (z, y, x[, c]) or, when a series has several volumes on one grid, (t, z, y, x):
`n_volumes` and `volumes` (per-volume attributes) in the series table and JSON, `t_index` in
the slices CSV.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import pyarrow as pa

from dicom_io import storage
from dicom_io.errors import OutsideOutputError

# ---- layout under OUT -------------------------------------------------------------------
# Contract 3: every URI of something under OUT has a sibling `*_path` relative to OUT (zarr_uri -> zarr_path),
# so a moved or copied OUT keeps its links. Contract 2: every sharded table in a folder of its own
# (OUT/summary/series/series-*.parquet, ...). Contract 1 put the shards of several tables in one folder.
CONTRACT_VERSION = 3
VOLUMES_DIR, SERIES_DIR, SLICES_DIR, SUMMARY_DIR = "volumes", "series", "slices", "summary"
SUMMARY_SERIES_PREFIX, SUMMARY_INSTANCES_PREFIX = "series", "instances"


def zarr_uri(output: str, key: str) -> str:
    return storage.join(output, VOLUMES_DIR, f"{key}.zarr")


def series_json_uri(output: str, key: str) -> str:
    """The commit record: written last, so its presence means the series is complete."""
    return storage.join(output, SERIES_DIR, f"{key}.json")


def slices_csv_uri(output: str, key: str) -> str:
    return storage.join(output, SLICES_DIR, f"{key}.csv")


def _local_path(path: str) -> str:
    return os.path.abspath(path.removeprefix("file://"))


def relative_to_output(output: str, uri: str) -> str:
    """`uri` (written under OUT) as a POSIX path relative to OUT, e.g. `volumes/KEY.zarr`: a `*_path` value.

    Raises OutsideOutputError for a URI outside OUT (every output URI is under OUT by construction).
    """
    if storage.is_remote(output) or storage.is_remote(uri):
        root = output.rstrip("/") + "/"
        relative = uri[len(root):] if uri.startswith(root) else ""
    else:
        relative = os.path.relpath(_local_path(uri), _local_path(output)).replace(os.sep, "/")
    if relative in ("", ".") or ".." in relative.split("/"):
        raise OutsideOutputError(f"{uri} is not under the output {output}: a *_path names only files inside OUT")
    return relative


def resolve_output_path(output: str, path: str) -> str:
    """A `*_path` value as a URI under `output` (local, file:// or gs://), wherever OUT is now.

    An absolute path or URI (a contract-2 `*_uri` value) is returned as it is.
    """
    if not path:
        raise ValueError(f"no path to resolve under {output} (a failed series has no volume)")
    if "://" in path or os.path.isabs(path):
        return path
    return storage.join(output, *path.split("/"))


def table_folder(folder: str, name: str) -> str:
    """The prefix of a sharded table in its own folder: FOLDER/{name}/{name} -> {name}-00000-of-00001.ext."""
    return storage.join(folder, name, name)


def table_prefix(output: str, name: str) -> str:
    """Prefix of a summary table: OUT/summary/{name}/{name} -> {name}-00000-of-00001.parquet."""
    return table_folder(storage.join(output, SUMMARY_DIR), name)


# ---- statuses ---------------------------------------------------------------------------
CONVERTED, SKIPPED, FAILED = "converted", "skipped", "failed"

# ---- slices CSV -------------------------------------------------------------------------
# One row per stored plane, volume after volume: t_index is the volume (0 for 3D), z_index the slice in it.
# t_index is last: positional readers of the columns before 4D keep working.
# source_uri is the input file (outside OUT: absolute); preview_path (contract 3) is preview_uri relative to OUT.
SLICE_COLUMNS = ("z_index", "sop_instance_uid", "instance_number", "ipp_x", "ipp_y", "ipp_z",
                 "source_uri", "pixel_md5", "frame_index", "preview_uri", "t_index", "series_key",  # contract 2: key
                 "preview_path")

# ---- series-level tags: (DICOM keyword, column, arrow type) -----------------------------
TAG_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("PatientID", "patient_id", pa.string()),
    ("PatientSex", "patient_sex", pa.string()),
    ("PatientAge", "patient_age", pa.string()),
    ("StudyDate", "study_date", pa.date32()),  # contract 2: DA as a date (null when not a valid YYYYMMDD)
    ("SeriesDate", "series_date", pa.date32()),
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
        ("n_slices", pa.int64()),  # slices per volume
        ("n_volumes", pa.int64()),  # > 1: a 4D (t, z, y, x) array
        ("volumes", pa.string()),  # JSON list, one object per volume: b_value, diffusion_direction(_image), ...
        ("shape", pa.list_(pa.int64())),
        ("spacing", pa.list_(pa.float64())),
        ("affine_lps", pa.list_(pa.list_(pa.float64(), 4), 4)),  # contract 2: 4x4 rows, NaN without geometry
        ("geometry", pa.string()),
        ("zarr_uri", pa.string()),
        ("zarr_path", pa.string()),  # contract 3: zarr_uri relative to OUT (schemas.resolve_output_path)
        ("dtype", pa.string()),
        ("split_by", pa.list_(pa.string())),
        ("stack_attributes", pa.map_(pa.string(), pa.string())),  # contract 2: name -> JSON value
        ("order_by", pa.string()),
        ("spacing_min", pa.float64()),
        ("spacing_max", pa.float64()),
        ("max_gap", pa.float64()),
        ("tilt_degrees", pa.float64()),
        ("resampled_from", pa.string()),
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


def dicom_date(value: Any) -> datetime.date | None:
    """A DICOM DA value (YYYYMMDD, or the old YYYY.MM.DD) as a date; None when it is not one."""
    text = str(value[0] if isinstance(value, list) and value else value).strip().replace(".", "")
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) == 8 else None
    except ValueError:
        return None


NO_AFFINE = [[float("nan")] * 4 for _ in range(4)]  # the series table's affine_lps of a stack without geometry


def stack_attributes_of(row: dict[str, Any]) -> dict[str, Any]:
    """The `stack_attributes` of a series table row (a map of JSON values) as the dict the series JSON holds."""
    return {k: json.loads(v) for k, v in (row.get("stack_attributes") or [])}


def _coerce(value: Any, typ: pa.DataType) -> Any:
    if value is None or value == "":
        return None
    if pa.types.is_date32(typ):
        return dicom_date(value)
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
    """One row of OUT/summary/instances/instances-*.parquet."""
    return {
        "source_uri": source_uri, "sop_instance_uid": sop_instance_uid or None,
        "series_instance_uid": series_instance_uid or None, "series_key": series_key or None,
        "status": status, "reason": reason, "z_index": z_index,
    }


def series_row(record: dict[str, Any]) -> dict[str, Any]:
    """One row of OUT/summary/series/series-*.parquet from a series record (the series JSON)."""
    tag_names = {column for _, column, _ in TAG_COLUMNS}
    row = {name: record.get(name) for name in SERIES_SCHEMA.names if name not in tag_names}
    # NaN, not null, without geometry (as the HDF5 export): pyarrow 25 cannot read back a null fixed-size list
    row["affine_lps"] = record.get("affine_lps") or NO_AFFINE
    attributes = record.get("stack_attributes") or {}
    row["stack_attributes"] = [(k, json.dumps(attributes[k], sort_keys=True)) for k in sorted(attributes)]
    row["volumes"] = json.dumps(record.get("volumes") or [], sort_keys=True)
    row["n_volumes"] = record.get("n_volumes") or 1
    row["split_by"] = list(record.get("split_by") or [])
    row.update(tag_columns(record.get("tags") or {}))
    row.update(plane_size(record))
    return row


def plane_size(record: dict[str, Any]) -> dict[str, int]:
    """rows and columns of the stored planes, from `shape` ([t,] z, y, x[, 3]): a Siemens mosaic's
    tile, not the mosaic's (0028,0010)/(0028,0011), which stay in the series JSON's dicom.tags.
    Nothing for a failed row (no shape): the tag values stand."""
    shape = record.get("shape") or []
    dims = shape[1:] if (record.get("n_volumes") or 1) > 1 else shape
    return {"rows": int(dims[1]), "columns": int(dims[2])} if len(dims) >= 3 else {}


# ---- manifest job (pipelines.manifest): tables at the root of OUT -----------------------------
# OUT/instances/instances-*.parquet, OUT/series/series-*.parquet, OUT/unreadable/unreadable-*.csv,
# OUT/shards/series_shard_XX.csv, with --all_tags OUT/tags/tags-*.parquet (wide), OUT/tags_long/tags_long-*.parquet.
MANIFEST_INSTANCES_PREFIX, MANIFEST_SERIES_PREFIX, UNREADABLE_PREFIX = "instances", "series", "unreadable"
TAGS_PREFIX, TAGS_LONG_PREFIX, SHARDS_DIR = "tags", "tags_long", "shards"
UNREADABLE_COLUMNS = ("uri", "size_bytes", "reason")
SHARD_COLUMNS = ("uri", "series_instance_uid", "series_key", "size_bytes")


def manifest_prefix(output: str, name: str) -> str:
    """Prefix of a manifest table: OUT/{name}/{name} -> {name}-00000-of-00001.parquet (or .csv)."""
    return table_folder(output, name)


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


# ---- verify job (pipelines.verify): OUT/verify/ ---------------------------------------------------
# OUT/verify/verify/verify-*.parquet (one row per checked series), OUT/verify/files/files-*.parquet (one row per
# instance-accounting failure), OUT/verify/thumbnails/{key}_middle.jpg|_montage.jpg, OUT/verify/report.html
VERIFY_DIR, VERIFY_PREFIX, VERIFY_FILES_PREFIX, THUMBNAILS_DIR = "verify", "verify", "files", "thumbnails"
REPORT_NAME = "report.html"
OK = "ok"  # a verified series whose every check passed (FAILED otherwise)


def verify_prefix(output: str, name: str) -> str:
    """Prefix of a verify table: OUT/verify/{name}/{name} -> {name}-00000-of-00001.parquet."""
    return table_folder(storage.join(output, VERIFY_DIR), name)


def thumbnail_uri(output: str, name: str) -> str:
    """OUT/verify/thumbnails/{name}; verify rows hold `name` only."""
    return storage.join(output, VERIFY_DIR, THUMBNAILS_DIR, name)


def report_uri(output: str) -> str:
    return storage.join(output, VERIFY_DIR, REPORT_NAME)


VERIFY_SCHEMA = pa.schema(
    [
        ("series_key", pa.string()),
        ("series_instance_uid", pa.string()),
        ("status", pa.string()),  # ok | failed
        ("checks_passed", pa.int64()),
        ("checks_failed", pa.int64()),
        ("failures", pa.list_(pa.string())),  # "check: detail", at most MAX_LISTED per check
        ("n_slices", pa.int64()),
        ("geometry", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("dtype", pa.string()),
        ("thumbnails", pa.list_(pa.string())),  # names under OUT/verify/thumbnails/
    ]
)

VERIFY_FILES_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("series_key", pa.string()),
        ("check", pa.string()),  # duplicate | missing
        ("detail", pa.string()),
    ]
)

# ---- dataset job (pipelines.dataset): OUT/datasets/{vlm,labels}/ ----------------------------------
DATASETS_DIR, VLM, LABELS = "datasets", "vlm", "labels"
PAIRS_PREFIX = "pairs"  # OUT/datasets/vlm/pairs/pairs-IIIII-of-NNNNN.{jsonl,parquet}
# OUT/datasets/labels/dataset/dataset-IIIII-of-NNNNN.json (a JSON array each), train_dataset/train_dataset-*.csv
LABELS_PREFIX, TRAIN_PREFIX = "dataset", "train_dataset"
UNMATCHED_PREFIX, DATASET_SUMMARY_JSON = "unmatched", "summary.json"  # in both: unmatched/unmatched-IIIII-of-NNNNN.csv
# labels also: datalist.json (MONAI's Decathlon datalist: training/validation/test, image + integer label) and
# label_classes.json (each label column's classes, index = position; -1 = no value)
DATALIST_JSON, LABEL_CLASSES_JSON = "datalist.json", "label_classes.json"
SPLITS = ("train", "validation", "test")
UNMATCHED_COLUMNS = ("table", "row", "key", "reason", "record")  # record: the row as JSON


def dataset_uri(output: str, fmt: str, name: str) -> str:
    """OUT/datasets/{fmt}/{name}: the single files (summary.json, datalist.json, label_classes.json)."""
    return storage.join(output, DATASETS_DIR, fmt, name)


def dataset_prefix(output: str, fmt: str, name: str) -> str:
    """Prefix of a dataset table: OUT/datasets/{fmt}/{name}/{name} -> {name}-00000-of-00001.{ext}."""
    return table_folder(storage.join(output, DATASETS_DIR, fmt), name)


VLM_PAIRS_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("split", pa.string()),
        ("series_key", pa.string()),
        ("series_instance_uid", pa.string()),
        ("study_instance_uid", pa.string()),
        ("accession_number", pa.string()),
        ("series_number", pa.int64()),
        ("patient_id", pa.string()),
        ("modality", pa.string()),
        ("series_description", pa.string()),
        ("volume_uri", pa.string()),
        ("slices_uri", pa.string()),
        ("preview_uri", pa.string()),  # the middle slice's preview, when slices CSVs have `preview_uri`
        ("image_uris", pa.list_(pa.string())),  # every slice preview in z order (empty without previews)
        ("volume_path", pa.string()),  # contract 3: the four above relative to OUT
        ("slices_path", pa.string()),
        ("preview_path", pa.string()),
        ("image_paths", pa.list_(pa.string())),
        ("report_key", pa.string()),
        ("report_rows", pa.list_(pa.int64())),  # 0-based rows of the report table behind report_text
        ("report_text", pa.string()),
    ]
)


# ---- volume stores (pipelines.convert --store) ----------------------------------------------------
# directory: OUT/volumes/{key}.zarr (a Zarr v3 directory tree); zip: OUT/volumes/{key}.zarr.zip (the same
# tree in one uncompressed ZIP object, readable with zarr.storage.ZipStore). Readers accept both.
STORE_DIRECTORY, STORE_ZIP = "directory", "zip"
VOLUME_STORES = (STORE_DIRECTORY, STORE_ZIP)
ZIP_SUFFIX = ".zarr.zip"


def volume_uri(output: str, key: str, store: str = STORE_DIRECTORY) -> str:
    """Where convert writes the volume of `key` with --store `store`."""
    if store == STORE_ZIP:
        return storage.join(output, VOLUMES_DIR, f"{key}{ZIP_SUFFIX}")
    return zarr_uri(output, key)


def volume_store_of(uri: str) -> str:
    """The store kind a volume URI names (by its suffix)."""
    return STORE_ZIP if uri.endswith(ZIP_SUFFIX) else STORE_DIRECTORY


def committed_volume_uri(output: str, key: str) -> str:
    """The volume of `key` as it exists under OUT: the zip object if there is one, else the directory."""
    zipped = volume_uri(output, key, STORE_ZIP)
    return zipped if storage.exists(zipped) else zarr_uri(output, key)


# ---- export job (pipelines.export): DIR/ ------------------------------------------------------------
# nifti: DIR/{key}.nii.gz (+ .bval/.bvec); hdf5: DIR/series-IIIII-of-NNNNN.h5 (one group per series);
# dicom: DIR/{key}/{z:05d}.dcm (+ DIR/{key}/seg.dcm with --labels). Every run: DIR/exports-*.parquet.
EXPORT_FORMATS = ("dicom", "hdf5", "nifti")
EXPORTED = "exported"  # an export row's status (FAILED otherwise)
EXPORTS_PREFIX = "exports"
HDF5_PREFIX = "series"

EXPORT_SCHEMA = pa.schema(
    [
        ("series_key", pa.string()),
        ("format", pa.string()),
        ("status", pa.string()),  # exported | failed
        ("reason", pa.string()),
        ("outputs", pa.list_(pa.string())),  # files written (or appended to) for this series
    ]
)


def export_prefix(to: str, name: str) -> str:
    """Prefix of an export table or HDF5 shard: DIR/{name} -> {name}-00000-of-00001.{ext}."""
    return storage.join(to, name)


def nifti_uri(to: str, key: str) -> str:
    return storage.join(to, f"{key}.nii.gz")


def dicom_series_dir(to: str, key: str) -> str:
    return storage.join(to, key)


def dicom_slice_uri(to: str, key: str, index: int) -> str:
    return storage.join(to, key, f"{index:05d}.dcm")


def dicom_plane_uri(to: str, key: str, t: int, z: int) -> str:
    """Plane z of volume t of a 4D array's export."""
    return storage.join(to, key, f"{t:03d}_{z:05d}.dcm")


def dicom_seg_uri(to: str, key: str) -> str:
    return storage.join(to, key, "seg.dcm")


# ---- summary parts (pipelines.convert --summary_part, pipelines.aggregate) -------------------------
# A convert run over one shard of a manifest also writes its summary rows to
# OUT/summary/parts/{part}/{series,instances}/{name}-IIIII-of-NNNNN.parquet; pipelines.aggregate rebuilds
# OUT/summary/{series,instances}/*.parquet as the union of every part (each file exactly once).
PARTS_DIR = "parts"


def part_prefix(output: str, part: str, name: str) -> str:
    """OUT/summary/parts/{part}/{name}/{name}: the prefix of one run's part of summary table `name`."""
    return table_folder(storage.join(output, SUMMARY_DIR, PARTS_DIR, part), name)


def parts_glob(output: str, name: str) -> str:
    return storage.join(output, SUMMARY_DIR, PARTS_DIR, "*", name, f"{name}-*.parquet")
