"""dicom_io.manifest (rows, reuse, series, shards) and the header/storage helpers it uses; no Beam."""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import random
import struct

import pyarrow as pa
import pytest
from pydicom.data import get_testdata_file

from dicom_io import manifest, schemas, storage
from dicom_io.errors import NotDicomError
from dicom_io.header import read_header
from dicom_io.keys import series_key
from tests import synthetic
from transforms.series import series_uid_of

CT_SMALL = get_testdata_file("CT_small.dcm", download=False)
RTPLAN = get_testdata_file("rtplan.dcm", download=False)


def _crawl(path, all_tags=False, mtime=123.0):
    with open(path, "rb") as fp:
        return manifest.crawl(fp, path, os.path.getsize(path), mtime, all_tags)


def _header(path):
    with open(path, "rb") as fp:
        return read_header(fp, path, os.path.getsize(path))


def _valid(row):
    """The row has exactly the table's columns and converts to its types."""
    assert list(row) == schemas.MANIFEST_INSTANCES_SCHEMA.names
    pa.Table.from_pylist([row], schema=schemas.MANIFEST_INSTANCES_SCHEMA)
    return row


# ---- instances rows -----------------------------------------------------------------------------

def test_image_row_agrees_with_the_convert_header_record():
    row = _valid(_crawl(CT_SMALL).row)
    h = _header(CT_SMALL)
    assert (row["readable"], row["reason"], row["uri"], row["mtime"]) == (True, "", CT_SMALL, 123.0)
    assert (row["rows"], row["columns"], row["number_of_frames"]) == (h.rows, h.columns, 1)
    assert row["series_instance_uid"] == h.series_instance_uid and row["modality"] == "CT"
    assert row["image_position_patient"] == list(h.image_position)
    assert row["series_number"] == h.series_tags["SeriesNumber"] and row["is_localizer"] is False
    assert row["image_type"] == list(h.image_type) and row["transfer_syntax_uid"] == h.transfer_syntax_uid


def test_object_without_pixels_is_readable_with_its_reason_and_fields():
    crawled = _crawl(RTPLAN, all_tags=True)
    row = _valid(crawled.row)
    assert row["readable"] and row["reason"] == "no pixel data (RT Plan Storage)"
    assert row["rows"] is None and row["series_instance_uid"] and row["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.481.5"
    assert any(e.column.startswith("BeamSequence[0]_") for e in crawled.tags)


def test_tags_only_when_asked_and_meta_as_in_the_file():
    assert _crawl(CT_SMALL).tags is None
    columns = {e.column: e.value for e in _crawl(CT_SMALL, all_tags=True).tags}
    assert columns["TransferSyntaxUID (0002,0010)"] == "1.2.840.10008.1.2.1"


def test_not_dicom_raises_and_failed_row_keeps_the_listing():
    with pytest.raises(NotDicomError, match="not dicom"):
        manifest.crawl(io.BytesIO(b"hello" * 40), "mem://x", 200, None)
    row = _valid(manifest.failed_row("mem://x", 200, 5.0, "not dicom: ..."))
    assert (row["readable"], row["size_bytes"], row["mtime"], row["sop_instance_uid"]) == (False, 200, 5.0, None)


class _CountingReader:
    """A file object that counts the bytes handed out by read()."""

    def __init__(self, fp):
        self._fp, self.bytes_read = fp, 0

    def read(self, n=-1):
        data = self._fp.read(n)
        self.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._fp, name)


def test_a_two_gigabyte_file_costs_kilobytes(tmp_path):
    path = str(tmp_path / "big.dcm")
    spec = synthetic.SeriesSpec(series_uid="1.2.3", study_uid="1.2", patient_id="P", modality="CT",
                                positions=[(0.0, 0.0, 0.0)], iop=synthetic.AXIAL_IOP, pixel_spacing=(1.0, 1.0),
                                rows=32, cols=32)
    synthetic.write_instance(path, spec, 0, seed=0)
    data = open(path, "rb").read()
    at = data.rindex(b"\xe0\x7f\x10\x00OW")  # (7FE0,0010) OW, 2 reserved, 4-byte length
    size = 2 * 1024**3
    with open(path, "r+b") as fh:
        fh.seek(at + 8)
        fh.write(struct.pack("<I", size - at - 12))
        fh.truncate(size)  # sparse: the 2 GB of "pixels" cost no disk
    with storage.open_read(path) as raw:
        fp = _CountingReader(raw)
        crawled = manifest.crawl(fp, path, os.path.getsize(path), None, all_tags=True)
    assert crawled.row["readable"] and crawled.row["size_bytes"] == size and crawled.row["rows"] == 32
    assert fp.bytes_read < 64 * 1024


# ---- reuse of an earlier run --------------------------------------------------------------------

def test_reuse_needs_same_size_and_mtime_and_a_lasting_outcome():
    good = {"size_bytes": 10, "mtime": 100.0, "readable": True, "reason": ""}
    assert manifest.can_reuse(good, 10, 100.0 + manifest.MTIME_TOLERANCE_S / 2)
    assert not manifest.can_reuse(good, 11, 100.0)
    assert not manifest.can_reuse(good, 10, 101.0)
    assert not manifest.can_reuse(good, 10, None)
    assert not manifest.can_reuse(None, 10, 100.0)
    assert manifest.can_reuse({**good, "readable": False, "reason": "not dicom: empty file"}, 10, 100.0)
    assert not manifest.can_reuse({**good, "readable": False, "reason": "source disappeared: x"}, 10, 100.0)
    assert not manifest.can_reuse({**good, "readable": False, "reason": "cannot open x: denied"}, 10, 100.0)


def test_reuse_with_all_tags_needs_the_earlier_elements():
    good = {"size_bytes": 10, "mtime": 100.0, "readable": True, "reason": ""}
    assert not manifest.can_reuse(good, 10, 100.0, n_tag_entries=0, all_tags=True)
    assert manifest.can_reuse(good, 10, 100.0, n_tag_entries=5, all_tags=True)
    not_dicom = {**good, "readable": False, "reason": "not dicom: empty file"}
    assert manifest.can_reuse(not_dicom, 10, 100.0, n_tag_entries=0, all_tags=True)


# ---- series ------------------------------------------------------------------------------------

def test_series_group_and_key_are_what_convert_uses(corpus):
    h = _header(corpus.files[0])
    row = manifest.instance_row(h, None)
    assert manifest.series_group(row) == series_uid_of(h)[0] == h.series_instance_uid
    orphan = dataclasses.replace(h, series_instance_uid="")
    assert manifest.series_group(manifest.instance_row(orphan, None)) == series_uid_of(orphan)[0]
    summary = manifest.add_instance(manifest.SeriesSummary(), row)
    assert manifest.series_row(manifest.series_group(row), summary)["series_key"] == series_key(h.series_instance_uid, 0)


def _row(uri, size, iop=(1, 0, 0, 0, 1, 0), localizer=False, modality="CT", rows=64):
    return {"uri": uri, "size_bytes": size, "series_instance_uid": "1.2", "study_instance_uid": "1.1",
            "modality": modality, "series_description": "AX", "image_orientation_patient": list(iop),
            "is_localizer": localizer, "rows": rows}


def test_series_summary_is_the_same_whatever_the_merge_order():
    rows = [_row("a", 10), _row("b", 20, iop=(0, 1, 0, 0, 0, -1), localizer=True), _row("c", 5, modality="OT"),
            _row("d", 7, rows=None), _row("e", 1, iop=(1, 0, 0, 0, 1, 0.0000001))]
    partials = [manifest.add_instance(manifest.SeriesSummary(), r) for r in rows]
    a = manifest.series_row("1.2", manifest.merge_summaries(partials))
    b = manifest.series_row("1.2", manifest.merge_summaries(partials[::-1]))
    assert a == b
    assert (a["n_instances"], a["n_bytes"], a["n_localizers"], a["has_localizers"], a["n_images"]) == (5, 43, 1, True, 4)
    assert a["orientations"] == ["0,1,0,0,0,-1", "1,0,0,0,1,0"] and a["modality"] == "CT"
    pa.Table.from_pylist([a], schema=schemas.MANIFEST_SERIES_SCHEMA)


# ---- shards ------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_shards", [1, 3, 7])
def test_shards_are_balanced_whole_and_deterministic(num_shards):
    rng = random.Random(num_shards)
    series = [(f"s{i}", rng.choice([1, 10, 100, 5000]) * rng.randint(1, 50)) for i in range(60)]
    assignment = manifest.assign_shards(series, num_shards)
    assert sorted(assignment) == sorted(k for k, _ in series)
    loads = [sum(b for k, b in series if assignment[k] == s) for s in range(num_shards)]
    assert max(loads) <= min(loads) + max(b for _, b in series)
    assert manifest.assign_shards(reversed(series), num_shards) == assignment


def test_shard_ties_and_more_shards_than_series():
    assert manifest.assign_shards([("b", 5), ("a", 5), ("c", 5)], 2) == {"a": 0, "b": 1, "c": 0}
    assert manifest.assign_shards([("a", 1)], 4) == {"a": 0}
    with pytest.raises(ValueError):
        manifest.assign_shards([("a", 1)], 0)


def test_csv_quoting_and_stale_shards_by_name():
    assert manifest.csv_line(["/x/a,b.dcm", 3, 'say "hi"', None]) == '"/x/a,b.dcm",3,"say ""hi""",'
    assert manifest.csv_text(("uri",), [("a",)]) == "uri\na\n"
    existing = ["/abs/out/shards/series_shard_00.csv", "/abs/out/shards/series_shard_05.csv"]
    assert manifest.stale_shards(existing, ["out/shards/series_shard_00.csv"]) == [existing[1]]


# ---- storage helpers ---------------------------------------------------------------------------

def test_file_info_and_glob(tmp_path):
    path = tmp_path / "a.dcm"
    path.write_bytes(b"12345")
    os.utime(path, (1_700_000_000.25, 1_700_000_000.25))
    assert storage.file_info(str(path)) == (5, 1_700_000_000.25)
    assert storage.mtime_of(str(path)) == os.path.getmtime(path)
    assert storage.glob(str(tmp_path / "*.dcm")) == [str(path)]
    with pytest.raises(FileNotFoundError):
        storage.file_info(str(tmp_path / "missing"))


@pytest.mark.parametrize("value", [1_700_000_000.5, datetime.datetime(2023, 11, 14, 22, 13, 20, 500000,
                                                                      tzinfo=datetime.timezone.utc),
                                   "2023-11-14T22:13:20.500Z"])
def test_modification_times_in_every_form_fsspec_reports(value):
    assert storage._epoch_seconds(value) == pytest.approx(1_700_000_000.5)


def test_beyond_the_heaviest_series_the_rest_fill_the_room_left(monkeypatch):
    rng = random.Random(3)
    series = [(f"s{i:05d}", rng.randint(1, 100)) for i in range(20000)] + [("big", 50000), ("bigger", 80000)]
    total = sum(b for _, b in series)
    everything = manifest.plan_assignment(series, total, 5)
    assert everything.heavy == manifest.assign_shards(series, 5)  # all of them heavy: exactly largest-first
    heaviest = sorted(series, key=manifest.heavy_order)[:50]
    plan = manifest.plan_assignment(heaviest, total, 5)
    assert plan.heavy == manifest.assign_shards(heaviest, 5) and len(plan.heavy) == 50
    loads = [0] * 5
    for key, n_bytes in series:
        loads[plan.shard_of(key)] += n_bytes
    assert sum(loads) == total and max(loads) - min(loads) < 0.05 * total / 5  # balanced to a few percent
    assert manifest.plan_assignment(reversed(heaviest), total, 5) == plan
