"""What the verification report shows, gathered as a bounded aggregate: counts, and the first N
rows of each listing in the order the page shows them.

A ReportSummary takes rows one at a time and merges with another (a Beam CombineFn wraps it), so
the report of a 10-million-file run never needs every row in one place: each listing keeps at most
`max_rows` rows (the thumbnails `max_thumbnails`), everything else is counted.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable

from dicom_io import schemas

MAX_ROWS = 5000  # rows per listing (series, failures, failed files); the rest are counted, not listed
SERIES_FIELDS = ("series_key", "series_description", "modality", "geometry", "n_slices", "shape", "spacing",
                 "dtype", "status", "reason")
VERIFY_FIELDS = ("series_key", "status", "checks_passed", "checks_failed", "failures", "geometry", "thumbnails")


def _first(pair: tuple) -> Any:
    return pair[0]


@dataclass
class Smallest:
    """The `limit` items with the smallest sort keys seen so far (ties broken by nothing else: keys are unique)."""

    limit: int
    pairs: list[tuple[Hashable, dict[str, Any]]] = field(default_factory=list)

    def add(self, key: Hashable, item: dict[str, Any]) -> None:
        self.pairs.append((key, item))
        if len(self.pairs) > 2 * self.limit:
            self.trim()

    def trim(self) -> None:
        self.pairs = heapq.nsmallest(self.limit, self.pairs, key=_first)

    def merge(self, other: "Smallest") -> None:
        self.pairs.extend(other.pairs)
        self.trim()

    def items(self) -> list[dict[str, Any]]:
        return [item for _, item in heapq.nsmallest(self.limit, self.pairs, key=_first)]


@dataclass
class ReportSummary:
    """Counts and bounded listings of one verify run; `add_*` one row, `merge` another summary."""

    max_rows: int = MAX_ROWS
    max_thumbnails: int = 50
    counts: Counter = field(default_factory=Counter)
    instance_counts: Counter = field(default_factory=Counter)
    failed_reasons: Counter = field(default_factory=Counter)
    series: Smallest | None = None
    failures: Smallest | None = None
    thumbnails: Smallest | None = None
    file_failures: Smallest | None = None
    failed_series: Smallest | None = None
    failed_files: Smallest | None = None

    def __post_init__(self):
        for name in ("series", "failures", "file_failures", "failed_series", "failed_files"):
            if getattr(self, name) is None:
                setattr(self, name, Smallest(self.max_rows))
        if self.thumbnails is None:
            self.thumbnails = Smallest(self.max_thumbnails)


def reason_class(reason: str | None) -> str:
    """The part of a reason before its first ':' ("decode error", "not dicom", "stack not converted")."""
    return (reason or "").split(":", 1)[0].strip() or "(no reason)"


def _pick(row: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    return {name: row.get(name) for name in names}


def verification_status(series: dict[str, Any], verified: dict[str, Any] | None) -> str:
    """ok / failed as checked; failed when conversion failed; else not checked."""
    if verified:
        return verified["status"]
    return schemas.FAILED if series.get("status") == schemas.FAILED else "not checked"


def add_series(summary: ReportSummary, series: dict[str, Any], verified: dict[str, Any] | None) -> None:
    """One summary series row and its verify row (None when not checked)."""
    conversion = series.get("status")
    summary.counts["series_total"] += 1
    if conversion in (schemas.CONVERTED, schemas.FAILED):
        summary.counts["series_converted" if conversion == schemas.CONVERTED else "series_conversion_failed"] += 1
    row = {**_pick(series, SERIES_FIELDS), "verification": verification_status(series, verified),
           "checks_passed": verified["checks_passed"] if verified else None,
           "checks_failed": verified["checks_failed"] if verified else None}
    # failed verification first, then failed conversion, then by key
    order = ((verified or {}).get("status") != schemas.FAILED, conversion != schemas.FAILED, series["series_key"])
    summary.series.add(order, row)
    if series.get("status") == schemas.FAILED:
        summary.failed_series.add(series["series_key"], _pick(series, ("series_key", "reason")))


def add_verify(summary: ReportSummary, verified: dict[str, Any]) -> None:
    """One verify row: counted, listed among the failures when it failed, a thumbnail candidate."""
    ok = verified["status"] == schemas.OK
    summary.counts["series_checked"] += 1
    summary.counts["series_ok" if ok else "series_failed"] += 1
    summary.counts["checks_passed"] += verified["checks_passed"]
    summary.counts["checks_failed"] += verified["checks_failed"]
    lines = len(verified.get("failures") or [])
    summary.counts["failure_lines"] += lines
    row = _pick(verified, VERIFY_FIELDS)
    if lines:
        summary.failures.add(verified["series_key"], row)
    if verified.get("thumbnails"):
        summary.thumbnails.add((ok, verified["series_key"]), row)


def add_file_failure(summary: ReportSummary, failure: dict[str, Any]) -> None:
    """One OUT/verify/files-*.parquet row (a duplicate or missing source)."""
    summary.counts["file_failures"] += 1
    summary.file_failures.add((failure["source_uri"], failure["check"]), failure)


def add_instance(summary: ReportSummary, instance: dict[str, Any]) -> None:
    """One summary instances row: counted by status; failed ones counted by reason class and listed."""
    summary.instance_counts[instance["status"]] += 1
    if instance["status"] == schemas.FAILED:
        summary.counts["files_failed"] += 1
        summary.failed_reasons[reason_class(instance.get("reason"))] += 1
        summary.failed_files.add(instance["source_uri"], _pick(instance, ("source_uri", "reason")))


def merge(summaries: Iterable[ReportSummary]) -> ReportSummary:
    """One summary of several (same limits)."""
    summaries = list(summaries)
    merged = ReportSummary(summaries[0].max_rows, summaries[0].max_thumbnails) if summaries else ReportSummary()
    for s in summaries:
        merged.counts.update(s.counts)
        merged.instance_counts.update(s.instance_counts)
        merged.failed_reasons.update(s.failed_reasons)
        for name in ("series", "failures", "thumbnails", "file_failures", "failed_series", "failed_files"):
            getattr(merged, name).merge(getattr(s, name))
    return merged


def summarize(series_rows: Iterable[dict[str, Any]], verify_rows: Iterable[dict[str, Any]],
              instance_rows: Iterable[dict[str, Any]] = (), file_failures: Iterable[dict[str, Any]] = (),
              max_rows: int = MAX_ROWS, max_thumbnails: int = 50) -> ReportSummary:
    """The summary of whole tables at once (tests, or a report rebuilt from small tables)."""
    summary = ReportSummary(max_rows, max_thumbnails)
    verified = {}
    for row in verify_rows:
        verified[row["series_key"]] = row
        add_verify(summary, row)
    for row in series_rows:
        add_series(summary, row, verified.get(row["series_key"]))
    for row in instance_rows:
        add_instance(summary, row)
    for row in file_failures:
        add_file_failure(summary, row)
    return summary


SERIES, FILE, INSTANCE = "series", "file", "instance"


def add_element(summary: ReportSummary, kind: str, payload: Any) -> ReportSummary:
    """One tagged element of the verify job: (SERIES, (series rows, verify rows) of one key), (FILE, files
    row) or (INSTANCE, instances row)."""
    if kind == SERIES:
        series_rows, verify_rows = payload
        for verified in verify_rows:
            add_verify(summary, verified)
        for series in series_rows:
            add_series(summary, series, verify_rows[0] if verify_rows else None)
    elif kind == FILE:
        add_file_failure(summary, payload)
    else:
        add_instance(summary, payload)
    return summary
