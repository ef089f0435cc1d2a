"""De-identification of header records: DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile, applied to the record right after a header is read, so every
output (keys, tables, JSON, Zarr attributes, CSVs, the shuffle) is built from it.

Options of the profile implemented: Retain Longitudinal Temporal Information with Modified
Dates (dates shifted by a per-patient offset), and, on request, Retain Patient
Characteristics and Retain Description. Identifiers are keyed hashes (HMAC-SHA256 with the
user's secret): the same patient or UID maps to the same pseudonym in every run and shard,
and nobody without the key can reverse or recompute it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from dicom_io.header import InstanceHeader

MAX_SHIFT_DAYS = 3650

# Table E.1-1 actions for the series-level tags a record carries (X remove, Z empty/dummy,
# U/D replace consistently, K keep). Tags not listed are not identifying and kept.
REMOVE = {"PatientAge", "SeriesDescription", "StudyDescription"}
EMPTY = {"PatientSex"}
PATIENT_CHARACTERISTICS = {"PatientAge", "PatientSex"}
DESCRIPTIONS = {"SeriesDescription", "StudyDescription"}
UID_TAGS = {"StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"}
DATE_TAGS = {"StudyDate", "SeriesDate"}


@dataclass(frozen=True)
class DeidSettings:
    """What --deidentify asks for; `key` is the secret of the keyed hashes."""

    key: str
    keep_patient_characteristics: bool = False
    keep_descriptions: bool = False
    allow_burned_in: bool = False


class Deidentifier:
    """Pseudonymise header records consistently under one secret key."""

    def __init__(self, settings: DeidSettings):
        if not settings.key:
            raise ValueError("de-identification needs a secret key (--deid_key)")
        self.settings = settings
        self._key = settings.key.encode("utf-8")

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\0{value}".encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A UID under the 2.25 root from the keyed hash (at most 44 characters); '' stays ''."""
        if not value:
            return value
        return "2.25." + str(int.from_bytes(self._digest("uid", value)[:16], "big"))

    def patient_id(self, value: str) -> str:
        return "ANON-" + self._digest("patient", value or "").hex()[:16].upper()

    def accession(self, value: str) -> str:
        return "" if not value else "ACC-" + self._digest("accession", value).hex()[:12].upper()

    def date_shift_days(self, patient_id: str) -> int:
        """Per-patient offset, 1..3650 days back: intervals within a patient are kept."""
        return 1 + int.from_bytes(self._digest("dates", patient_id or "")[:4], "big") % MAX_SHIFT_DAYS

    def shift_date(self, value: Any, patient_id: str) -> Any:
        """A DA value (YYYYMMDD) moved back by the patient's offset; anything else is removed."""
        try:
            day = datetime.datetime.strptime(str(value), "%Y%m%d").date()
        except ValueError:
            return None
        return (day - datetime.timedelta(days=self.date_shift_days(patient_id))).strftime("%Y%m%d")

    def tags(self, tags: dict[str, Any]) -> dict[str, Any]:
        """Series-level tags after the profile's actions."""
        patient = str(tags.get("PatientID") or "")
        out: dict[str, Any] = {}
        for name, value in tags.items():
            keep = ((name in PATIENT_CHARACTERISTICS and self.settings.keep_patient_characteristics)
                    or (name in DESCRIPTIONS and self.settings.keep_descriptions))
            if name in REMOVE and not keep:
                continue
            if name in EMPTY and not keep:
                out[name] = ""
            elif name == "PatientID":
                out[name] = self.patient_id(patient)
            elif name == "AccessionNumber":
                out[name] = self.accession(str(value or ""))
            elif name in UID_TAGS:
                out[name] = self.uid(str(value or ""))
            elif name in DATE_TAGS:
                out[name] = self.shift_date(value, patient)
            else:
                out[name] = value
        return out

    def shift_datetime(self, value: Any, patient_id: str) -> Any:
        """A DT value (YYYYMMDDhhmmss...) with its date moved back like shift_date; a TM (time of
        day only, hhmmss.ffffff) is kept, as the profile's longitudinal option keeps times."""
        text = str(value)
        if len(text) < 8 or not text[:8].isdigit():
            return value
        day = self.shift_date(text[:8], patient_id)
        return None if day is None else day + text[8:]

    def _volume(self, values: tuple, patient_id: str) -> tuple:
        """Volume attributes (dicom_io.attributes) with the acquisition date shifted."""
        return tuple((k, self.shift_datetime(v, patient_id) if k == "acquisition_time" and v else v)
                     for k, v in values)

    def header(self, h: InstanceHeader) -> InstanceHeader:
        """The record with identifying values replaced; geometry and pixel description kept."""
        patient = str(h.series_tags.get("PatientID") or "")
        frames = None if h.frames is None else tuple(
            dataclasses.replace(f, volume=self._volume(f.volume, patient)) for f in h.frames)
        return dataclasses.replace(
            h,
            sop_instance_uid=self.uid(h.sop_instance_uid),
            series_instance_uid=self.uid(h.series_instance_uid),
            study_instance_uid=self.uid(h.study_instance_uid),
            series_tags=self.tags(h.series_tags),
            volume=self._volume(h.volume, patient),
            frames=frames,
        )


def burned_in_reason(h: InstanceHeader, settings: DeidSettings | None) -> str | None:
    """Why a de-identified run must not convert this instance: (0028,0301) BurnedInAnnotation YES."""
    if settings is None or settings.allow_burned_in or (h.burned_in_annotation or "").upper() != "YES":
        return None
    return "burned-in annotation: (0028,0301) BurnedInAnnotation is YES (convert with --allow_burned_in)"


_DEIDENTIFIERS: dict[DeidSettings, "Deidentifier"] = {}


def deidentifier_for(settings: DeidSettings) -> "Deidentifier":
    """One Deidentifier per settings and process (workers of dicom_io.workers build their own once)."""
    found = _DEIDENTIFIERS.get(settings)
    if found is None:
        found = _DEIDENTIFIERS[settings] = Deidentifier(settings)
    return found
