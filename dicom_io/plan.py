"""Plan one series: drop duplicates, split into stacks, order each stack, pick the dtype.

Pure and cheap (headers only), so a re-run recomputes the same plan for the same inputs.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from dicom_io import geometry
from dicom_io.header import InstanceHeader
from dicom_io.keys import series_key

COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR")
MISSING_SERIES_PREFIX = "no-series-uid:"  # group key of an instance without (0020,000E)
INT16_MIN, INT16_MAX = -32768, 32767

# Attributes that separate stacks within one SeriesInstanceUID, in the order they are tried.
SPLIT_ATTRIBUTES = ("orientation", "shape", "echo", "temporal_position", "b_value")


@dataclass(frozen=True)
class Exclusion:
    """An instance left out of every volume, with its status and reason for the table."""

    header: InstanceHeader
    status: str
    reason: str


@dataclass(frozen=True)
class StackPlan:
    """One future volume: its instances in z order and everything needed to write it."""

    series_key: str
    stack_index: int
    split_by: tuple[str, ...]
    stack_attributes: dict[str, Any]
    instances: tuple[InstanceHeader, ...]
    ordering: geometry.Ordering
    dtype: str
    frames_per_instance: int = 1

    @property
    def first(self) -> InstanceHeader:
        return self.instances[0]

    @property
    def colour(self) -> bool:
        """RGB/YBR (converted to RGB) or PALETTE COLOR: a trailing channel axis of 3."""
        return self.first.samples_per_pixel > 1 or self.first.photometric in COLOUR_PHOTOMETRICS

    @property
    def n_slices(self) -> int:
        return len(self.instances) * self.frames_per_instance

    def fingerprint(self) -> str:
        """Hash of what went into the volume (URIs, SOP UIDs, sizes, plan); a re-run skips on match."""
        digest = hashlib.sha256()
        for h in self.instances:
            digest.update(f"{h.source_uri}\0{h.sop_instance_uid}\0{h.size_bytes}\n".encode("utf-8", "surrogatepass"))
        digest.update(f"{self.dtype}|{self.ordering.geometry}|{self.split_by}".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class SeriesPlan:
    """All stacks of one SeriesInstanceUID plus the instances excluded from them."""

    series_instance_uid: str
    stacks: tuple[StackPlan, ...]
    exclusions: tuple[Exclusion, ...] = field(default=())


# Lossy transfer syntaxes: JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, HTJ2K lossy.
LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                            "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"})


def duplicate_identity(h: InstanceHeader) -> tuple:
    """Same (0008,0018) SOPInstanceUID *and* same pixel format and position: the same image.

    Archives hold one SOP instance in several encodings (a copy, a re-compression); but a
    shared UID with other frames or bit depth is a different image and is kept.
    """
    return (h.sop_instance_uid, h.rows, h.columns, h.number_of_frames, h.samples_per_pixel,
            h.bits_allocated, h.pixel_representation, h.image_position)


def drop_duplicates(headers: Iterable[InstanceHeader]) -> tuple[list[InstanceHeader], list[Exclusion]]:
    """Keep one instance per duplicate identity, preferring a lossless encoding, then the first URI."""
    kept: dict[tuple, InstanceHeader] = {}
    unique: list[InstanceHeader] = []
    excluded: list[Exclusion] = []
    ranked = sorted(headers, key=lambda h: (repr(duplicate_identity(h)), h.transfer_syntax_uid in LOSSY_SYNTAXES,
                                            h.source_uri))
    for h in ranked:
        identity = duplicate_identity(h)
        if h.sop_instance_uid and identity in kept:
            reason = f"duplicate: same SOPInstanceUID and pixel format as {kept[identity].source_uri}"
            excluded.append(Exclusion(h, "skipped", reason))
            continue
        if h.sop_instance_uid:
            kept[identity] = h
        unique.append(h)
    return unique, excluded


def _signature(h: InstanceHeader) -> dict[str, Any]:
    return {
        "orientation": geometry.orientation_key(h.image_orientation),
        "shape": (h.rows, h.columns, h.samples_per_pixel, h.bits_allocated),
        "echo": h.echo_number if h.echo_number is not None else h.echo_time,
        "temporal_position": h.temporal_position,
        "b_value": h.diffusion_b_value,
    }


def _sort_token(value: Any) -> tuple:
    return (value is not None, repr(value))


def _position_key(h: InstanceHeader) -> tuple | None:
    return None if h.image_position is None else tuple(round(v, 3) for v in h.image_position)


def _has_repeats(headers: Sequence[InstanceHeader]) -> bool:
    keys = [_position_key(h) for h in headers if h.image_position is not None]
    return len(keys) != len(set(keys))


def _split_repeats(headers: list[InstanceHeader]) -> tuple[str | None, list[list[InstanceHeader]]]:
    """Split a group whose positions repeat: by AcquisitionNumber, TriggerTime, else occurrence."""
    for name, attr in (("acquisition_number", "acquisition_number"), ("trigger_time", "trigger_time")):
        groups: dict[Any, list[InstanceHeader]] = defaultdict(list)
        for h in headers:
            groups[getattr(h, attr)].append(h)
        parts = [groups[k] for k in sorted(groups, key=_sort_token)]
        if len(parts) > 1 and not any(_has_repeats(p) for p in parts):
            return name, parts
    seen: Counter = Counter()
    occurrence: dict[int, list[InstanceHeader]] = defaultdict(list)
    for h in sorted(headers, key=lambda h: (h.instance_number or 0, h.source_uri)):
        key = _position_key(h)
        occurrence[seen[key]].append(h)
        seen[key] += 1
    return "repeated_position", [occurrence[k] for k in sorted(occurrence)]


def choose_dtype(headers: Sequence[InstanceHeader]) -> str:
    """int16 when every rescaled value the headers allow is an integer in int16, else float32.

    Colour keeps its sample size (uint8/16/32; palette expands to uint8). The range comes from (0028,0101) BitsStored and (0028,0103)
    PixelRepresentation with each instance's own (0028,1053) slope and (0028,1052) intercept.
    """
    first = headers[0]
    if first.photometric == "PALETTE COLOR":
        return "uint8"
    if first.samples_per_pixel > 1 or first.photometric in COLOUR_PHOTOMETRICS:
        return f"uint{max(8, first.bits_allocated)}"
    if any(h.pixel_element != "PixelData" or h.modality_lut_sequence for h in headers):
        return "float32"
    for h in headers:
        slope, intercept = h.rescale_slope, h.rescale_intercept
        if not (float(slope).is_integer() and float(intercept).is_integer()):
            return "float32"
        bits = max(1, min(h.bits_stored, h.bits_allocated))
        lo, hi = ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if h.pixel_representation else (0, 2**bits - 1))
        ends = (lo * slope + intercept, hi * slope + intercept)
        if min(ends) < INT16_MIN or max(ends) > INT16_MAX:
            return "float32"
    return "int16"


def _stack_plan(series_uid: str, index: int, split_by: tuple[str, ...], attrs: dict, headers: list[InstanceHeader]) -> StackPlan:
    if len(headers) == 1 and headers[0].number_of_frames > 1:
        frames = headers[0].number_of_frames
        ordering = geometry.Ordering(tuple(range(1)), geometry.NO_GEOMETRY, "frame_order", None, None)
        return StackPlan(series_key(series_uid, index), index, split_by, attrs, tuple(headers), ordering,
                         choose_dtype(headers), frames)
    thickness = headers[0].series_tags.get("SliceThickness")
    ordering = geometry.order_slices(
        [h.image_position for h in headers], headers[0].image_orientation,
        [h.instance_number for h in headers], float(thickness) if isinstance(thickness, (int, float)) else None,
    )
    ordered = tuple(headers[i] for i in ordering.order)
    return StackPlan(series_key(series_uid, index), index, split_by, attrs, ordered, ordering, choose_dtype(ordered))


def _groups(headers: list[InstanceHeader]) -> tuple[tuple[str, ...], list[tuple[dict, list[InstanceHeader]]]]:
    single = [h for h in headers if h.number_of_frames == 1]
    multi = sorted((h for h in headers if h.number_of_frames > 1), key=lambda h: (h.sop_instance_uid, h.source_uri))
    by_sig: dict[tuple, list[InstanceHeader]] = defaultdict(list)
    sigs: dict[tuple, dict] = {}
    for h in single:
        sig = _signature(h)
        key = tuple(_sort_token(sig[a]) for a in SPLIT_ATTRIBUTES)
        by_sig[key].append(h)
        sigs[key] = sig
    varying = tuple(a for a in SPLIT_ATTRIBUTES if len({repr(s[a]) for s in sigs.values()}) > 1)
    groups: list[tuple[dict, list[InstanceHeader]]] = []
    split_by = set(varying)
    for key in sorted(by_sig):
        attrs = {a: sigs[key][a] for a in varying}
        members = by_sig[key]
        if _has_repeats(members):
            name, parts = _split_repeats(members)
            split_by.add(name)
            groups.extend(({**attrs, name: i}, part) for i, part in enumerate(parts))
        else:
            groups.append((attrs, members))
    if multi:
        split_by.add("multiframe_instance")
        groups.extend(({"sop_instance_uid": h.sop_instance_uid}, [h]) for h in multi)
    return tuple(sorted(split_by)), groups


def plan_series(series_instance_uid: str, headers: Iterable[InstanceHeader]) -> SeriesPlan:
    """Dedupe, split into stacks and order every stack of one series (headers only)."""
    unique, exclusions = drop_duplicates(headers)
    split_by, groups = _groups(unique)
    stacks = tuple(
        _stack_plan(series_instance_uid, i, split_by, _jsonable(attrs), members)
        for i, (attrs, members) in enumerate(groups)
    )
    return SeriesPlan(series_instance_uid, stacks, tuple(exclusions))


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}
