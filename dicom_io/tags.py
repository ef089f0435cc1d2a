"""Every data element of a parsed header as flat, string-valued entries (the --all_tags crawl).

Column names (one per element and sequence item path):
- public: `Keyword (gggg,eeee)`, e.g. `PatientName (0010,0010)`; repeating groups keep their
  own tag (`OverlayData (6002,3000)`); unknown public tags `GroupLength`/`Unknown (gggg,eeee)`;
- private: `Creator:Name (gggg,eeee)` when pydicom's private dictionary knows the element,
  `[Creator] (gggg,eeee)` otherwise, `[no creator] (gggg,eeee)` when no (gggg,00xx) reserves
  the block; the reservation itself is `PrivateCreator (gggg,00xx)`;
- inside sequences the path comes first, item indices from 0:
  `ReferencedImageSequence[0]_ReferencedSOPInstanceUID (0008,1155)`; the sequence's own column
  holds its item count, `<2 items>`.

Values are strings, so every shard of the wide table has one type per column: a single value as
is (`CT`, `128`, `-158.135803`), an empty element as `""` (absent is null), several values as a
JSON array of strings (`["ORIGINAL", "PRIMARY"]`), binary VRs (OB, OW, OF, OD, OL, OV, UN) and
values left unread by the header parse (over 64 KB) as their length (`<1024 bytes>`). A string
longer than MAX_VALUE_CHARS is cut there with a note. In the wide row, a column met twice in one
file keeps every value: `{"duplicates": [value, value]}` (the long table keeps one row each).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable, NamedTuple

import pydicom
from pydicom.datadict import get_private_entry, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

MAX_VALUE_CHARS = 64 * 1024
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW"})
URI_COLUMN = "uri"


class TagEntry(NamedTuple):
    """One element occurrence: wide column name, `(gggg,eeee)`, its name, VR, value count, value."""

    column: str
    tag: str
    keyword: str
    vr: str
    vm: int
    value: str


def tag_string(tag: int) -> str:
    """`(gggg,eeee)` in upper-case hex, as pydicom prints tags."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _creator(ds: pydicom.Dataset, tag: BaseTag) -> str | None:
    """(gggg,00xx) Private Creator of the block holding private `tag`."""
    creator_tag = Tag(tag.group, tag.element >> 8)
    if creator_tag not in ds:
        return None
    try:
        value = ds[creator_tag].value
    except Exception:  # an unreadable reservation names no creator
        return None
    value = value.decode("latin-1") if isinstance(value, bytes) else value
    return str(value).strip() or None


def element_name(ds: pydicom.Dataset, tag: BaseTag) -> str:
    """The name part of a column: keyword, `Creator:Name`, `[Creator]` or `PrivateCreator`."""
    if not tag.is_private:
        return keyword_for_tag(tag) or ("GroupLength" if tag.element == 0 else "Unknown")
    if tag.is_private_creator:
        return "PrivateCreator"
    creator = _creator(ds, tag)
    if creator is None:
        return "[no creator]"
    try:
        return f"{creator}:{get_private_entry(tag, creator)[2]}"
    except KeyError:
        return f"[{creator}]"


def _cap(text: str) -> str:
    if len(text) <= MAX_VALUE_CHARS:
        return text
    return f"{text[:MAX_VALUE_CHARS]}...<truncated: {len(text)} characters>"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return "" if value is None else str(value)


def format_value(vr: str, value: Any) -> tuple[int, str]:
    """(value multiplicity, string) of a converted element value (see the module docstring)."""
    if value is None or isinstance(value, (str, bytes, MultiValue, list, tuple)) and len(value) == 0:
        return 0, ""
    if vr in BINARY_VRS or isinstance(value, (bytes, bytearray)):
        return 1, f"<{len(value)} bytes>"
    if isinstance(value, (MultiValue, list, tuple)):
        if len(value) == 1:
            return 1, _cap(_text(value[0]))
        return len(value), _cap(json.dumps([_text(v) for v in value], ensure_ascii=False))
    return 1, _cap(_text(value))


def _entry(prefix: str, ds: pydicom.Dataset, tag: BaseTag, vr: str, vm: int, value: str) -> TagEntry:
    name = element_name(ds, tag)
    return TagEntry(f"{prefix}{name} {tag_string(tag)}", tag_string(tag), name, vr, vm, value)


def _element_entries(ds: pydicom.Dataset, tag: BaseTag, prefix: str, max_items: int | None) -> Iterable[TagEntry]:
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
        # deferred by the header parse (over 64 KB): reading it would cost what the crawl avoids
        yield _entry(prefix, ds, tag, str(raw.VR or "UN"), 1, f"<{raw.length} bytes, not read>")
        return
    try:
        elem: DataElement = ds[tag]
    except Exception as exc:  # a value pydicom cannot convert is recorded, not dropped
        yield _entry(prefix, ds, tag, str(getattr(raw, "VR", "") or "UN"), 1,
                     f"<unreadable value: {type(exc).__name__}: {exc}>")
        return
    if elem.VR != "SQ":
        yield _entry(prefix, ds, tag, str(elem.VR), *format_value(str(elem.VR), elem.value))
        return
    items = elem.value or []
    shown = len(items) if max_items is None else min(len(items), max_items)
    note = f"<{len(items)} items>" if shown == len(items) else f"<{len(items)} items, first {shown} listed>"
    yield _entry(prefix, ds, tag, "SQ", len(items), note)
    name = element_name(ds, tag)
    for index in range(shown):
        yield from flatten_dataset(items[index], f"{prefix}{name}[{index}]_", max_items, include_meta=False)


def flatten_dataset(ds: pydicom.Dataset, prefix: str = "", max_items: int | None = None,
                    include_meta: bool = True) -> list[TagEntry]:
    """Every element of `ds` (and of its file meta, group 0002), sequences flattened depth first.

    Never reads deferred values or pixel data; `max_items` caps the items listed per sequence.
    """
    entries: list[TagEntry] = []
    meta = getattr(ds, "file_meta", None) if include_meta else None
    for source in (meta, ds):
        for tag in list(source.keys()) if source is not None else ():
            entries.extend(_element_entries(source, BaseTag(tag), prefix, max_items))
    return entries


def wide_row(entries: Iterable[TagEntry]) -> dict[str, str]:
    """column -> value for one file; a column met more than once keeps all, sorted: {"duplicates": [...]}."""
    values: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        values[entry.column].append(entry.value)
    return {column: found[0] if len(found) == 1 else json.dumps({"duplicates": sorted(found)}, ensure_ascii=False)
            for column, found in values.items()}


def long_rows(uri: str, entries: Iterable[TagEntry]) -> list[dict[str, Any]]:
    """One row per element occurrence, for the long table (`uri` plus the TagEntry fields)."""
    return [{URI_COLUMN: uri, **entry._asdict()} for entry in entries]


def entry_from_long_row(row: dict[str, Any]) -> TagEntry:
    """Back from a long-table row (a previous run's output) to its entry."""
    return TagEntry(*(row[name] for name in TagEntry._fields))
