"""Header-only reading: one small, picklable record per file, never the pixel data.

One parse (`parse_header`: bounded, never the pixels), one record (`header_record`), and
`read_header` for both. The record is what crosses the shuffle, so it holds only what grouping,
ordering, dtype choice and the output tables need (a few hundred bytes per instance); the values
that tell volumes apart come from one table, `dicom_io.attributes.VOLUME_ATTRIBUTES`.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import PersonName

from dicom_io import attributes, deflate, elements
from dicom_io.attributes import Values
from dicom_io.errors import DicomflowError, HeaderError, NoPixelDataError, NotDicomError
from dicom_io.mosaic import Mosaic, read_mosaic

HEADER_INFLATE_LIMIT = 64 * 1024 * 1024  # a deflated header is parsed from at most this much
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM"})
PIXEL_TAGS = deflate.PIXEL_TAGS  # (7FE0,0010) PixelData, (7FE0,0008) Float, (7FE0,0009) Double Float

# Series-level tags carried into series JSON, Zarr attributes and the summary table.
SERIES_TAGS: tuple[str, ...] = (
    "PatientID", "PatientSex", "PatientAge", "StudyInstanceUID", "SeriesInstanceUID",
    "StudyDate", "SeriesDate", "Modality", "Manufacturer", "ManufacturerModelName",
    "BodyPartExamined", "SeriesDescription", "SeriesNumber", "Rows", "Columns", "PixelSpacing",
    "SliceThickness", "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter",
    "WindowWidth", "ConvolutionKernel", "KVP", "PhotometricInterpretation", "AccessionNumber",
    "FrameOfReferenceUID",
)


@dataclass(frozen=True)
class FrameInfo:
    """One plane of a multi-plane instance: an enhanced frame (its functional groups, C.7.6.16)
    or a tile of a Siemens mosaic."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    rescale: tuple[float, float]  # (slope, intercept) from PixelValueTransformationSequence
    volume: Values = ()  # attributes.VOLUME_ATTRIBUTES of this frame
    philips_scale: float | None = None  # (2005,100E) ScaleSlope in this frame's Philips group (2005,140F)


@dataclass(frozen=True)
class InstanceHeader:
    """What one DICOM file says about itself, minus the pixels."""

    source_uri: str
    size_bytes: int
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    image_type: tuple[str, ...]
    instance_number: int | None
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) in mm
    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    rescale_slope: float
    rescale_intercept: float
    volume: Values = ()  # attributes.VOLUME_ATTRIBUTES of the instance: (name, value), table order
    pixel_element: str | None = None
    pixel_offset: int | None = None  # byte offset of the PixelData value (native encodings only)
    pixel_length: int | None = None  # its declared length; None when undefined (encapsulated)
    modality_lut_sequence: bool = False  # (0028,3000): output range set by the LUT, not slope/intercept
    frames: tuple[FrameInfo, ...] | None = None  # enhanced multi-frame or mosaic: per-plane geometry and values
    mosaic: Mosaic | None = None  # Siemens mosaic: the stored image is a grid of `frames`
    philips_scale: float | None = None  # (2005,100E) Philips MR ScaleSlope, for --philips_scaling=fp
    burned_in_annotation: str | None = None  # (0028,0301): identifying text in the pixels
    label: str | None = None  # the file's value in the manifest's label column (preview names)
    series_tags: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def value(self, name: str) -> Any:
        """The instance's value of a volume attribute (attributes.VOLUME_ATTRIBUTES), None when absent."""
        return dict(self.volume).get(name)

    @property
    def acquisition_number(self) -> int | None:
        return self.value("acquisition_number")

    @property
    def echo_time(self) -> float | None:
        return self.value("echo_time")

    @property
    def plane_rows(self) -> int:
        """Rows of one slice: (0028,0010) Rows, or a mosaic tile's."""
        return self.mosaic.tile_rows if self.mosaic else self.rows

    @property
    def plane_columns(self) -> int:
        return self.mosaic.tile_columns if self.mosaic else self.columns

    @property
    def n_planes(self) -> int:
        """Slices this instance holds: its frames, or the images of a mosaic."""
        return self.mosaic.n_images if self.mosaic else self.number_of_frames

    @property
    def is_localizer(self) -> bool:
        """(0008,0008) ImageType names LOCALIZER, SCOUT or TOPOGRAM."""
        return any(value.upper() in LOCALIZER_TYPES for value in self.image_type)


def json_value(value: Any) -> Any:
    """A pydicom element value as plain JSON (lists for multi-valued, str for names)."""
    if isinstance(value, (MultiValue, list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, float):  # DSfloat is a float subclass
        return float(value)
    if isinstance(value, int):  # IS is an int subclass
        return int(value)
    if value is None:
        return None
    return str(value)


def _num(ds: pydicom.Dataset, keyword: str, cast: type, default: Any = None) -> Any:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    if isinstance(value, (MultiValue, list)):
        value = value[0] if len(value) else None
        if value is None:
            return default
    try:
        return cast(value)
    except (TypeError, ValueError):
        return default


def _floats(ds: pydicom.Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword, None)
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):  # inf/nan: no geometry
        return None
    return numbers


def _parse(fp: IO[bytes], uri: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(fp, stop_before_pixels=True, defer_size="64 KB")
    except InvalidDicomError:
        fp.seek(0)  # no preamble: accept only if forced reading finds real elements
    except Exception as exc:  # pydicom raises many types on damaged files
        raise NotDicomError(f"not dicom: {type(exc).__name__}: {exc}") from exc
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size="64 KB", force=True)
    except Exception as exc:
        raise NotDicomError(f"not dicom: no DICM prefix and unreadable ({exc})") from exc
    if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
        raise NotDicomError("not dicom: no DICM prefix and no SOP Common elements")
    return ds


def ensure_transfer_syntax(ds: pydicom.Dataset) -> str:
    """(0002,0010) TransferSyntaxUID, inferred from how the dataset parsed when the meta lacks it."""
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1" if little is not False else "1.2.840.10008.1.2.2")
    return str(ds.file_meta.TransferSyntaxUID)


def _sop_class_name(ds: pydicom.Dataset) -> str:
    try:
        meta = getattr(ds, "file_meta", None) or {}
        uid = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        return UID(str(uid)).name if uid else "no SOP class"
    except Exception:  # an unreadable SOP Class UID (bad VR, bad length)
        return "unreadable SOP class"


def _known_sop_class(ds: pydicom.Dataset) -> bool:
    """The SOP Class UID is a registered one (a damaged or cut-off UID is not)."""
    from pydicom._uid_dict import UID_dictionary

    meta = getattr(ds, "file_meta", None) or {}
    try:
        uid = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")
    except Exception:
        return False
    return uid in UID_dictionary or uid.startswith(("1.2.840.10008.5.1.4.1.1.", "1.2.840.10008.1.3.10"))


def _pixel_element(fp: IO[bytes], ds: pydicom.Dataset) -> tuple[str | None, int | None, int | None]:
    """Peek the element where header reading stopped: (pixel element name, value offset, length)."""
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None, None, None
    implicit, little = ds.original_encoding
    little = True if little is None else little
    group, elem = struct.unpack("<HH" if little else ">HH", head[:4])
    name = PIXEL_TAGS.get((group << 16) | elem)
    if name is None:
        return None, None, None
    if implicit or implicit is None and head[4:6] not in (b"OB", b"OW", b"OF", b"OD"):
        length, header_size = struct.unpack("<I" if little else ">I", head[4:8])[0], 8
    else:
        length, header_size = struct.unpack("<I" if little else ">I", head[8:12])[0], 12
    if length == 0xFFFFFFFF:
        return name, None, None
    return name, start + header_size, length


IMAGE_MODULE = ("Rows", "Columns", "BitsAllocated")


class ParsedHeader(NamedTuple):
    """What the one bounded parse of a file gives: the dataset (pixels never read, values over
    64 KB deferred) and the pixel element after it (None for SR, RT, KO, DICOMDIR...)."""

    dataset: pydicom.Dataset
    pixel_element: str | None
    pixel_offset: int | None  # byte offset of a native PixelData value
    pixel_length: int | None  # its declared length; None when undefined (encapsulated)


def parse_header(fp: IO[bytes], uri: str, size_bytes: int) -> ParsedHeader:
    """The one parse: header only, never the pixels; every failure a NotDicomError with its reason.

    An object without pixel data is not an error here (pipelines.manifest lists it).
    """
    if size_bytes == 0:
        raise NotDicomError("not dicom: empty file")
    try:
        meta = deflate.deflated_meta(fp)
        if meta is not None:  # inflate a bounded amount, never the whole stream
            (ds, pixel_element), offset, length = deflate.read_header(fp, meta, HEADER_INFLATE_LIMIT), None, None
        else:
            ds = _parse(fp, uri)
            pixel_element, offset, length = _pixel_element(fp, ds)
        meta = getattr(ds, "file_meta", None) or {}
        has_sop_class = "SOPClassUID" in ds or "MediaStorageSOPClassUID" in meta
    except DicomflowError:
        raise
    except Exception as exc:  # pydicom raises many types on damaged files (even NotImplementedError)
        raise NotDicomError(f"not dicom: {type(exc).__name__}: {exc}") from exc
    if pixel_element is None and len(ds) == 0:
        raise NotDicomError(f"not dicom: truncated or empty dataset (no elements after file meta, {size_bytes} bytes)")
    if pixel_element is None and not has_sop_class:
        raise NotDicomError("not dicom: no SOP class in the dataset or its file meta")
    if pixel_element is None and (all(k in ds for k in IMAGE_MODULE) or "Image Storage" in _sop_class_name(ds)):
        raise NotDicomError(f"not dicom: truncated before the pixel data ({_sop_class_name(ds)} without PixelData)")
    if pixel_element is None and not _known_sop_class(ds):
        raise NotDicomError(f"not dicom: unknown SOP Class UID {_sop_class_name(ds)!r} and no pixel data")
    return ParsedHeader(ds, pixel_element, offset, length)


def read_header(fp: IO[bytes], uri: str, size_bytes: int) -> InstanceHeader:
    """parse_header then header_record; an object without pixels raises NoPixelDataError with the reason."""
    parsed = parse_header(fp, uri, size_bytes)
    if parsed.pixel_element is None:
        raise NoPixelDataError(no_pixel_data_reason(parsed.dataset))
    return header_record(parsed, uri, size_bytes)


def no_pixel_data_reason(ds: pydicom.Dataset) -> str:
    """The reason read_header gives an object without pixel data: 'no pixel data (RT Plan Storage)'."""
    return f"no pixel data ({_sop_class_name(ds)})"


# ---- the record -----------------------------------------------------------------------------


def _group_item(fg: pydicom.Dataset | None, shared: pydicom.Dataset | None, keyword: str) -> pydicom.Dataset | None:
    """First item of functional group `keyword`, per-frame first, else shared (PS3.3 C.7.6.16)."""
    for source in (fg, shared):
        if source is not None and keyword in source and len(source[keyword].value):
            return source[keyword].value[0]
    return None


def _frame_info(fg: pydicom.Dataset | None, shared: pydicom.Dataset | None, instance: Values) -> FrameInfo:
    def group(keyword: str) -> pydicom.Dataset | None:
        return _group_item(fg, shared, keyword)

    position, orientation = group("PlanePositionSequence"), group("PlaneOrientationSequence")
    transform = group("PixelValueTransformationSequence")
    return FrameInfo(
        position=_floats(position, "ImagePositionPatient", 3) if position is not None else None,
        orientation=_floats(orientation, "ImageOrientationPatient", 6) if orientation is not None else None,
        rescale=(_num(transform, "RescaleSlope", float, 1.0), _num(transform, "RescaleIntercept", float, 0.0))
        if transform is not None else (1.0, 0.0),
        volume=attributes.frame_values(group, instance),
        philips_scale=_philips_frame_scale(fg),
    )


PHILIPS_PER_FRAME_GROUP = 0x2005140F  # (2005,140F) Philips private per-frame sequence of enhanced MR


def _philips_frame_scale(fg: pydicom.Dataset | None) -> float | None:
    """The frame's (2005,100E) ScaleSlope, kept in its Philips private group (as dcm2niix reads it)."""
    if fg is None or PHILIPS_PER_FRAME_GROUP not in fg._dict:
        return None
    items = fg[PHILIPS_PER_FRAME_GROUP].value
    if not isinstance(items, pydicom.Sequence) or not items:
        return None
    item = items[0]
    return _philips_scale({PHILIPS_SCALE_SLOPE: item[PHILIPS_SCALE_SLOPE].value}) \
        if PHILIPS_SCALE_SLOPE in item._dict else None


def enhanced_frames(ds: pydicom.Dataset, instance: Values = ()) -> tuple[FrameInfo, ...] | None:
    """Per-frame records of an enhanced multi-frame instance; None for other instances.

    Only the first (0028,0008) NumberOfFrames items count (derived files keep their parent's
    items); fewer items than frames means the groups cannot be trusted: None.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n_frames = max(1, _num(ds, "NumberOfFrames", int, 1) or 1)
    if not per_frame or len(per_frame) < n_frames:
        return None
    per_frame = list(per_frame)[:n_frames]
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    return tuple(_frame_info(fg, shared, instance) for fg in per_frame)


def _enhanced_defaults(ds: pydicom.Dataset, frames: tuple[FrameInfo, ...] | None) -> dict[str, Any]:
    """Instance-level geometry and rescale taken from the shared functional groups when absent."""
    if not frames:
        return {}
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    first_fg = ds.PerFrameFunctionalGroupsSequence[0]
    measures = _group_item(first_fg, shared, "PixelMeasuresSequence")
    defaults: dict[str, Any] = {"rescale_slope": frames[0].rescale[0], "rescale_intercept": frames[0].rescale[1],
                                "image_position": frames[0].position, "image_orientation": frames[0].orientation}
    if measures is not None:
        defaults["pixel_spacing"] = _floats(measures, "PixelSpacing", 2)
        thickness = _num(measures, "SliceThickness", float)
        if thickness is not None:
            defaults["slice_thickness"] = thickness
    return defaults


def _tag_number(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


# Values are validated as dicomflow uses them (geometry, pixel module, sizes); pydicom's own reading
# validation only warns, and costs about a tenth of a header parse.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

PHILIPS_SCALE_SLOPE = 0x2005100E  # (2005,100E) Philips MR private ScaleSlope (FL)

# Every element the record reads, looked up once by tag number (keyword lookups cost more
# than parsing the header itself); volume attributes come from their table.
_RECORD_KEYWORDS = tuple(dict.fromkeys(SERIES_TAGS + attributes.KEYWORDS + (
    "ImageType", "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient", "ImagerPixelSpacing", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated",
    "BitsStored", "PixelRepresentation", "ModalityLUTSequence", "BurnedInAnnotation", "SpacingBetweenSlices")))
_RECORD_TAGS = tuple((kw, _tag_number(kw)) for kw in _RECORD_KEYWORDS) + tuple(
    (tag, tag) for tag in attributes.PRIVATE_TAGS + (PHILIPS_SCALE_SLOPE,))


def element_values(ds: pydicom.Dataset) -> dict[str | int, Any]:
    """Values of the record's elements present in `ds`, by keyword (private ones by tag number),
    decoded from their raw bytes where that gives pydicom's value (dicom_io.elements)."""
    return elements.values_of(ds, _RECORD_TAGS)


BITS_ALLOCATED = (1, 8, 16, 32, 64)


def _check_pixel_module(v: dict[str, Any]) -> None:
    """Refuse pixel-module values no image has (PS3.3 C.7.6.3), before any arithmetic on them."""
    allocated, stored = _num(v, "BitsAllocated", int, 16), _num(v, "BitsStored", int, None)
    samples = _num(v, "SamplesPerPixel", int, 1)
    if allocated not in BITS_ALLOCATED:
        raise HeaderError(f"invalid header: (0028,0100) BitsAllocated is {allocated}")
    if stored is not None and not 1 <= stored <= allocated:
        raise HeaderError(f"invalid header: (0028,0101) BitsStored {stored} with BitsAllocated {allocated}")
    if samples not in (1, 3, 4):
        raise HeaderError(f"invalid header: (0028,0002) SamplesPerPixel is {samples}")


def _philips_scale(v: dict[str | int, Any]) -> float | None:
    raw = v.get(PHILIPS_SCALE_SLOPE)
    if isinstance(raw, bytes):  # implicit VR without the private dictionary: raw FL
        raw = struct.unpack("<f", raw[:4])[0] if len(raw) >= 4 else None
    value = attributes.number(raw)
    return float(value) if value else None


def _mosaic_frames(h: InstanceHeader, ds: pydicom.Dataset, v: dict[str | int, Any]) -> InstanceHeader:
    """A Siemens mosaic becomes one plane per tile, each at its corrected position."""
    spacing = _num(v, "SpacingBetweenSlices", float) or _num(v, "SliceThickness", float)
    mosaic = read_mosaic(ds, h.image_type, h.rows, h.columns, h.image_position, h.image_orientation,
                         h.pixel_spacing, spacing)
    if mosaic is None or h.number_of_frames != 1 or h.samples_per_pixel != 1:
        return h
    positions = mosaic.positions or (None,) * mosaic.n_images
    frames = tuple(FrameInfo(p, h.image_orientation, (h.rescale_slope, h.rescale_intercept), h.volume)
                   for p in positions)
    return dataclasses.replace(h, mosaic=mosaic, frames=frames)


def _build_record(ds: pydicom.Dataset, uri: str, size_bytes: int, pixel_element: str | None) -> InstanceHeader:
    tsuid = ensure_transfer_syntax(ds)
    v = element_values(ds)
    raw_type = v.get("ImageType") or ()
    image_type = (str(raw_type),) if isinstance(raw_type, str) else tuple(str(t) for t in raw_type)
    tags = {kw: json_value(v[kw]) for kw in SERIES_TAGS if kw in v}
    volume = attributes.instance_values(v)
    frames = enhanced_frames(ds, volume)
    enhanced = _enhanced_defaults(ds, frames)
    if "slice_thickness" in enhanced:
        tags.setdefault("SliceThickness", enhanced["slice_thickness"])
    if enhanced.get("pixel_spacing"):
        tags.setdefault("PixelSpacing", list(enhanced["pixel_spacing"]))
    _check_pixel_module(v)
    header = InstanceHeader(
        source_uri=uri,
        size_bytes=size_bytes,
        sop_instance_uid=str(v.get("SOPInstanceUID", "") or ""),
        series_instance_uid=str(v.get("SeriesInstanceUID", "") or ""),
        study_instance_uid=str(v.get("StudyInstanceUID", "") or ""),
        sop_class_uid=str(v.get("SOPClassUID", "") or ""),
        transfer_syntax_uid=tsuid,
        modality=str(v.get("Modality", "") or ""),
        image_type=image_type,
        instance_number=_num(v, "InstanceNumber", int),
        image_position=_floats(v, "ImagePositionPatient", 3),
        image_orientation=_floats(v, "ImageOrientationPatient", 6),
        pixel_spacing=_floats(v, "PixelSpacing", 2) or _floats(v, "ImagerPixelSpacing", 2),
        rows=_num(v, "Rows", int, 0),
        columns=_num(v, "Columns", int, 0),
        number_of_frames=max(1, _num(v, "NumberOfFrames", int, 1) or 1),
        samples_per_pixel=_num(v, "SamplesPerPixel", int, 1),
        photometric=str(v.get("PhotometricInterpretation", "") or ""),
        bits_allocated=_num(v, "BitsAllocated", int, 16),
        bits_stored=_num(v, "BitsStored", int, _num(v, "BitsAllocated", int, 16)),
        pixel_representation=_num(v, "PixelRepresentation", int, 0),
        rescale_slope=_num(v, "RescaleSlope", float, 1.0),
        rescale_intercept=_num(v, "RescaleIntercept", float, 0.0),
        volume=volume,
        pixel_element=pixel_element,
        modality_lut_sequence="ModalityLUTSequence" in v,
        frames=frames,
        burned_in_annotation=str(v["BurnedInAnnotation"]) if v.get("BurnedInAnnotation") else None,
        philips_scale=_philips_scale(v),
        series_tags=tags,
    )
    changes = {k: v for k, v in enhanced.items() if k != "slice_thickness" and v is not None
               and getattr(header, k) in (None, 1.0, 0.0)}
    header = dataclasses.replace(header, **changes) if changes else header
    return header if frames else _mosaic_frames(header, ds, v)


def header_record(parsed: ParsedHeader, uri: str, size_bytes: int) -> InstanceHeader:
    """The one record of a parsed header; uninterpretable values raise HeaderError with the reason."""
    try:
        header = _build_record(parsed.dataset, uri, size_bytes, parsed.pixel_element)
    except HeaderError:
        raise
    except Exception as exc:  # lazily converted values (bad DS/IS, broken sequences)
        raise HeaderError(f"invalid header: {type(exc).__name__}: {exc}") from exc
    return dataclasses.replace(header, pixel_offset=parsed.pixel_offset, pixel_length=parsed.pixel_length)
