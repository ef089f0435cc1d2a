"""DICOM export (reverse recovery): one single-frame instance per slice, DIR/{key}/{z:05d}.dcm
(a 4D array: one series, DIR/{key}/{t:03d}_{z:05d}.dcm, InstanceNumber t x n_slices + z + 1).

Headers come from what convert recorded (series JSON `tags`: patient, study, equipment, frame of
reference; slices CSV: per-slice SOP UID and (0020,0032) ImagePositionPatient; affine_lps:
(0020,0037) ImageOrientationPatient), never from the sources: a de-identified OUT exports its
pseudonyms only. SOP and Series Instance UIDs are new, derived from the source ones (2.25 UIDs of a
hash, so a re-export writes the same bytes), and each instance references its source in
(0008,2112) SourceImageSequence; `keep_uids` keeps the source UIDs instead.

Pixels round-trip exactly through pipelines.convert:
* int16 -> 16-bit signed, RescaleSlope 1 / RescaleIntercept 0;
* float32 -> rescaled integers when every slice is exactly uint16 * slope + intercept (slope and
  intercept as DS strings, found per slice), else (7FE0,0008) Float Pixel Data (32-bit, no rescale:
  exact, but a classic single-frame IOD does not define it, so dcm2niix and ITK do not read it);
* colour uint8/uint16 -> RGB, PlanarConfiguration 0.

Every instance carries its volume's values (the `volumes` of the record: dicom_io.attributes) in the
tags convert reads first, so a 4D array comes back as the same volumes in the same order.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from typing import Any, Iterable, Iterator

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, PositronEmissionTomographyImageStorage,
                         PYDICOM_IMPLEMENTATION_UID, SecondaryCaptureImageStorage)
from pydicom.valuerep import DSfloat

from dicom_io import schemas, storage
from dicom_io.exports import ExportError, SeriesData, axis_names, export_row, slabs

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage, "PT": PositronEmissionTomographyImageStorage}
UINT16_MAX = 65535
# Series-level tags copied as they were recorded (keyword -> keyword).
COPIED_TAGS = ("PatientID", "PatientSex", "PatientAge", "StudyDate", "SeriesDate", "AccessionNumber", "Manufacturer",
               "ManufacturerModelName", "BodyPartExamined", "SeriesDescription", "SeriesNumber", "SliceThickness",
               "RescaleType", "WindowCenter", "WindowWidth", "ConvolutionKernel", "KVP")
TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")  # (0008,0032) AcquisitionTime, VR TM


def derived_uid(*parts: Any) -> str:
    """A new UID under 2.25 from a hash of `parts`: the same source gives the same export.

    Not pydicom's generate_uid(prefix=None, ...): with no prefix it returns a random UUID UID.
    """
    text = "\0".join(["dicomflow-export", *map(str, parts)])
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16], "big"))


def ds_value(value: float) -> str:
    """A decimal string of at most 16 characters, as (0020,0032) and friends must be: the shortest
    exact one when it fits (values that came from DS strings round-trip unchanged)."""
    return ds_text(value)


# ---- pixels ----------------------------------------------------------------------------------------

def decimal_forms(value: float) -> list[str]:
    """Decimal strings of at most 16 characters near `value`, shortest first (short DS values are the usual)."""
    texts = [f"{value:.{p}g}" for p in range(1, 16)] + [repr(float(value)), str(np.float32(value))]
    return [t for t in dict.fromkeys(texts) if len(t) <= 16]


def ds_text(value: float) -> str:
    """The shortest exact decimal of `value` when it fits a DS (16 characters), else a rounded one."""
    text = repr(float(value))
    return text if len(text) <= 16 else str(DSfloat(float(value), auto_format=True))


def _exact(values: np.ndarray, slope: float, intercept: float) -> bool:
    """float32(k * slope + intercept) == values for integer k in 0..65535 (what convert computes)."""
    k = np.rint((values - intercept) / slope)
    if k.min() < 0 or k.max() > UINT16_MAX:
        return False
    return bool(np.array_equal((k * slope + intercept).astype(np.float32), values.astype(np.float32)))


def rescaled_integers(plane: np.ndarray) -> tuple[str, str] | None:
    """(slope, intercept) DS strings with float32(uint16 * slope + intercept) == plane exactly, or None.

    The step is estimated from the spread of the distinct values; slopes and intercepts are tried
    shortest decimal first, each checked on a sample of the distinct values, then on all of them.
    """
    unique = np.unique(plane.astype(np.float64))
    if unique.size == 0 or not np.all(np.isfinite(unique)):
        return None
    lo, hi = float(unique[0]), float(unique[-1])
    if unique.size == 1:
        return "1", ds_text(lo)
    smallest = float(np.min(np.diff(unique)))
    step = (hi - lo) / max(1.0, round((hi - lo) / smallest))
    sample = np.concatenate([unique[:64], unique[-64:]])
    for slope_text in decimal_forms(step):
        slope = float(slope_text)
        if slope <= 0:
            continue
        intercepts = decimal_forms(lo - round(lo / slope) * slope) + decimal_forms(lo)
        for intercept_text in dict.fromkeys(intercepts):
            intercept = float(intercept_text)
            if _exact(sample, slope, intercept) and _exact(unique, slope, intercept):
                return slope_text, intercept_text
    return None


def planes(array: Any, names: tuple[str, ...]) -> Iterator[tuple[int, int, np.ndarray]]:
    """(t, z, plane) of every stored plane, volume after volume (t = 0 in 3D), one shard in memory at a time."""
    if names[0] != "t":
        for z0, slab in slabs(array):
            for offset, plane in enumerate(slab):
                yield 0, z0 + offset, plane
        return
    depth = (getattr(array, "shards", None) or array.chunks)[1]
    for t in range(array.shape[0]):
        for z0 in range(0, array.shape[1], depth):
            for offset, plane in enumerate(np.asarray(array[t, z0:z0 + depth])):
                yield t, z0 + offset, plane


def float_encoding(array: Any, names: tuple[str, ...] = ("z", "y", "x")) -> list[tuple[str, str]] | None:
    """Per-plane (slope, intercept) for a float32 volume, or None when one plane needs Float Pixel Data."""
    found: list[tuple[str, str]] = []
    for _, _, plane in planes(array, names):
        pair = rescaled_integers(plane)
        if pair is None:
            return None
        found.append(pair)
    return found


def _pixel_module(ds: Dataset, plane: np.ndarray, dicom: dict[str, Any], rescale: tuple[str, str] | None) -> None:
    """Image Pixel module and pixel data of one slice in the exported encoding."""
    ds.Rows, ds.Columns = int(plane.shape[0]), int(plane.shape[1])
    if plane.ndim == 3:  # colour
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        bits = plane.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        ds.PixelData = np.ascontiguousarray(plane, dtype=plane.dtype.newbyteorder("<")).tobytes()
        return
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if dicom.get("monochrome1") else "MONOCHROME2"
    if plane.dtype.kind == "f" and rescale is None:
        ds.BitsAllocated = 32
        ds.FloatPixelData = np.ascontiguousarray(plane, dtype="<f4").tobytes()
        return
    if plane.dtype.kind == "f":
        slope, intercept = rescale
        stored = np.rint((plane.astype(np.float64) - float(intercept)) / float(slope)).astype("<u2")
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        return
    bits, signed = plane.dtype.itemsize * 8, plane.dtype.kind == "i"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
    ds.PixelData = np.ascontiguousarray(plane, dtype=plane.dtype.newbyteorder("<")).tobytes()


# ---- headers -----------------------------------------------------------------------------------------

def series_uids(data: SeriesData, keep_uids: bool) -> dict[str, str]:
    """Study, Series and Frame of Reference UIDs of the exported series."""
    d, tags = data.volume.dicom, data.volume.dicom.get("tags") or {}
    source_series = d.get("series_instance_uid") or data.key
    frame = str(tags.get("FrameOfReferenceUID") or "") or derived_uid("frame", data.key)
    series = source_series if keep_uids else derived_uid("series", source_series, d.get("stack_index"))
    return {"StudyInstanceUID": d.get("study_instance_uid") or derived_uid("study", data.key),
            "SeriesInstanceUID": series, "FrameOfReferenceUID": frame}


def _geometry(ds: Dataset, data: SeriesData, z: int, row: dict[str, Any]) -> None:
    """(0020,0037) from the affine's in-plane columns, (0028,0030), (0020,0032) from the slices CSV."""
    affine, tags = data.volume.affine_lps, data.volume.dicom.get("tags") or {}
    spacing = tags.get("PixelSpacing")
    if affine is not None:
        row_step, col_step = affine[:3, 0], affine[:3, 1]  # along a row (columns), down a column (rows)
        if not (isinstance(spacing, list) and len(spacing) == 2):
            spacing = [float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))]
        # divided by the recorded spacing, not renormalised: the source's cosines come back as they were
        ds.ImageOrientationPatient = [ds_value(v) for v in np.concatenate(
            [row_step / float(spacing[1]), col_step / float(spacing[0])])]
        position = [row["ipp_x"], row["ipp_y"], row["ipp_z"]]
        if None in position:
            position = list(affine @ [0.0, 0.0, float(z), 1.0])[:3]
        ds.ImagePositionPatient = [ds_value(v) for v in position]
    if isinstance(spacing, list) and len(spacing) == 2:
        ds.PixelSpacing = [ds_value(v) for v in spacing]


def _echo_tags(ds: Dataset, echo: Any, echo_time: Any) -> None:
    """(0018,0081) EchoTime, and (0018,0086) EchoNumbers where convert's echo (EchoNumbers, else EchoTime)
    is not the echo time."""
    if echo_time is not None:
        ds.EchoTime = ds_text(echo_time)
    if echo is None or echo == echo_time:
        return
    if not float(echo).is_integer():
        raise ExportError(f"echo {echo} is neither an echo number nor the echo time {echo_time}")
    ds.EchoNumbers = int(echo)


def volume_module(ds: Dataset, volume: dict[str, Any]) -> None:
    """One volume's values (the record's `volumes`, dicom_io.attributes) in the tags convert reads first:
    (0018,9087) DiffusionBValue, (0018,9089) DiffusionGradientOrientation (LPS), echo, (0020,0100)
    TemporalPositionIdentifier, (0018,1060) TriggerTime, (0020,0012) AcquisitionNumber, (0008,0032)
    AcquisitionTime (a date-time from enhanced frames goes to (0008,002A) AcquisitionDateTime)."""
    if volume.get("b_value") is not None:
        ds.DiffusionBValue = float(volume["b_value"])
    if volume.get("diffusion_direction") is not None:
        ds.DiffusionGradientOrientation = [float(v) for v in volume["diffusion_direction"]]
    _echo_tags(ds, volume.get("echo"), volume.get("echo_time"))
    if volume.get("temporal_position") is not None:
        ds.TemporalPositionIdentifier = int(volume["temporal_position"])
    if volume.get("trigger_time") is not None:
        ds.TriggerTime = ds_text(volume["trigger_time"])
    if volume.get("acquisition_number") is not None:
        ds.AcquisitionNumber = int(volume["acquisition_number"])
    acquired = volume.get("acquisition_time")
    if acquired:
        if TM.fullmatch(str(acquired)):
            ds.AcquisitionTime = str(acquired)
        else:
            ds.AcquisitionDateTime = str(acquired)


def slice_dataset(data: SeriesData, t: int, z: int, plane: np.ndarray, uids: dict[str, str], keep_uids: bool,
                  rescale: tuple[str, str] | None) -> Dataset:
    """One exported instance (plane z of volume t): patient/study/series/equipment from the record, the
    volume's values, geometry, pixels."""
    d, tags = data.volume.dicom, data.volume.dicom.get("tags") or {}
    index = t * n_slices(data) + z  # the plane's row in the slices CSV; 3D: z
    row = data.slices[index]
    sop_class = SOP_CLASSES.get(d.get("modality") or "", SecondaryCaptureImageStorage)
    source_sop = row.get("sop_instance_uid") or ""
    sop = source_sop if keep_uids and source_sop else derived_uid("sop", source_sop, data.key, index)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.update({k: v for k, v in uids.items()})
    ds.Modality = d.get("modality") or "OT"
    for keyword in COPIED_TAGS:
        if tags.get(keyword) not in (None, "", []):
            setattr(ds, keyword, tags[keyword])
    ds.PatientName = f"{tags.get('PatientID') or ''}^"  # not recorded by convert: the (pseudonymous) ID as family name
    ds.PatientID = str(tags.get("PatientID") or "")
    ds.PatientBirthDate = ds.ReferringPhysicianName = ds.StudyTime = ds.StudyID = ""
    ds.setdefault("PatientSex", "")
    ds.setdefault("AccessionNumber", "")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.InstanceNumber = index + 1  # volumes are in acquisition order: convert orders them back by it
    ds.DerivationDescription = f"dicomflow export of {data.key}"
    if not keep_uids and source_sop:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, source_sop
        ds.SourceImageSequence = [ref]
    volumes = d.get("volumes") or []
    if t < len(volumes):
        volume_module(ds, volumes[t])
    _geometry(ds, data, z, row)
    _pixel_module(ds, plane, d, rescale)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def n_slices(data: SeriesData) -> int:
    """Slices per volume: the z extent."""
    names = axis_names(data.volume)
    return data.volume.shape[names.index("z")]


def _check_rows(data: SeriesData, names: tuple[str, ...]) -> None:
    """The slices CSV has one row per stored plane, volume after volume, as convert writes it."""
    shape = data.volume.shape
    if names not in (("z", "y", "x"), ("z", "y", "x", "c"), ("t", "z", "y", "x")):
        raise ExportError(f"volume axes {names} {list(shape)}: DICOM export writes (z, y, x[, c]) or (t, z, y, x)")
    n_t = shape[0] if names[0] == "t" else 1
    if len(data.slices) != n_t * n_slices(data):
        raise ExportError(f"slices CSV has {len(data.slices)} rows, the volume {n_t * n_slices(data)} planes")
    if n_t > 1 and [(r["t_index"], r["z_index"]) for r in data.slices] != \
            [(t, z) for t in range(n_t) for z in range(n_slices(data))]:
        raise ExportError("slices CSV rows are not (t_index, z_index) in volume order")
    volumes = data.volume.dicom.get("volumes") or []
    if n_t > 1 and len(volumes) != n_t:
        raise ExportError(f"the record has {len(volumes)} volumes' values, the array {n_t} volumes")


def exported_datasets(data: SeriesData, keep_uids: bool = False) -> Iterable[tuple[int, int, Dataset]]:
    """(t, z, dataset) of every plane, volume after volume, one stored shard of the array in memory at a time."""
    names = axis_names(data.volume)
    _check_rows(data, names)
    rescales = float_encoding(data.volume.array, names) if data.volume.array.dtype.kind == "f" else None
    uids = series_uids(data, keep_uids)
    # a source UID several planes share (mosaic tiles, enhanced frames) cannot name each: those are derived
    shared = {uid for uid, n in Counter(r.get("sop_instance_uid") for r in data.slices).items() if n > 1}
    for index, (t, z, plane) in enumerate(planes(data.volume.array, names)):
        keep = keep_uids and data.slices[index].get("sop_instance_uid") not in shared
        yield t, z, slice_dataset(data, t, z, plane, uids, keep, rescales[index] if rescales else None)


def export_dicom(data: SeriesData, to: str, keep_uids: bool = False) -> tuple[dict[str, Any], list[Dataset]]:
    """Write DIR/{key}/{z:05d}.dcm, or {t:03d}_{z:05d}.dcm for a 4D array (replacing an earlier export); the
    exports row and the headers written (without pixels, for a SEG that references them)."""
    storage.remove_tree(schemas.dicom_series_dir(to, data.key))
    four_d = axis_names(data.volume)[0] == "t"
    outputs, headers = [], []
    for t, z, ds in exported_datasets(data, keep_uids):
        uri = schemas.dicom_plane_uri(to, data.key, t, z) if four_d else schemas.dicom_slice_uri(to, data.key, z)
        storage.write_bytes(uri, encode(ds))
        outputs.append(uri)
        for keyword in ("PixelData", "FloatPixelData"):
            if keyword in ds:
                delattr(ds, keyword)
        headers.append(ds)
    return export_row(data.key, "dicom", schemas.EXPORTED, "", outputs), headers
