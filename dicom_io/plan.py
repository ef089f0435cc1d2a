"""Plan one series: drop duplicates, split into stacks, order each stack, pick the dtype.

A stack is built from slices: a single-frame instance is one slice, an enhanced multi-frame
instance one slice per frame (its functional groups give each frame's position), so both
split and order the same way. Pure and cheap (headers only): a re-run recomputes the same
plan for the same inputs.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

from dicom_io import attributes, geometry, pixels
from dicom_io.header import InstanceHeader
from dicom_io.keys import series_key

COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR")
MISSING_SERIES_PREFIX = "no-series-uid:"  # group key of an instance without (0020,000E)

# Attributes that separate stacks within one SeriesInstanceUID, in the order they are tried
# (the volume attributes with role SPLIT come from dicom_io.attributes).
SPLIT_ATTRIBUTES = ("orientation", "shape", *attributes.SPLIT_NAMES, "multiframe_instance")

# Lossy transfer syntaxes: JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, HTJ2K lossy.
LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                            "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"})


@dataclass(frozen=True)
class SliceRef:
    """One plane of a future volume: an instance, the frame in it, and where it lies."""

    header: InstanceHeader
    frame: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    rescale: tuple[float, float]
    attrs: attributes.Values = ()  # attributes.VOLUME_ATTRIBUTES of this slice

    def value(self, name: str) -> Any:
        for key, value in self.attrs:  # a handful of pairs: no dict per call
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class Exclusion:
    """An instance left out of every volume, with its status and reason for the table."""

    header: InstanceHeader
    status: str
    reason: str


@dataclass(frozen=True)
class StackPlan:
    """One future volume: its slices in z order and everything needed to write it."""

    series_key: str
    stack_index: int
    split_by: tuple[str, ...]
    stack_attributes: dict[str, Any]
    slices: tuple[SliceRef, ...]
    ordering: geometry.Ordering
    dtype: str
    volumes: tuple[dict[str, Any], ...] = ()  # per volume, in t order: volume_attributes(); () = one volume
    philips_scaling: str | None = None  # "dv"/"fp" when Philips scale factors apply to the stack, else None

    @property
    def first(self) -> InstanceHeader:
        return self.slices[0].header

    @property
    def instances(self) -> tuple[InstanceHeader, ...]:
        """Distinct instances in order of their first slice."""
        seen: dict[str, InstanceHeader] = {}
        for s in self.slices:
            seen.setdefault(s.header.source_uri, s.header)
        return tuple(seen.values())

    @property
    def colour(self) -> bool:
        """RGB/YBR (converted to RGB) or PALETTE COLOR: a trailing channel axis of 3."""
        return self.first.samples_per_pixel > 1 or self.first.photometric in COLOUR_PHOTOMETRICS

    @property
    def n_volumes(self) -> int:
        """Volumes along t: more than one makes the array (t, z, y, x)."""
        return max(1, len(self.volumes))

    @property
    def n_slices(self) -> int:
        """Slices per volume."""
        return len(self.slices) // self.n_volumes

    def fingerprint(self) -> str:
        """Hash of what went into the volume (URIs, SOP UIDs, sizes, frames, plan); a re-run skips on match."""
        digest = hashlib.sha256()
        for s in self.slices:
            h = s.header
            digest.update(f"{h.source_uri}\0{h.sop_instance_uid}\0{h.size_bytes}\0{s.frame}\n"
                          .encode("utf-8", "surrogatepass"))
        digest.update(f"{self.dtype}|{self.ordering.geometry}|{self.split_by}|{self.n_volumes}|"
                      f"{self.philips_scaling}".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class SeriesPlan:
    """All stacks of one SeriesInstanceUID plus the instances excluded from them."""

    series_instance_uid: str
    stacks: tuple[StackPlan, ...]
    exclusions: tuple[Exclusion, ...] = field(default=())


Digest = Callable[[InstanceHeader], str]


def duplicate_identity(h: InstanceHeader) -> tuple:
    """Same (0008,0018) SOPInstanceUID, pixel format and position: a candidate duplicate.

    Archives hold one SOP instance in several encodings (a copy, a re-compression); but a
    shared UID with other frames or bit depth is a different image and is kept.
    """
    return (h.sop_instance_uid, h.rows, h.columns, h.number_of_frames, h.samples_per_pixel,
            h.bits_allocated, h.pixel_representation, h.image_position)


def _memo(digest: Digest | None) -> Digest | None:
    """`digest` computed once per instance (the two duplicate rules may both ask)."""
    if digest is None:
        return None
    seen: dict[str, str] = {}

    def cached(h: InstanceHeader) -> str:
        if h.source_uri not in seen:
            seen[h.source_uri] = digest(h)
        return seen[h.source_uri]

    return cached


def _preferred(headers: Iterable[InstanceHeader]) -> list[InstanceHeader]:
    """Lossless encodings first, then by URI: the copy kept of a duplicate."""
    return sorted(headers, key=lambda h: (h.transfer_syntax_uid in LOSSY_SYNTAXES, h.source_uri))


def drop_duplicates(headers: Iterable[InstanceHeader], digest: Digest | None = None
                    ) -> tuple[list[InstanceHeader], list[Exclusion]]:
    """One instance per SOPInstanceUID *and* pixels: the same UID with other pixels (a lossy
    re-compression, an edited copy) is another image and is kept.

    `digest` (decoded pixels -> hash) is only called on instances that share a duplicate_identity;
    without it (no pixel access) the header identity alone decides. Keeps a lossless encoding first,
    then the first URI.
    """
    kept: dict[tuple, list[InstanceHeader]] = defaultdict(list)
    unique: list[InstanceHeader] = []
    excluded: list[Exclusion] = []
    for h in _preferred(headers):
        identity = duplicate_identity(h)
        twin = next((k for k in kept.get(identity, ()) if digest is None or digest(k) == digest(h)), None)
        if h.sop_instance_uid and twin is not None:
            excluded.append(Exclusion(h, "skipped", f"duplicate: same SOPInstanceUID and pixels as {twin.source_uri}"))
            continue
        if h.sop_instance_uid:
            kept[identity].append(h)
        unique.append(h)
    return unique, excluded


def drop_identical_pixels(headers: list[InstanceHeader], digest: Digest | None
                          ) -> tuple[list[InstanceHeader], list[Exclusion]]:
    """Instances with other SOP UIDs at one position, shape and volume (b-value, echo, temporal
    position, trigger time, acquisition number and time...: attributes.VOLUME_ATTRIBUTES), and
    identical pixels: keep the first. Images of other volumes may repeat pixels and are kept.

    `digest` (pixels -> hash) is only called for such candidates, which are rare.
    """
    if digest is None:
        return headers, []
    by_place: dict[tuple, list[InstanceHeader]] = defaultdict(list)
    for h in headers:
        if h.image_position is not None and h.number_of_frames == 1:
            by_place[(h.image_position, h.image_orientation, h.rows, h.columns, h.bits_allocated,
                      repr(h.volume))].append(h)
    dropped: list[Exclusion] = []
    for group in by_place.values():
        if len(group) < 2:
            continue
        first_seen: dict[str, InstanceHeader] = {}
        for h in _preferred(group):
            key = digest(h)
            if key in first_seen:
                reason = f"duplicate: identical pixels at the same position as {first_seen[key].source_uri}"
                dropped.append(Exclusion(h, "skipped", reason))
            else:
                first_seen[key] = h
    gone = {e.header.source_uri for e in dropped}
    return [h for h in headers if h.source_uri not in gone], dropped


def slices_of(h: InstanceHeader) -> list[SliceRef]:
    """The planes an instance contributes: one, or one per enhanced frame or mosaic tile."""
    if h.frames:
        return [SliceRef(h, i, f.position, f.orientation or h.image_orientation, f.rescale, f.volume)
                for i, f in enumerate(h.frames)]
    rescale = (h.rescale_slope, h.rescale_intercept)
    if h.number_of_frames > 1:  # plain multi-frame (cine, US): no per-frame geometry
        return [SliceRef(h, i, None, None, rescale, h.volume) for i in range(h.number_of_frames)]
    return [SliceRef(h, 0, h.image_position, h.image_orientation, rescale, h.volume)]


def _signature(s: SliceRef) -> dict[str, Any]:
    h = s.header
    plain_multiframe = h.number_of_frames > 1 and not h.frames
    return {
        "orientation": geometry.orientation_key(s.orientation),
        "shape": (h.plane_rows, h.plane_columns, h.samples_per_pixel, h.bits_allocated),
        **{name: s.value(name) for name in attributes.SPLIT_NAMES},
        # by file: two files may share a SOPInstanceUID with other pixels (not duplicates then)
        "multiframe_instance": f"{h.sop_instance_uid}|{h.source_uri}" if plain_multiframe else None,
    }


def _sort_token(value: Any) -> tuple:
    return (value is not None, repr(value))


def _position_key(s: SliceRef) -> tuple | None:
    return None if s.position is None else tuple(round(v, 3) for v in s.position)


def _has_repeats(slices: Sequence[SliceRef]) -> bool:
    keys = [_position_key(s) for s in slices if s.position is not None]
    return len(keys) != len(set(keys))


def _split_repeats(slices: list[SliceRef]) -> tuple[str, list[list[SliceRef]]]:
    """Split a group whose positions repeat: by AcquisitionNumber, TriggerTime, else occurrence."""
    for name in attributes.REPEAT_NAMES:
        groups: dict[Any, list[SliceRef]] = defaultdict(list)
        for s in slices:
            groups[s.value(name)].append(s)
        parts = [groups[k] for k in sorted(groups, key=_sort_token)]
        if len(parts) > 1 and not any(_has_repeats(p) for p in parts):
            return name, parts
    seen: Counter = Counter()
    occurrence: dict[int, list[SliceRef]] = defaultdict(list)
    for s in sorted(slices, key=lambda s: (s.header.instance_number or 0, s.header.source_uri, s.frame)):
        key = _position_key(s)
        occurrence[seen[key]].append(s)
        seen[key] += 1
    return "repeated_position", [occurrence[k] for k in sorted(occurrence)]


def choose_dtype(slices: Sequence[SliceRef]) -> str:
    """The dtype a stack starts in: int16 when every slice's rescale keeps values integers, else float32.

    int16 is a first try, not a promise: the values decide (convert redoes the stack in
    pixels.wider_dtype when a decoded value does not fit), so CT with (0028,1052) RescaleIntercept
    -1024 on signed 16-bit storage stays int16 HU when its values fit. Colour keeps its sample size
    (uint8/16/32; palette expands to uint8). Float pixel data and Modality LUT Sequences: float32.
    """
    first = slices[0].header
    if first.photometric == "PALETTE COLOR":
        return "uint8"
    if first.samples_per_pixel > 1 or first.photometric in COLOUR_PHOTOMETRICS:
        return f"uint{max(8, first.bits_allocated)}"
    if any(s.header.pixel_element != "PixelData" or s.header.modality_lut_sequence for s in slices):
        return "float32"
    for s in slices:
        slope, intercept = s.rescale
        if not (float(slope).is_integer() and float(intercept).is_integer()):
            return "float32"
    return "int16"


def _stack_plan(series_uid: str, index: int, split_by: tuple[str, ...], attrs: dict, slices: list[SliceRef]) -> StackPlan:
    thickness = slices[0].header.series_tags.get("SliceThickness")
    first = slices[0].header
    if first.number_of_frames > 1 and not first.frames and all(s.header is first for s in slices):
        # one plain multi-frame instance (cine, ultrasound): frame order is the order
        ordering = geometry.Ordering(tuple(range(len(slices))), geometry.NO_GEOMETRY, "frame_order", None, None)
    else:
        ordering = geometry.order_slices(
            [s.position for s in slices], slices[0].orientation,
            [(s.header.instance_number or 0) * 100000 + s.frame for s in slices],
            float(thickness) if isinstance(thickness, (int, float)) else None,
        )
    ordered = tuple(slices[i] for i in ordering.order)
    return StackPlan(series_key(series_uid, index), index, split_by, attrs, ordered, ordering, choose_dtype(ordered))


def _groups(headers: list[InstanceHeader]) -> tuple[tuple[str, ...], list[tuple[dict, list[SliceRef]]]]:
    by_sig: dict[tuple, list[SliceRef]] = defaultdict(list)
    sigs: dict[tuple, dict] = {}
    for h in sorted(headers, key=lambda h: h.source_uri):
        for s in slices_of(h):
            sig = _signature(s)
            key = tuple(_sort_token(sig[a]) for a in SPLIT_ATTRIBUTES)
            by_sig[key].append(s)
            sigs[key] = sig
    varying = tuple(a for a in SPLIT_ATTRIBUTES if len({repr(s[a]) for s in sigs.values()}) > 1)
    groups: list[tuple[dict, list[SliceRef]]] = []
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
    return tuple(sorted(split_by)), groups


def volume_attributes(slices: Sequence[SliceRef], ordering: geometry.Ordering) -> dict[str, Any]:
    """One volume's attributes (attributes.VOLUME_ATTRIBUTES of its first slice), and the diffusion
    direction also in image axes: components along the column index (row direction cosine), the row
    index (column cosine) and the slice index (the stack's step), as .bvec files want."""
    # image_type never varies inside one array (it splits stacks, never joins them): not a volume value
    skip = ("stack_id", *attributes.SEPARATE_NAMES)
    values = {k: v for k, v in _jsonable(dict(slices[0].attrs)).items() if k not in skip}
    direction, orientation = values.get("diffusion_direction"), slices[0].orientation
    values["diffusion_direction_image"] = None
    if direction is not None and orientation is not None:
        normal = geometry.slice_normal(orientation)
        if ordering.step_vector is not None and sum(a * b for a, b in zip(ordering.step_vector, normal)) < 0:
            normal = -normal
        basis = (orientation[:3], orientation[3:], tuple(normal))
        values["diffusion_direction_image"] = [round(float(sum(d * b for d, b in zip(direction, axis))), 8)
                                               for axis in basis]
    return values


def _grid_key(stack: StackPlan) -> tuple | None:
    """What volumes of one 4D array share: orientation, slice shape, every position. None: not mergeable
    (colour, no geometry, plain multi-frame)."""
    if stack.colour or stack.ordering.geometry == geometry.NO_GEOMETRY or any(s.position is None for s in stack.slices):
        return None
    h = stack.first
    return (geometry.orientation_key(stack.slices[0].orientation), h.plane_rows, h.plane_columns, h.bits_allocated,
            tuple(_position_key(s) for s in stack.slices),
            tuple(repr(stack.slices[0].value(name)) for name in attributes.SEPARATE_NAMES))


def _acquisition_order(stack: StackPlan) -> tuple:
    """Volumes in acquisition order, as dcm2niix writes them: first InstanceNumber, then AcquisitionTime."""
    numbers = [s.header.instance_number for s in stack.slices if s.header.instance_number is not None]
    return (min(numbers) if numbers else 0, str(stack.slices[0].value("acquisition_time") or ""), stack.stack_index)


def _distinct_volumes(members: list[StackPlan]) -> bool:
    """Every stack tells itself apart by some volume attribute (time, b-value, echo...): a 4D array.
    Stacks that differ by nothing (the same image twice with other pixels, split by occurrence)
    stay 3D: no time axis is invented for them."""
    keys = [repr(_jsonable(dict(m.slices[0].attrs))) for m in members]
    return len(set(keys)) == len(keys)


def _as_4d(series_uid: str, index: int, members: list[StackPlan]) -> StackPlan:
    """Stacks on one grid as one (t, z, y, x) array, volumes in acquisition order."""
    if len(members) == 1:
        st = members[0]
        return StackPlan(series_key(series_uid, index), index, st.split_by, st.stack_attributes, st.slices,
                         st.ordering, st.dtype, (volume_attributes(st.slices, st.ordering),))
    members = sorted(members, key=_acquisition_order)
    common = {k: v for k, v in members[0].stack_attributes.items()
              if all(m.stack_attributes.get(k) == v for m in members)}
    slices = tuple(s for m in members for s in m.slices)
    volumes = tuple(volume_attributes(m.slices, m.ordering) for m in members)
    return StackPlan(series_key(series_uid, index), index, members[0].split_by, common, slices,
                     members[0].ordering, choose_dtype(slices), volumes)


def merge_4d(series_uid: str, stacks: Sequence[StackPlan], four_d: bool = True) -> tuple[StackPlan, ...]:
    """Stacks of one series on the same grid that differ only by time point, b-value/direction, echo
    or trigger become one 4D stack (`four_d`); otherwise (or alone) each stays 3D. Renumbers the stacks."""
    groups: dict[Any, list[StackPlan]] = {}
    for st in stacks:
        key = _grid_key(st) if four_d else None
        groups.setdefault(key if key is not None else ("alone", st.stack_index), []).append(st)
    parts: list[list[StackPlan]] = []
    for members in groups.values():
        if len(members) > 1 and _distinct_volumes(members):
            parts.append(members)
        else:
            parts.extend([m] for m in members)
    order = {id(st): i for i, st in enumerate(stacks)}
    parts.sort(key=lambda part: min(order[id(m)] for m in part))  # stack numbers follow the split order
    return tuple(_as_4d(series_uid, i, members) for i, members in enumerate(parts))


def with_philips_scaling(stack: StackPlan, scaling: str) -> StackPlan:
    """Record --philips_scaling on a stack it applies to; FP values are never integers: float32."""
    if not any(pixels.philips_fp_factor(s.header, s.frame if s.header.frames else 0) for s in stack.slices):
        return stack
    return replace(stack, philips_scaling=scaling, dtype="float32" if scaling == "fp" else stack.dtype)


def plan_series(series_instance_uid: str, headers: Iterable[InstanceHeader], digest: Digest | None = None,
                four_d: bool = True, philips_scaling: str = "dv") -> SeriesPlan:
    """Dedupe, split into stacks, order every stack of one series, and join the volumes of one grid
    into 4D stacks unless `four_d` is off (headers, and pixels only for duplicate candidates: `digest`)."""
    digest = _memo(digest)
    unique, exclusions = drop_duplicates(headers, digest)
    unique, identical = drop_identical_pixels(unique, digest)
    split_by, groups = _groups(unique)
    stacks = [_stack_plan(series_instance_uid, i, split_by, _jsonable(attrs), members)
              for i, (attrs, members) in enumerate(groups)]
    stacks_4d = tuple(with_philips_scaling(s, philips_scaling) for s in merge_4d(series_instance_uid, stacks, four_d))
    return SeriesPlan(series_instance_uid, stacks_4d, tuple(exclusions + identical))


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}
