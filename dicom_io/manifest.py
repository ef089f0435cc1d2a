"""The manifest crawl, Beam-free: one instances row per file, series summaries, convert shards.

Every file of the input gets one row (readable or not, with the reason); series are what
pipelines.convert groups by, keyed the same way (`series_key(uid, 0)` is the key of stack 0:
convert may split one series into several stacks, `_s00`, `_s01`...); shards split series
across convert runs, balanced by bytes.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import itertools
import io
import os
import posixpath
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Sequence

from dicom_io import geometry, header, schemas, storage, tags
from dicom_io.errors import DicomflowError, HeaderError
from dicom_io.deid import DeidSettings, Deidentifier, deidentifier_for
from dicom_io.header import InstanceHeader
from dicom_io.keys import series_key
from dicom_io.plan import MISSING_SERIES_PREFIX

# A previous row is reused only if its file is unchanged and its outcome cannot change by
# reading again: read fine, or failed on content. Storage errors (gone, no permission) retry.
REUSABLE_FAILURES = ("not dicom", "invalid header")
MTIME_TOLERANCE_S = 1e-3  # listing (Beam) and stat (fsspec) may round the same time differently


@dataclass(frozen=True)
class CrawlSettings:
    """What the crawl needs from pipelines.manifest's options."""

    input_uri: str
    manifest_column: str = "uri"
    all_tags: bool = False
    tags_max_items: int | None = None  # items listed per sequence in the tags tables; None = all
    previous: str | None = None  # OUT of an earlier run whose rows unchanged files reuse
    previous_tags: bool = False  # that run wrote a long tags table (needed to reuse with all_tags)
    deid: DeidSettings | None = None  # de-identify every row (no --all_tags then)
    processes: int = 1  # forked processes parsing headers (dicom_io.workers); 1 = in the worker


# ---- instances --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Crawled:
    """What one file gave: its instances row and, when asked for, every element of its header."""

    row: dict[str, Any]
    tags: list[tags.TagEntry] | None = None


def _listed(uri: str, size_bytes: int | None, mtime: float | None) -> dict[str, Any]:
    row = {name: None for name in schemas.MANIFEST_INSTANCES_SCHEMA.names}
    row.update(uri=uri, size_bytes=size_bytes, mtime=mtime)
    return row


def failed_row(uri: str, size_bytes: int | None, mtime: float | None, reason: str) -> dict[str, Any]:
    """Row of a file that gave no header record (not DICOM, invalid header, gone)."""
    return {**_listed(uri, size_bytes, mtime), "readable": False, "reason": reason}


def instance_row(h: InstanceHeader, mtime: float | None, reason: str = "") -> dict[str, Any]:
    """Row of a readable file; `reason` is set for objects without pixel data (image columns null)."""
    image = h.pixel_element is not None
    tag_values = schemas.tag_columns(h.series_tags)
    row = _listed(h.source_uri, h.size_bytes, mtime)
    row.update(
        readable=True, reason=reason, sop_instance_uid=h.sop_instance_uid or None,
        study_instance_uid=h.study_instance_uid or None, series_instance_uid=h.series_instance_uid or None,
        modality=h.modality or None, sop_class_uid=h.sop_class_uid or None,
        transfer_syntax_uid=h.transfer_syntax_uid or None, image_type=list(h.image_type),
        series_number=tag_values["series_number"], instance_number=h.instance_number,
        series_description=tag_values["series_description"],
        rows=h.rows if image else None, columns=h.columns if image else None,
        number_of_frames=h.number_of_frames if image else None,
        image_position_patient=list(h.image_position) if h.image_position else None,
        image_orientation_patient=list(h.image_orientation) if h.image_orientation else None,
        pixel_spacing=list(h.pixel_spacing) if h.pixel_spacing else None,
        slice_thickness=tag_values["slice_thickness"], acquisition_number=h.acquisition_number,
        echo_time=h.echo_time, is_localizer=h.is_localizer,
    )
    return row


def crawl(fp: IO[bytes], uri: str, size_bytes: int, mtime: float | None, all_tags: bool = False,
          max_items: int | None = None, deid: "Deidentifier | None" = None) -> Crawled:
    """Parse one header (never the pixels) into its row, plus every element when `all_tags`.

    Raises NotDicomError for what does not parse; a header that parses but cannot be
    interpreted gives a failed row and still its elements.
    """
    parsed = header.parse_header(fp, uri, size_bytes)
    ds, pixel_element = parsed.dataset, parsed.pixel_element
    entries = tags.flatten_dataset(ds, max_items=max_items) if all_tags else None  # before inference fills the meta
    try:
        h = header.header_record(parsed, uri, size_bytes)
        h = deid.header(h) if deid is not None else h
    except HeaderError as exc:
        return Crawled(failed_row(uri, size_bytes, mtime, str(exc)), entries)
    reason = "" if pixel_element else header.no_pixel_data_reason(ds)
    return Crawled(instance_row(h, mtime, reason), entries)


def unchanged(previous: dict[str, Any], size_bytes: int | None, mtime: float | None) -> bool:
    """The earlier run's row still describes the file: same size and mtime, a lasting outcome."""
    if previous.get("size_bytes") is None or size_bytes != previous["size_bytes"]:
        return False
    if mtime is None or previous.get("mtime") is None or abs(mtime - previous["mtime"]) > MTIME_TOLERANCE_S:
        return False
    return bool(previous.get("readable")) or str(previous.get("reason") or "").startswith(REUSABLE_FAILURES)


def expects_tags(row: dict[str, Any]) -> bool:
    """Whether the crawl gives elements for this row: everything that parsed as DICOM."""
    return bool(row.get("readable")) or str(row.get("reason") or "").startswith("invalid header")


def can_reuse(previous: dict[str, Any] | None, size_bytes: int | None, mtime: float | None,
              n_tag_entries: int = 0, all_tags: bool = False) -> bool:
    """Skip reading a file: unchanged since the earlier run, which also kept its elements if asked."""
    if previous is None or not unchanged(previous, size_bytes, mtime):
        return False
    return not all_tags or n_tag_entries > 0 or not expects_tags(previous)


# ---- series -----------------------------------------------------------------------------------

def series_group(row: dict[str, Any]) -> str:
    """What pipelines.convert groups by: (0020,000E), or the file itself when it has none."""
    return row.get("series_instance_uid") or f"{MISSING_SERIES_PREFIX}{row['uri']}"


def orientation_label(iop: Sequence[float] | None) -> str | None:
    """IOP rounded as convert rounds it to split stacks, as a string: '1,0,0,0,1,0'."""
    key = geometry.orientation_key(iop)
    return None if key is None else ",".join(f"{v:g}" for v in key)


@dataclass
class SeriesSummary:
    """Running totals of one series (a combiner accumulator: small, mergeable)."""

    n_instances: int = 0
    n_images: int = 0
    n_bytes: int = 0
    n_localizers: int = 0
    series_uid: Counter = field(default_factory=Counter)
    study_uid: Counter = field(default_factory=Counter)
    modality: Counter = field(default_factory=Counter)
    description: Counter = field(default_factory=Counter)
    orientations: set = field(default_factory=set)


def add_instance(summary: SeriesSummary, row: dict[str, Any]) -> SeriesSummary:
    """Count one readable instances row into its series."""
    summary.n_instances += 1
    summary.n_images += row.get("rows") is not None
    summary.n_bytes += row.get("size_bytes") or 0
    summary.n_localizers += bool(row.get("is_localizer"))
    for counter, value in ((summary.series_uid, row.get("series_instance_uid")),
                           (summary.study_uid, row.get("study_instance_uid")),
                           (summary.modality, row.get("modality")),
                           (summary.description, row.get("series_description"))):
        if value:
            counter[value] += 1
    label = orientation_label(row.get("image_orientation_patient"))
    if label:
        summary.orientations.add(label)
    return summary


def merge_summaries(summaries: Iterable[SeriesSummary]) -> SeriesSummary:
    merged = SeriesSummary()
    for s in summaries:
        merged.n_instances += s.n_instances
        merged.n_images += s.n_images
        merged.n_bytes += s.n_bytes
        merged.n_localizers += s.n_localizers
        for name in ("series_uid", "study_uid", "modality", "description"):
            getattr(merged, name).update(getattr(s, name))
        merged.orientations |= s.orientations
    return merged


def _most_common(counter: Counter) -> str | None:
    """The most frequent value, ties to the smallest: deterministic whatever the merge order."""
    return min(counter, key=lambda v: (-counter[v], v)) if counter else None


def series_row(group: str, summary: SeriesSummary) -> dict[str, Any]:
    """One row of OUT/series/series-*.parquet."""
    return {
        "series_instance_uid": _most_common(summary.series_uid),
        "study_instance_uid": _most_common(summary.study_uid),
        "series_key": series_key(group, 0),
        "modality": _most_common(summary.modality),
        "series_description": _most_common(summary.description),
        "n_instances": summary.n_instances,
        "n_bytes": summary.n_bytes,
        "has_localizers": summary.n_localizers > 0,
        "orientations": sorted(summary.orientations),
        "n_localizers": summary.n_localizers,
        "n_images": summary.n_images,
    }


# ---- shards -----------------------------------------------------------------------------------

def assign_shards(series_bytes: Iterable[tuple[str, int]], num_shards: int) -> dict[str, int]:
    """Series -> shard, balanced by bytes: largest first into the lightest shard.

    Ties break on the series (then the lower shard), so the split is the same on every run;
    the heaviest shard exceeds the lightest by at most the largest series.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    loads = [(0, shard) for shard in range(num_shards)]
    assignment: dict[str, int] = {}
    for group, n_bytes in sorted(series_bytes, key=lambda item: (-item[1], item[0])):
        load, shard = heapq.heappop(loads)
        assignment[group] = shard
        heapq.heappush(loads, (load + n_bytes, shard))
    return assignment


HEAVY_SERIES = 100_000  # series placed one by one, largest first; lighter ones by a weighted hash


def heavy_order(item: tuple[str, int]) -> tuple[int, str]:
    """Largest first, then by key: the order assign_shards places series in (and which are 'heaviest')."""
    return -item[1], item[0]


@dataclass(frozen=True)
class ShardAssignment:
    """Series -> shard: the heaviest series placed by assign_shards, every other one by a hash of its key
    into the shards' remaining room (`weights`: cumulative shares, the last 1.0), so each shard is filled
    towards the same total without one worker holding every series."""

    heavy: dict[str, int]
    weights: tuple[float, ...]

    def shard_of(self, key: str) -> int:
        found = self.heavy.get(key)
        if found is not None:
            return found
        point = zlib.crc32(key.encode("utf-8", "surrogatepass")) / 2 ** 32
        return min(bisect.bisect_right(self.weights, point), len(self.weights) - 1)


def plan_assignment(heaviest: Iterable[tuple[str, int]], total_bytes: int, num_shards: int) -> ShardAssignment:
    """ShardAssignment from the heaviest series (at most HEAVY_SERIES of them) and the bytes of all series.

    With every series among the heaviest this is exactly assign_shards (the heaviest shard exceeds the
    lightest by at most the largest series); beyond, the lighter series fill each shard's room by hash.
    """
    heaviest = sorted(heaviest, key=heavy_order)
    heavy = assign_shards(heaviest, num_shards)
    loads = [0] * num_shards
    for key, n_bytes in heaviest:
        loads[heavy[key]] += n_bytes
    room = [max(0.0, total_bytes / num_shards - load) for load in loads]
    if sum(room) <= 0:
        room = [1.0] * num_shards
    weights = [share / sum(room) for share in itertools.accumulate(room)]
    weights[-1] = 1.0
    return ShardAssignment(heavy, tuple(weights))


def shard_row(row: dict[str, Any]) -> tuple[str, str, str, int]:
    """(uri, series_instance_uid, series_key, size_bytes) of a readable file, as in the shard CSVs."""
    return row["uri"], row.get("series_instance_uid") or "", series_key(series_group(row), 0), row["size_bytes"] or 0


def csv_text(header_row: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> str:
    """RFC 4180 text (quoted where needed, '\\n' line ends); None values as empty fields."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header_row is not None:
        writer.writerow(header_row)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buffer.getvalue()


def encode_unreadable(rows: list[dict]) -> bytes:
    """unreadable CSV bytes: header, then uri,size_bytes,reason sorted by URI."""
    ordered = sorted(rows, key=lambda row: row["uri"])
    lines = ([row["uri"], row["size_bytes"], row["reason"]] for row in ordered)
    return csv_text(schemas.UNREADABLE_COLUMNS, lines).encode("utf-8", "surrogateescape")


def csv_line(values: Sequence[Any]) -> str:
    """One CSV record without its line end (for Beam's text sink, which adds it)."""
    return csv_text(None, [values])[:-1]


def stale_shards(existing: Iterable[str], written: Iterable[str]) -> list[str]:
    """Shard files an earlier run with more shards left behind (compared by name: paths may differ in form)."""
    names = {posixpath.basename(uri.replace(os.sep, "/")) for uri in written}
    return sorted(uri for uri in existing if posixpath.basename(uri.replace(os.sep, "/")) not in names)


def crawl_listed(listed: tuple[str, int | None, float | None], all_tags: bool = False,
                 max_items: int | None = None, deid: "DeidSettings | None" = None) -> Crawled:
    """One listed file (uri, size, mtime) -> its Crawled row; unreadable or vanished files a failed row."""
    uri, size, mtime = listed
    try:
        size = storage.size_of(uri) if size is None else size
        with storage.open_source(uri) as fp:  # x.dcm.gz decompressed, as convert reads it
            return crawl(fp, uri, size, mtime, all_tags, max_items, deidentifier_for(deid) if deid else None)
    except FileNotFoundError as exc:
        return Crawled(failed_row(uri, size, mtime, f"source disappeared: {exc}"))
    except (DicomflowError, OSError) as exc:
        return Crawled(failed_row(uri, size, mtime, str(exc)))


def crawl_batch(task: tuple[list, bool, int | None, "DeidSettings | None"]) -> list[Crawled]:
    """crawl_listed over a batch (one task of a dicom_io.workers process)."""
    batch, all_tags, max_items, deid = task
    return [crawl_listed(listed, all_tags, max_items, deid) for listed in batch]
