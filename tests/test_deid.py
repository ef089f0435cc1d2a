"""De-identification: the Basic Profile on header records, and no PHI byte in any output."""

from __future__ import annotations

import os

import pydicom
import pytest

from dicom_io import schemas
from dicom_io.deid import DeidSettings, Deidentifier
from dicom_io.tables import read_table
from pipelines.convert import run as convert
from pipelines.manifest import run as manifest
from tests import synthetic
from tests.conftest import RUNNER_ARGS, all_files

KEY = "a-test-secret-of-enough-length"
PHI = {
    "PatientName": "PHI^SECRETNAME^QUIXOTE",
    "PatientID": "PHIID8675309",
    "AccessionNumber": "PHIACC555",
    "InstitutionName": "PHI Hospital Of Saint Elsewhere",
    "ReferringPhysicianName": "PHI^DOCTORWHO",
    "SeriesDescription": "PHI SERIES DESCRIPTION ZANZIBAR",
    "StudyDescription": "PHI STUDY DESCRIPTION ZANZIBAR",
    "PatientBirthDate": "19610704",
    "StudyDate": "20190315",
    "SeriesDate": "20190315",
    "OtherPatientIDs": "PHIOTHER4242",
}


def test_pseudonyms_are_keyed_consistent_and_valid():
    a, b = Deidentifier(DeidSettings(KEY)), Deidentifier(DeidSettings(KEY + "x"))
    assert a.patient_id("P1") == Deidentifier(DeidSettings(KEY)).patient_id("P1") != b.patient_id("P1")
    uid = a.uid("1.2.840.113619.2.55.3.604688119")
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid.replace(".", "").isdigit()
    assert a.uid("1.2.3") != a.uid("1.2.4") and a.uid("") == ""
    # dates move by the same per-patient offset, so intervals within a patient are kept
    assert a.shift_date("20200110", "P1") > a.shift_date("20200101", "P1")
    assert a.date_shift_days("P1") == a.date_shift_days("P1") and 1 <= a.date_shift_days("P1") <= 3650
    assert a.shift_date("not a date", "P1") is None


def test_profile_actions_on_series_tags():
    tags = {"PatientID": "X1", "PatientSex": "F", "PatientAge": "054Y", "SeriesDescription": "AX T2",
            "StudyInstanceUID": "1.2.3", "Modality": "MR", "KVP": 120.0, "StudyDate": "20200101"}
    out = Deidentifier(DeidSettings(KEY)).tags(tags)
    assert out["PatientID"].startswith("ANON-") and out["PatientSex"] == "" and "PatientAge" not in out
    assert "SeriesDescription" not in out and out["Modality"] == "MR" and out["KVP"] == 120.0
    kept = Deidentifier(DeidSettings(KEY, keep_patient_characteristics=True, keep_descriptions=True)).tags(tags)
    assert kept["PatientSex"] == "F" and kept["PatientAge"] == "054Y" and kept["SeriesDescription"] == "AX T2"


@pytest.fixture(scope="module")
def phi_corpus(tmp_path_factory):
    """Two series of one patient full of PHI, one instance flagged with burned-in text."""
    root = tmp_path_factory.mktemp("phi")
    uids = set()
    for n in range(2):
        spec = synthetic.SeriesSpec(
            series_uid=synthetic.uid_from("phi-series", n), study_uid=synthetic.uid_from("phi-study"),
            patient_id=PHI["PatientID"], modality="CT", positions=synthetic.axial_positions(4, 2.0),
            iop=synthetic.AXIAL_IOP, pixel_spacing=(1.0, 1.0), rows=16, cols=16, slice_thickness=2.0)
        for path in synthetic.write_series(root / f"s{n}", spec, seed=n):
            ds = pydicom.dcmread(path)
            for keyword, value in PHI.items():
                setattr(ds, keyword, value)
            uids.update({ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID})
            ds.save_as(path, enforce_file_format=True)
    burned = sorted(os.listdir(root / "s1"))[0]
    ds = pydicom.dcmread(root / "s1" / burned)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(root / "s1" / burned, enforce_file_format=True)
    return root, uids, str(root / "s1" / burned)


def _leaks(out: str, needles: set[str]) -> list[tuple[str, str]]:
    found = []
    for path in all_files(out):
        data = open(path, "rb").read() + os.path.relpath(path, out).encode()
        found += [(path, n) for n in needles if n.encode() in data]
    return found


def test_no_phi_string_in_any_output_byte(phi_corpus, tmp_path):
    root, uids, burned = phi_corpus
    conv, man = str(tmp_path / "convert"), str(tmp_path / "manifest")
    convert(["--input", str(root), "--output", conv, "--deidentify", "--deid_key", KEY, *RUNNER_ARGS])
    manifest(["--input", str(root), "--output", man, "--deidentify", "--deid_key", KEY, *RUNNER_ARGS])
    needles = set(PHI.values()) | {v.split("^")[1] for v in (PHI["PatientName"],)} | uids
    assert _leaks(conv, needles) == [] and _leaks(man, needles) == []
    instances = {r["source_uri"]: r for r in read_table(conv, "instances").to_pylist()}
    assert instances[burned]["status"] == "skipped" and instances[burned]["reason"].startswith("burned-in annotation")
    series = read_table(conv, "series").to_pylist()
    pseudonym = Deidentifier(DeidSettings(KEY)).patient_id(PHI["PatientID"])
    assert {r["patient_id"] for r in series} == {pseudonym} and len(series) == 2
    shifted = Deidentifier(DeidSettings(KEY)).shift_date(PHI["StudyDate"], PHI["PatientID"])
    assert {r["study_date"] for r in series} == {schemas.dicom_date(shifted)}  # a date32 column (contract 2)


def test_without_deidentify_the_same_strings_are_there(phi_corpus, tmp_path):
    """The scan above can fail: a plain run writes those strings."""
    root, uids, _ = phi_corpus
    out = str(tmp_path / "plain")
    convert(["--input", str(root), "--output", out, *RUNNER_ARGS])
    assert {n for _, n in _leaks(out, {PHI["PatientID"], PHI["StudyDate"]} | uids)} >= {PHI["PatientID"]}


def test_a_short_or_missing_key_is_refused(phi_corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("DICOMFLOW_DEID_KEY", raising=False)
    with pytest.raises(SystemExit, match="secret of at least 16"):
        convert(["--input", str(phi_corpus[0]), "--output", str(tmp_path), "--deidentify", *RUNNER_ARGS])


def test_acquisition_datetime_of_enhanced_frames_is_date_shifted_times_kept():
    from dicom_io.attributes import VOLUME_ATTRIBUTES
    from dicom_io.header import FrameInfo, InstanceHeader

    def volume(when):
        return tuple((a.name, when if a.name == "acquisition_time" else None) for a in VOLUME_ATTRIBUTES)

    d = Deidentifier(DeidSettings(key="k" * 32))
    frame = FrameInfo(None, None, (1.0, 0.0), volume("20100114203006.5525"))
    h = InstanceHeader(source_uri="x", size_bytes=1, sop_instance_uid="1.2", series_instance_uid="1.3",
                       study_instance_uid="1.4", sop_class_uid="", transfer_syntax_uid="", modality="MR", image_type=(),
                       instance_number=None, image_position=None, image_orientation=None, pixel_spacing=None, rows=1,
                       columns=1, number_of_frames=1, samples_per_pixel=1, photometric="MONOCHROME2", bits_allocated=16,
                       bits_stored=16, pixel_representation=0, rescale_slope=1.0, rescale_intercept=0.0,
                       volume=volume("203006.5525"), frames=(frame,), series_tags={"PatientID": "PAT"})
    out = d.header(h)
    shifted = dict(out.frames[0].volume)["acquisition_time"]
    assert "20100114" not in shifted and shifted.endswith("203006.5525") and len(shifted) == len("20100114203006.5525")
    assert out.value("acquisition_time") == "203006.5525"  # a time of day alone is kept
