"""The verification report: one self-contained HTML file (inline CSS, thumbnails as data: URIs).

Plain Python and html.escape on every value; no template engine, no script, nothing fetched, so the
file opens anywhere (a bucket download, an e-mail attachment). Tables carry ids and data-* attributes
so a test or a script can read the numbers back from the DOM.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape
from typing import Any, Iterable, Sequence

from dicom_io import schemas

MAX_ROWS = 5000  # rows per long table (series, failed files); the rest are counted, not listed
NOT_CHECKED = "not checked"

CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid #e3e7ef;padding-bottom:4px}
.meta{color:#5b6475;margin:0 0 12px}.banner{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.banner.ok{background:#e3f6e8;color:#17652f;border:1px solid #9fd8ae}
.banner.failed{background:#fde8e8;color:#8d1c1c;border:1px solid #f1a9a9}
table{border-collapse:collapse;margin:4px 0 8px;font-size:13px}
th,td{border:1px solid #d5dae4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fff1f1}tr.ok td.status{color:#17652f;font-weight:600}
tr.failed td.status{color:#a11d1d;font-weight:600}code{font-size:12px;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #d5dae4;border-radius:6px;padding:8px;background:#f8f9fc}
.card .images{display:flex;gap:8px;align-items:flex-start;flex-wrap:wrap}.card img{display:block;background:#000}
.card .key{font-size:12px;word-break:break-all;margin-bottom:4px}
.muted{color:#5b6475}
"""


@dataclass
class ReportData:
    """Everything the page shows; gathered by the verify job (or read back from its tables)."""

    output: str
    verify_rows: list[dict[str, Any]]
    series_rows: list[dict[str, Any]]  # OUT/summary/series-*.parquet
    instance_counts: dict[str, int]  # status -> files
    failed_files: list[dict[str, Any]]  # instances rows with status failed (the first MAX_ROWS by URI)
    failed_files_total: int = 0
    failed_reasons: dict[str, int] = field(default_factory=dict)  # reason class -> files
    file_failures: list[dict[str, Any]] = field(default_factory=list)  # OUT/verify/files-*.parquet rows
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # name -> JPEG bytes
    sample: int | None = None
    seed: int = 0


def reason_class(reason: str | None) -> str:
    """The part of a reason before its first ':' ("decode error", "not dicom", "stack not converted")."""
    return (reason or "").split(":", 1)[0].strip() or "(no reason)"


def _cell(value: Any, css: str = "") -> str:
    attr = f' class="{css}"' if css else ""
    return f"<td{attr}>{escape('—' if value is None or value == '' else str(value))}</td>"


def _num(value: Any) -> str:
    return _cell(value, "num")


def _dims(values: Sequence[Any] | None, digits: int = 4) -> str:
    if not values:
        return "—"
    return " × ".join("—" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def _table(table_id: str, headers: Sequence[str], rows: Iterable[str], total: int | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(rows)
    count = f' data-total="{total}"' if total is not None else ""
    return f'<table id="{table_id}"{count}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _more(shown: int, total: int, what: str) -> str:
    return f'<p class="muted">{shown} of {total} {escape(what)} listed.</p>' if total > shown else ""


def _totals(data: ReportData) -> str:
    checked = len(data.verify_rows)
    failed = sum(1 for r in data.verify_rows if r["status"] != schemas.OK)
    by_status = {s: sum(1 for r in data.series_rows if r.get("status") == s) for s in (schemas.CONVERTED, schemas.FAILED)}
    items = [
        ("series_converted", "Series converted", by_status[schemas.CONVERTED]),
        ("series_conversion_failed", "Series that failed conversion", by_status[schemas.FAILED]),
        ("series_checked", "Series checked", checked),
        ("series_ok", "Series ok", checked - failed),
        ("series_failed", "Series failed verification", failed),
        ("checks_passed", "Checks passed", sum(r["checks_passed"] for r in data.verify_rows)),
        ("checks_failed", "Checks failed", sum(r["checks_failed"] for r in data.verify_rows)),
    ]
    items += [(f"instances_{s}", f"Instances {s}", n) for s, n in sorted(data.instance_counts.items())]
    items += [("files_failed", "Files that failed conversion", data.failed_files_total),
              ("file_failures", "Instances-table accounting failures", len(data.file_failures))]
    rows = (f'<tr data-key="{escape(k)}"><th>{escape(label)}</th>{_num(n)}</tr>' for k, label, n in items)
    return _table("totals", ("", "count"), rows)


def _series_order(row: dict[str, Any], verified: dict[str, dict[str, Any]]) -> tuple:
    status = verified.get(row["series_key"], {}).get("status")
    return (status != schemas.FAILED, row.get("status") != schemas.FAILED, row["series_key"])


def _series_table(data: ReportData) -> str:
    verified = {r["series_key"]: r for r in data.verify_rows}
    ordered = sorted(data.series_rows, key=lambda r: _series_order(r, verified))
    rows = []
    for row in ordered[:MAX_ROWS]:
        v = verified.get(row["series_key"])
        status = v["status"] if v else (schemas.FAILED if row.get("status") == schemas.FAILED else NOT_CHECKED)
        css = "failed" if status == schemas.FAILED else "ok" if status == schemas.OK else ""
        rows.append(
            f'<tr class="{css}" data-series-key="{escape(row["series_key"])}" data-status="{escape(status)}">'
            f'<td><code>{escape(row["series_key"])}</code></td>{_cell(row.get("series_description"))}'
            f'{_cell(row.get("modality"))}{_cell(row.get("geometry"))}{_num(row.get("n_slices"))}'
            f'{_cell(_dims(row.get("shape")))}{_cell(_dims(row.get("spacing")))}{_cell(row.get("dtype"))}'
            f'{_cell(row.get("status"))}{_cell(status, "status")}'
            f'{_num(v["checks_passed"] if v else None)}{_num(v["checks_failed"] if v else None)}</tr>')
    headers = ("series_key", "description", "modality", "geometry", "n_slices", "shape", "spacing (mm)", "dtype",
               "conversion", "verification", "checks passed", "checks failed")
    return _table("series", headers, rows, len(ordered)) + _more(len(rows), len(ordered), "series")


def _img(name: str, data: ReportData) -> str:
    payload = data.thumbnails.get(name)
    if payload is None:
        return f'<p class="muted">{escape(name)} not found</p>'
    uri = "data:image/jpeg;base64," + base64.b64encode(payload).decode("ascii")
    return f'<img src="{uri}" alt="{escape(name)}">'


def _thumbnails(data: ReportData) -> str:
    cards = []
    for row in sorted(data.verify_rows, key=lambda r: (r["status"] == schemas.OK, r["series_key"])):
        names = [n for n in row.get("thumbnails") or [] if n in data.thumbnails]
        if not names:
            continue
        images = "".join(_img(n, data) for n in names)
        cards.append(f'<div class="card" data-series-key="{escape(row["series_key"])}">'
                     f'<div class="key"><code>{escape(row["series_key"])}</code> · {escape(row.get("geometry") or "")}'
                     f' · {escape(row["status"])}</div><div class="images">{images}</div></div>')
    if not cards:
        return '<p class="muted" id="thumbnails">No thumbnails.</p>'
    return ('<p class="muted">Middle slice, then the middle plane along z, y and x at true physical scale '
            '(slice axis up).</p>' f'<div class="cards" id="thumbnails">{"".join(cards)}</div>')


def _failures(data: ReportData) -> str:
    rows = []
    for row in sorted(data.verify_rows, key=lambda r: r["series_key"]):
        for line in row.get("failures") or []:
            check, _, detail = line.partition(": ")
            rows.append(f'<tr data-series-key="{escape(row["series_key"])}"><td><code>{escape(row["series_key"])}'
                        f'</code></td>{_cell(check)}{_cell(detail)}</tr>')
    section = _table("failures", ("series_key", "check", "detail"), rows, len(rows)) if rows else \
        '<p id="failures" data-total="0">Every check of every checked series passed.</p>'
    files = [f'<tr><td><code>{escape(r["source_uri"])}</code></td>{_cell(r.get("series_key"))}{_cell(r["check"])}'
             f'{_cell(r["detail"])}</tr>' for r in sorted(data.file_failures, key=lambda r: (r["source_uri"], r["check"]))]
    section += "<h3>Instances table accounting</h3>" + (
        _table("file-failures", ("source_uri", "series_key", "check", "detail"), files, len(files)) if files else
        '<p id="file-failures" data-total="0">Every file is listed once and still exists.</p>')
    return section


def _conversion_failures(data: ReportData) -> str:
    failed_series = sorted((r for r in data.series_rows if r.get("status") == schemas.FAILED),
                           key=lambda r: r["series_key"])
    series_rows = [f'<tr><td><code>{escape(r["series_key"])}</code></td>{_cell(r.get("reason"))}</tr>'
                   for r in failed_series]
    reasons = [f'<tr><td>{escape(k)}</td>{_num(n)}</tr>' for k, n in sorted(data.failed_reasons.items())]
    files = [f'<tr><td><code>{escape(r["source_uri"])}</code></td>{_cell(r.get("reason"))}</tr>'
             for r in sorted(data.failed_files, key=lambda r: r["source_uri"])[:MAX_ROWS]]
    if not series_rows and not files:
        return '<p id="failed-files" data-total="0">No series and no file failed conversion.</p>'
    return ("<h3>Series</h3>" + _table("failed-series", ("series_key", "reason"), series_rows, len(series_rows))
            + "<h3>Files by reason</h3>" + _table("failed-reasons", ("reason", "files"), reasons)
            + "<h3>Files</h3>" + _table("failed-files", ("source_uri", "reason"), files, data.failed_files_total)
            + _more(len(files), data.failed_files_total, "failed files"))


def render_report(data: ReportData) -> str:
    """The whole page as a string (deterministic: no clock, rows sorted)."""
    failed = sum(1 for r in data.verify_rows if r["status"] != schemas.OK) + len(data.file_failures)
    banner = (f'<div class="banner failed" id="verdict" data-status="failed">{failed} problem(s) found: '
              'see Failures below.</div>' if failed else
              '<div class="banner ok" id="verdict" data-status="ok">Every check passed.</div>')
    scope = (f"a sample of {data.sample} converted series (seed {data.seed})" if data.sample
             else "every converted series")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>dicomflow verification: {escape(data.output)}</title><style>{CSS}</style></head><body>"
        f'<h1>dicomflow verification report</h1><p class="meta">Output <code>{escape(data.output)}</code>; '
        f"checked {escape(scope)}.</p>{banner}"
        f"<h2>Totals</h2>{_totals(data)}"
        f"<h2>Series</h2>{_series_table(data)}"
        f"<h2>Thumbnails</h2>{_thumbnails(data)}"
        f"<h2>Failures</h2>{_failures(data)}"
        f"<h2>Conversion failures</h2>{_conversion_failures(data)}"
        "</body></html>\n"
    )
