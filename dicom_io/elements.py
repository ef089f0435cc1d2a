"""Element values of a parsed dataset, decoded from their raw bytes exactly as pydicom 3 would.

pydicom converts a raw element lazily on first access, through hooks, dictionary lookups and a
DataElement per value: about 10 us each, two thirds of building a header record. The VRs whose
decoding is plain (numbers, UIDs, codes, dates, and text when the character set is ISO 8859-1)
are decoded here instead (multiple values as a list); every other element, and anything these
decoders refuse, is left to pydicom, so the values are the same either way
(tests/test_header.py compares both on every pydicom-data and nibabel file).
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Callable, Iterable

import pydicom
from pydicom.dataelem import RawDataElement

SPECIFIC_CHARACTER_SET = 0x00080005
LATIN1_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100"})  # pydicom decodes all three as ISO 8859-1
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
STRING_VRS = frozenset({"CS", "UI", "DA", "TM", "DT", "AS"})  # the default repertoire, whatever the character set
TEXT_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT"})  # the dataset's character set applies
_PYDICOM = object()  # a decoder's "let pydicom decode this one"


def values_of(ds: pydicom.Dataset, tags: Iterable[tuple[str | int, int]]) -> dict[str | int, Any]:
    """{key: value} of the (key, tag number) pairs whose element `ds` holds."""
    present = ds._dict
    latin1 = latin1_text(present.get(SPECIFIC_CHARACTER_SET))
    values: dict[str | int, Any] = {}
    for key, tag in tags:
        element = present.get(tag)
        if element is None:
            continue
        value = raw_value(element, tag, latin1) if type(element) is RawDataElement else _PYDICOM
        values[key] = ds[tag].value if value is _PYDICOM else value
    return values


def latin1_text(element: Any) -> bool:
    """The dataset's text is ISO 8859-1: no (0008,0005) SpecificCharacterSet, the default, or ISO_IR 100."""
    if element is None:
        return True
    raw = element.value
    if isinstance(raw, bytes):
        raw = raw.decode("iso8859", "replace")
    return isinstance(raw, str) and raw.strip("\0 ") in LATIN1_CHARSETS  # several values: code extensions


def raw_value(raw: RawDataElement, tag: int, latin1: bool = False) -> Any:
    """The value pydicom 3 gives `raw`, or _PYDICOM where only pydicom's conversion is exact."""
    data = raw.value
    if not data:  # deferred or empty: pydicom's empty-value rules apply
        return _PYDICOM
    vr = raw.VR if raw.VR is not None else implicit_vr(tag)
    decoder = _DECODERS.get(vr) if vr not in TEXT_VRS or latin1 else None
    if decoder is None:
        return _PYDICOM
    try:
        return decoder(data, vr, raw.is_little_endian)
    except (ValueError, UnicodeDecodeError, struct.error):
        return _PYDICOM


@functools.lru_cache(maxsize=None)
def implicit_vr(tag: int) -> str | None:
    """The VR of a standard element in an implicit-VR file (private or ambiguous ones: None)."""
    from pydicom.datadict import dictionary_VR

    if (tag >> 16) % 2:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if vr in _DECODERS else None


def _one_or_list(items: list) -> Any:
    return items[0] if len(items) == 1 else items


def _numbers(data: bytes, vr: str, little_endian: bool) -> Any:
    """pydicom.values.convert_numbers."""
    size = struct.calcsize("=" + NUMBER_FORMATS[vr])
    if len(data) % size:
        return _PYDICOM
    return _one_or_list(list(struct.unpack(f"{'<' if little_endian else '>'}{len(data) // size}{NUMBER_FORMATS[vr]}", data)))


def _decimal_strings(data: bytes, vr: str, little_endian: bool) -> Any:
    """DS: multi_string(text.strip(), DSfloat); a DSfloat's value is float(item)."""
    items = data.decode("iso8859").strip().rstrip(" \x00").split("\\")
    return _one_or_list([float(item) for item in items]) if all(item.strip() for item in items) else _PYDICOM


def _integer_strings(data: bytes, vr: str, little_endian: bool) -> Any:
    """IS: multi_string(text, IS); IS tries int() first (pydicom decides the rest)."""
    items = data.decode("iso8859").rstrip(" \x00").split("\\")
    return _one_or_list([int(item) for item in items]) if all(item.strip() for item in items) else _PYDICOM


def _strings(data: bytes, vr: str, little_endian: bool) -> Any:
    """convert_string and convert_UI: the default repertoire, trailing padding (and a UID's NUL) off."""
    text = data.decode("iso8859")
    return _one_or_list((text.rstrip("\0 ") if vr == "UI" else text).rstrip(" \x00").split("\\"))


def _text(data: bytes, vr: str, little_endian: bool) -> Any:
    """convert_text (SH, LO, UC: split) and convert_single_string (ST, LT, UT) in ISO 8859-1."""
    if b"\x1b" in data:  # an escape sequence: pydicom's decoder
        return _PYDICOM
    text = data.decode("latin_1")
    if vr in ("ST", "LT", "UT"):
        return text.rstrip("\0 ")
    return _one_or_list([item.rstrip("\0 ") for item in text.split("\\")])


_DECODERS: dict[str, Callable[[bytes, str, bool], Any]] = {
    **{vr: _numbers for vr in NUMBER_FORMATS}, "DS": _decimal_strings, "IS": _integer_strings,
    **{vr: _strings for vr in STRING_VRS}, **{vr: _text for vr in TEXT_VRS},
}
