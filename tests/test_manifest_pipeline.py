"""End to end: pipelines.manifest over the shipped pydicom files and the generated corpus, then convert from it."""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
from collections import Counter

import pyarrow as pa
import pyarrow.dataset as pads
import pydicom
import pydicom.data
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from dicom_io import manifest, schemas, storage, tables, tags
from dicom_io.errors import DicomflowError
from dicom_io.header import read_header
from dicom_io.keys import series_key
from dicom_io.tables import read_table as read_convert_table
from pipelines import convert, manifest as manifest_job
from tests.conftest import RUNNER_ARGS, all_files
from transforms.manifest import ListFiles

PYDICOM_FILES = os.path.dirname(pydicom.data.get_testdata_file("CT_small.dcm", download=False))
NUM_SHARDS = 3


def _run(*args: str) -> dict[str, int]:
    """Run the manifest job; return its dicomflow counters."""
    result = manifest_job.run([*args, *RUNNER_ARGS])
    found = result.metrics().query(MetricsFilter().with_namespace("dicomflow"))["counters"]
    return {c.key.metric.name: c.committed for c in found}


def _rows(out: str, name: str) -> list[dict]:
    return manifest_job.read_table(out, name).to_pylist()


def _by_uri(out: str, name: str = schemas.MANIFEST_INSTANCES_PREFIX) -> dict[str, dict]:
    return {r["uri"]: r for r in _rows(out, name)}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> str:
    """OUT of one --all_tags --num_shards run over every file pydicom ships (broken ones included)."""
    out = str(tmp_path_factory.mktemp("manifest-shipped"))
    _run("--input", PYDICOM_FILES, "--output", out, "--all_tags", "--num_shards", str(NUM_SHARDS))
    return out


# ---- instances, unreadable ------------------------------------------------------------------------

def _verdict(path: str) -> str:
    """What the convert job's header reader says: "" for an image, else its reason (zipMR.gz decompressed)."""
    try:
        with storage.open_source(path) as fp:
            read_header(fp, path, os.path.getsize(path))
        return ""
    except DicomflowError as exc:
        return str(exc)


def test_every_shipped_file_once_with_the_convert_readers_verdict(shipped):
    rows = _rows(shipped, schemas.MANIFEST_INSTANCES_PREFIX)
    assert Counter(r["uri"] for r in rows) == Counter(all_files(PYDICOM_FILES))
    for r in rows:
        assert r["reason"] == _verdict(r["uri"]), r["uri"]
        assert r["readable"] == (r["reason"] == "" or r["reason"].startswith("no pixel data")), r["uri"]
    by_name = {os.path.relpath(r["uri"], PYDICOM_FILES): r for r in rows}
    assert by_name["dicomdirtests/DICOMDIR"]["reason"] == "no pixel data (Media Storage Directory Storage)"
    assert by_name["test-SR.dcm"]["readable"] and by_name["test-SR.dcm"]["series_instance_uid"]
    assert by_name["CT_small.dcm"]["rows"] == 128 and by_name["README.txt"]["readable"] is False
    assert all(r["mtime"] == os.path.getmtime(r["uri"]) and r["size_bytes"] == os.path.getsize(r["uri"]) for r in rows)


def test_unreadable_csv_lists_the_failed_files_with_reasons(shipped):
    expected = {(r["uri"], str(r["size_bytes"]), r["reason"])
                for r in _rows(shipped, schemas.MANIFEST_INSTANCES_PREFIX) if not r["readable"]}
    found = set()
    for path in glob.glob(os.path.join(shipped, "unreadable", "unreadable-*.csv")):
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            assert tuple(reader.fieldnames) == schemas.UNREADABLE_COLUMNS
            found |= {(r["uri"], r["size_bytes"], r["reason"]) for r in reader}
    assert found == expected and len(found) >= 5


# ---- series and shards ----------------------------------------------------------------------------

def test_shards_hold_every_readable_file_once_series_whole_and_balanced(shipped):
    instances = _by_uri(shipped)
    series = {r["series_key"]: r for r in _rows(shipped, schemas.MANIFEST_SERIES_PREFIX)}
    paths = sorted(glob.glob(os.path.join(shipped, schemas.SHARDS_DIR, "series_shard_*.csv")))
    assert [os.path.basename(p) for p in paths] == [f"series_shard_{i:02d}.csv" for i in range(NUM_SHARDS)]
    shard_of_series, loads, listed = {}, [], []
    for shard, path in enumerate(paths):
        with open(path, newline="") as fh:
            lines = list(csv.DictReader(fh))
        for line in lines:
            assert shard_of_series.setdefault(line["series_key"], shard) == shard  # a series never spans shards
            assert int(line["size_bytes"]) == instances[line["uri"]]["size_bytes"]
        listed += [line["uri"] for line in lines]
        loads.append(sum(int(line["size_bytes"]) for line in lines))
    assert Counter(listed) == Counter(u for u, r in instances.items() if r["readable"])
    assert set(shard_of_series) == set(series)
    assert max(loads) <= min(loads) + max(s["n_bytes"] for s in series.values())
    assert sum(loads) == sum(s["n_bytes"] for s in series.values())


def test_series_rows_count_their_instances(shipped):
    instances = [r for r in _rows(shipped, schemas.MANIFEST_INSTANCES_PREFIX) if r["readable"]]
    for s in _rows(shipped, schemas.MANIFEST_SERIES_PREFIX):
        members = [r for r in instances if series_key(manifest.series_group(r), 0) == s["series_key"]]
        assert s["n_instances"] == len(members) and s["n_bytes"] == sum(r["size_bytes"] for r in members)
        assert s["n_images"] == sum(r["rows"] is not None for r in members)


# ---- all tags -------------------------------------------------------------------------------------

def _wide(out: str) -> pa.Table:
    """The wide tags table read as ONE dataset: fails unless every shard has the same schema."""
    return pads.dataset(sorted(glob.glob(os.path.join(out, "tags", "tags-*.parquet"))), format="parquet").to_table()


def test_wide_tags_read_back_and_agree_with_pydicom(shipped):
    table = _wide(shipped)
    assert all(field.type == pa.string() for field in table.schema)
    rows = {r["uri"]: r for r in table.to_pylist()}
    parsed = [u for u, r in _by_uri(shipped).items() if r["readable"] or r["reason"].startswith("invalid header")]
    assert sorted(rows) == sorted(parsed)
    ct_path = os.path.join(PYDICOM_FILES, "CT_small.dcm")
    ct, ds = rows[ct_path], pydicom.dcmread(ct_path, stop_before_pixels=True)
    assert ct["PatientName (0010,0010)"] == str(ds.PatientName)
    assert ct["OtherPatientIDsSequence[1]_PatientID (0010,0020)"] == ds.OtherPatientIDsSequence[1].PatientID
    assert ct["GEMS_IDEN_01:Suite id (0009,1002)"] == ds[0x00091002].value == "CT01"
    assert ct["GEMS_PARM_01:Histogram tables (0043,1029)"] == f"<{len(ds[0x00431029].value)} bytes>"
    assert json.loads(ct["ImageType (0008,0008)"]) == list(ds.ImageType)
    assert ct["RTPlanLabel (300A,0002)"] is None  # another file's column: null here, not ""
    plan_path = os.path.join(PYDICOM_FILES, "rtplan.dcm")
    plan = pydicom.dcmread(plan_path)
    column = "BeamSequence[0]_ControlPointSequence[1]_ControlPointIndex (300A,0112)"
    assert rows[plan_path][column] == str(plan.BeamSequence[0].ControlPointSequence[1].ControlPointIndex)


def test_long_tags_hold_the_same_values_as_the_wide_table(shipped):
    long_rows = manifest_job.read_table(shipped, schemas.TAGS_LONG_PREFIX).to_pylist()
    ct_path = os.path.join(PYDICOM_FILES, "CT_small.dcm")
    entries = [tags.entry_from_long_row(r) for r in long_rows if r["uri"] == ct_path]
    wide = {k: v for k, v in _wide(shipped).filter(pads.field("uri") == ct_path).to_pylist()[0].items()
            if v is not None}
    assert {"uri": ct_path, **tags.wide_row(entries)} == wide


def test_duckdb_reads_both_tag_tables(shipped):
    import duckdb  # a pinned test requirement
    wide, long_ = os.path.join(shipped, "tags", "tags-*.parquet"), os.path.join(shipped, "tags_long", "tags_long-*.parquet")
    name = duckdb.sql(f"""SELECT "PatientName (0010,0010)" FROM read_parquet('{wide}')
                          WHERE uri LIKE '%/CT_small.dcm'""").fetchall()
    assert name == [("CompressedSamples^CT1",)]
    suite = duckdb.sql(f"""SELECT keyword, value FROM read_parquet('{long_}')
                           WHERE uri LIKE '%/CT_small.dcm' AND tag = '(0009,1002)'""").fetchall()
    assert suite == [("GEMS_IDEN_01:Suite id", "CT01")]


def test_wide_shards_share_one_schema_and_are_cut_finer(tmp_path):
    columns = ("A (0008,0001)", "B (0008,0002)")
    shards = [[{"uri": "y", "B (0008,0002)": "2"}, {"uri": "x", "A (0008,0001)": "1"}], []]
    for i, rows in enumerate(shards):
        (tmp_path / f"tags-{i}.parquet").write_bytes(tables.encode_wide_tags(rows, columns))
    table = pads.dataset([str(tmp_path / f"tags-{i}.parquet") for i in range(2)], format="parquet").to_table()
    assert table.column_names == ["uri", *columns] and table.column("uri").to_pylist() == ["x", "y"]
    assert pads.dataset(str(tmp_path / "tags-1.parquet")).schema.names == ["uri", *columns]  # empty, same schema
    assert tables.wide_sharding(tables.TableSharding(None, 1000)).rows_per_shard == 1000 // tables.WIDE_ROW_WEIGHT
    assert tables.wide_sharding(tables.TableSharding(7, 1000)).num_shards == 7


# ---- generated corpus: listing, convert from the manifest, --previous ------------------------------

def test_list_files_gives_size_and_mtime_from_a_folder_and_from_a_manifest(pipeline, corpus, tmp_path):
    listing = tmp_path / "listing.csv"
    listing.write_text("uri\n" + "\n".join(corpus.files) + "\n")
    expected = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in all_files(corpus.root)]
    with pipeline as p:
        assert_that(p | "Folder" >> ListFiles(corpus.root), equal_to(expected), label="FromFolder")
        assert_that(p | "Manifest" >> ListFiles(str(listing)), equal_to(expected), label="FromManifest")


def test_convert_runs_from_the_manifest_instances_table(corpus, tmp_path):
    out, converted = str(tmp_path / "manifest"), str(tmp_path / "converted")
    _run("--input", corpus.root, "--output", out)
    series = _rows(out, schemas.MANIFEST_SERIES_PREFIX)
    by_uid = {s["series_instance_uid"]: s for s in series}
    for uid, expected in corpus.expected.items():
        n_files = len(expected["files"]) + len(expected.get("duplicates", []))
        assert by_uid[uid]["n_instances"] == n_files, expected["kind"]
        assert by_uid[uid]["has_localizers"] == (expected["kind"] == "localizer")
        assert len(by_uid[uid]["orientations"]) == 1
    convert.run(["--input", os.path.join(out, "instances", "instances-*.parquet"), "--output", converted, *RUNNER_ARGS])
    manifest_uris = [r["uri"] for r in _rows(out, schemas.MANIFEST_INSTANCES_PREFIX)]
    converted_rows = read_convert_table(converted, "instances").to_pylist()
    assert Counter(r["source_uri"] for r in converted_rows) == Counter(manifest_uris) == Counter(all_files(corpus.root))
    stack_keys = {r["series_key"] for r in read_convert_table(converted, "series").to_pylist()}
    image_series = [s for s in series if s["n_images"] > s["n_localizers"]]
    assert image_series and all(s["series_key"] in stack_keys for s in image_series)  # key of stack 0


def _rewrite_description(path: str, description: str) -> None:
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = description
    ds.save_as(path)
    os.utime(path, (os.path.getmtime(path) + 5, os.path.getmtime(path) + 5))


def test_previous_run_rows_are_reused_and_only_changed_files_are_read(corpus, tmp_path):
    root = str(tmp_path / "archive")
    shutil.copytree(corpus.root, root)  # copy2: sizes and mtimes kept
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    files = all_files(root)
    counters = _run("--input", root, "--output", first, "--all_tags")
    assert counters["headers_parsed"] == len(files)
    changed, gone = files[0], files[1]
    _rewrite_description(changed, "CHANGED")
    os.remove(gone)
    added = os.path.join(root, "sub", "added.dcm")
    shutil.copy(files[2], added)
    listing = os.path.join(str(tmp_path), "listing.csv")  # this time the files come from a manifest (stat, not match)
    with open(listing, "w") as fh:
        fh.write("uri\n" + "\n".join(all_files(root)) + "\n")

    counters = _run("--input", listing, "--output", second, "--previous", first, "--all_tags", "--num_shards", "3")
    assert counters["headers_parsed"] == 2 and counters["files_reused"] == len(files) - 2
    before, after = _by_uri(first), _by_uri(second)
    assert sorted(after) == all_files(root) and gone not in after
    assert after[changed]["series_description"] == "CHANGED" and after[added]["sop_instance_uid"]
    assert all(after[u] == before[u] for u in after if u not in (changed, added))
    wide_before = {r["uri"]: r for r in _wide(first).to_pylist()}
    wide_after = {r["uri"]: r for r in _wide(second).to_pylist()}
    assert wide_after[changed]["SeriesDescription (0008,103E)"] == "CHANGED"
    unchanged = [u for u in wide_after if u not in (changed, added)]
    assert unchanged and all(_present(wide_after[u]) == _present(wide_before[u]) for u in unchanged)

    # in place, nothing changed, fewer shards: nothing read, same index, the third shard file removed
    counters = _run("--input", root, "--output", second, "--previous", second, "--all_tags", "--num_shards", "2")
    assert counters.get("headers_parsed", 0) == 0 and counters["files_reused"] == len(after)
    assert _by_uri(second) == after
    shards = sorted(os.listdir(os.path.join(second, schemas.SHARDS_DIR)))
    assert shards == ["series_shard_00.csv", "series_shard_01.csv"]


def _present(row: dict) -> dict:
    return {k: v for k, v in row.items() if v is not None}
