"""dicom_io.tags: column names, string values, sequences, private creators, bounds (no Beam)."""

from __future__ import annotations

import io
import json

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from dicom_io import tags


def _columns(ds: Dataset) -> dict[str, str]:
    return tags.wide_row(tags.flatten_dataset(ds))


def _dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = 512
    ds.SliceThickness = "2.50"
    ds.PatientBirthDate = ""
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = Sequence([Dataset(), ref])
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.2"
    block = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
    block.add_new(0x02, "SH", "CT01")  # known to pydicom's private dictionary: "Suite id"
    unknown = ds.private_block(0x0011, "ACME 1.0", create=True)
    unknown.add_new(0x01, "LO", "secret")
    ds.add_new(0x00431028, "OB", bytes(80))
    return ds


def test_public_elements_keep_keyword_and_tag_with_string_values():
    row = _columns(_dataset())
    assert row["PatientName (0010,0010)"] == "Doe^Jane"
    assert row["Rows (0028,0010)"] == "512"
    assert row["SliceThickness (0018,0050)"] == "2.50"  # the DS string as written, not a re-formatted float
    assert row["PatientBirthDate (0010,0030)"] == ""  # present but empty, not absent
    assert json.loads(row["ImageType (0008,0008)"]) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert all(isinstance(v, str) for v in row.values())


def test_sequences_are_flattened_with_item_indices():
    row = _columns(_dataset())
    assert row["ReferencedImageSequence (0008,1140)"] == "<2 items>"
    assert row["ReferencedImageSequence[0]_ReferencedSOPInstanceUID (0008,1155)"] == "1.2.2"
    assert row["ReferencedImageSequence[1]_ReferencedSOPInstanceUID (0008,1155)"] == "1.2.3"


def test_private_elements_keep_their_creator():
    row = _columns(_dataset())
    assert row["PrivateCreator (0009,0010)"] == "GEMS_IDEN_01"
    assert row["GEMS_IDEN_01:Suite id (0009,1002)"] == "CT01"
    assert row["[ACME 1.0] (0011,1001)"] == "secret"
    orphan = Dataset()
    orphan.add_new(0x00191001, "LO", "x")
    assert _columns(orphan) == {"[no creator] (0019,1001)": "x"}


def test_binary_values_become_their_length():
    assert _columns(_dataset())["[no creator] (0043,1028)"] == "<80 bytes>"


def test_file_meta_is_included_and_long_rows_carry_vr_and_vm():
    ds = _dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    entries = tags.flatten_dataset(ds)
    assert entries[0].column == "TransferSyntaxUID (0002,0010)"
    rows = {r["column"]: r for r in tags.long_rows("file:///x", entries)}
    assert rows["ImageType (0008,0008)"]["vm"] == 3 and rows["ImageType (0008,0008)"]["vr"] == "CS"
    assert rows["PatientName (0010,0010)"]["uri"] == "file:///x"
    assert [tags.entry_from_long_row(r) for r in tags.long_rows("u", entries)] == entries


def test_a_column_met_twice_keeps_both_values():
    entries = [tags.TagEntry("X (0009,1001)", "(0009,1001)", "X", "LO", 1, v) for v in ("b", "a")]
    assert json.loads(tags.wide_row(entries)["X (0009,1001)"]) == {"duplicates": ["a", "b"]}


def test_long_values_are_capped_with_a_note(monkeypatch):
    monkeypatch.setattr(tags, "MAX_VALUE_CHARS", 10)
    ds = Dataset()
    ds.StudyDescription = "x" * 25
    assert _columns(ds)["StudyDescription (0008,1030)"] == "x" * 10 + "...<truncated: 25 characters>"


def test_max_items_lists_the_first_items_and_says_so():
    ds = _dataset()
    row = tags.wide_row(tags.flatten_dataset(ds, max_items=1))
    assert row["ReferencedImageSequence (0008,1140)"] == "<2 items, first 1 listed>"
    assert not any(c.startswith("ReferencedImageSequence[1]") for c in row)


def test_deferred_values_are_not_read():
    ds = _dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.3.4"
    ds.ImageComments = "y" * 5000
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    parsed = pydicom.dcmread(buffer, defer_size=1024)
    assert _columns(parsed)["ImageComments (0020,4000)"] == "<5000 bytes, not read>"


def test_shipped_file_matches_pydicom():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False), stop_before_pixels=True)
    row = _columns(ds)
    assert row["PatientName (0010,0010)"] == str(ds.PatientName)
    assert row["OtherPatientIDsSequence[1]_PatientID (0010,0020)"] == ds.OtherPatientIDsSequence[1].PatientID
    assert row["GEMS_PARM_01:Decon kernel parameters (0043,1013)"] == json.dumps([str(v) for v in ds[0x00431013].value])
    assert row["GEMS_PARM_01:Unique image iden (0043,1028)"] == f"<{len(ds[0x00431028].value)} bytes>"


@pytest.mark.parametrize("name", ["nested_priv_SQ.dcm", "UN_sequence.dcm", "badVR.dcm", "rtplan.dcm"])
def test_awkward_shipped_files_flatten_without_error(name):
    ds = pydicom.dcmread(get_testdata_file(name, download=False), stop_before_pixels=True, force=True)
    entries = tags.flatten_dataset(ds)
    assert entries and all(isinstance(e.value, str) for e in entries)
