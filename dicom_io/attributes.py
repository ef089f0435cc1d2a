"""The one table of per-image values that tell the volumes of a series apart.

Each row names where the value lives in a single-frame instance (top-level elements, first
present wins, private tags by number) and in an enhanced multi-frame instance (a path of
functional-group sequences, PS3.3 C.7.6.16). The header record, stack splitting, duplicate
rules, 4D volume attributes and the output columns all read this table: a new attribute is one
row here.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Callable

from pydicom.multival import MultiValue

SPLIT, REPEAT, INFO = "split", "repeat", "info"  # roles: see VolumeAttribute.role


def number(value: Any) -> int | float | None:
    """An IS/DS/US/FL value as int when integral, else float; None when absent or not a number."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "" or value == b"":
        return None
    try:
        result = float(value.decode("ascii", "replace").strip("\0 ") if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(result):
        return None
    return int(result) if result.is_integer() else result


GE_B_VALUE_BIAS = 1_000_000_000  # GE adds it to (0043,1039)'s b-value for some sequences (dcm2niix issue 602)


def b_value(value: Any) -> int | float | None:
    """A b-value: the first value of DiffusionBValue or a vendor's private element (raw bytes of an
    implicit-VR IS included), without GE's bias, as dcm2niix's set_bValGE reads (0043,1039)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").strip("\0 ").split("\\")[0]
    result = number(value)
    return result % GE_B_VALUE_BIAS if result is not None and result >= GE_B_VALUE_BIAS else result


def integer(value: Any) -> int | None:
    result = number(value)
    return int(result) if result is not None else None


def text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").strip("\0 ")
    return str(value).strip() or None if value is not None else None


def vector3(value: Any) -> tuple[float, float, float] | None:
    """Three finite floats (DS/FD values, or 24 raw bytes of a private FD triple)."""
    if isinstance(value, bytes):
        if len(value) != 24:
            return None
        value = struct.unpack("<3d", value)
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != 3 or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers  # type: ignore[return-value]


def image_kind(value: Any) -> str | None:
    """(0008,0008) ImageType, or an enhanced frame's (0008,9007) FrameType, as one string: images of
    one series that differ in it (magnitude and phase, magnitude and field map) are other images, not
    other volumes of one acquisition."""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v).strip() for v in value) or None
    return text(value)


@dataclass(frozen=True)
class VolumeAttribute:
    """One value that can differ between images at the same position of one series.

    role: SPLIT separates stacks (in table order), REPEAT separates stacks only where positions
    still repeat, INFO is recorded (per volume, in 4D arrays) but never splits.
    """

    name: str
    keys: tuple[str | int, ...]  # top-level keywords or private tag numbers, first present wins
    cast: Callable[[Any], Any]
    frame_path: tuple[str, ...] = ()  # functional group sequence(s) then keyword, enhanced frames
    role: str = INFO
    joins_4d: bool = True  # False: stacks that differ by it stay separate arrays (never one 4D array)
    private_modalities: tuple[str, ...] = ()  # private tag keys count only for these modalities (() = any)


VOLUME_ATTRIBUTES: tuple[VolumeAttribute, ...] = (
    VolumeAttribute("image_type", ("ImageType",), image_kind, ("MRImageFrameTypeSequence", "FrameType"), SPLIT,
                    joins_4d=False),
    VolumeAttribute("echo", ("EchoNumbers", "EchoTime"), number, ("MREchoSequence", "EffectiveEchoTime"), SPLIT),
    VolumeAttribute("temporal_position", ("TemporalPositionIdentifier",), integer,
                    ("FrameContentSequence", "TemporalPositionIndex"), SPLIT),
    # (0019,100C) Siemens, (0043,1039) GE (its first value): private b-values of MR where (0018,9087)
    # is absent; other modalities use those private slots for other things
    VolumeAttribute("b_value", ("DiffusionBValue", 0x0019100C, 0x00431039), b_value,
                    ("MRDiffusionSequence", "DiffusionBValue"), SPLIT, private_modalities=("MR",)),
    # (0019,100E) Siemens DiffusionGradientDirection; patient (LPS) coordinates
    VolumeAttribute("diffusion_direction", ("DiffusionGradientOrientation", 0x0019100E), vector3,
                    ("MRDiffusionSequence", "DiffusionGradientDirectionSequence", "DiffusionGradientOrientation"),
                    SPLIT),
    VolumeAttribute("acquisition_number", ("AcquisitionNumber",), integer, (), REPEAT),
    VolumeAttribute("trigger_time", ("TriggerTime",), number,
                    ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"), REPEAT),
    VolumeAttribute("echo_time", ("EchoTime",), number, ("MREchoSequence", "EffectiveEchoTime")),
    VolumeAttribute("acquisition_time", ("AcquisitionTime",), text, ("FrameContentSequence", "FrameAcquisitionDateTime")),
    VolumeAttribute("stack_id", (), text, ("FrameContentSequence", "StackID")),
)
BY_NAME = {a.name: a for a in VOLUME_ATTRIBUTES}
SPLIT_NAMES = tuple(a.name for a in VOLUME_ATTRIBUTES if a.role == SPLIT)
REPEAT_NAMES = tuple(a.name for a in VOLUME_ATTRIBUTES if a.role == REPEAT)
SEPARATE_NAMES = tuple(a.name for a in VOLUME_ATTRIBUTES if not a.joins_4d)
KEYWORDS = tuple(dict.fromkeys(k for a in VOLUME_ATTRIBUTES for k in a.keys if isinstance(k, str)))
PRIVATE_TAGS = tuple(dict.fromkeys(k for a in VOLUME_ATTRIBUTES for k in a.keys if isinstance(k, int)))

Values = tuple[tuple[str, Any], ...]  # (name, value) in table order, None when absent


def instance_values(elements: dict[str | int, Any]) -> Values:
    """Every attribute of a single-frame instance from its element values (keyword or tag -> value)."""
    out = []
    modality = str(elements.get("Modality") or "").strip()
    for a in VOLUME_ATTRIBUTES:
        value = None
        for key in a.keys:
            if isinstance(key, int) and a.private_modalities and modality not in a.private_modalities:
                continue
            if elements.get(key) not in (None, "", b""):
                value = a.cast(elements[key])
                break
        out.append((a.name, value))
    return tuple(out)


def _walk(item: Any, path: tuple[str, ...]) -> Any:
    for keyword in path[:-1]:
        seq = item.get(keyword) if item is not None else None
        item = seq[0] if seq else None
    return item.get(path[-1]) if item is not None else None


def frame_values(group_item: Callable[[str], Any], fallback: Values) -> Values:
    """Every attribute of one enhanced frame: its functional groups, else the instance value.

    `group_item(keyword)` returns the frame's (or the shared) first item of a functional group.
    """
    fallback_of = dict(fallback)
    out = []
    for a in VOLUME_ATTRIBUTES:
        value = None
        if a.frame_path:
            raw = _walk(group_item(a.frame_path[0]), a.frame_path[1:])
            value = a.cast(raw) if raw not in (None, "") else None
        out.append((a.name, value if value is not None else fallback_of.get(a.name)))
    return tuple(out)
