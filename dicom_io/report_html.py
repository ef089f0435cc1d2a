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
from dicom_io.report_summary import ReportSummary, reason_class  # noqa: F401 (reason_class: part of this API)


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
    """Everything the page shows: the run's ReportSummary (counts and bounded listings) and the thumbnails."""

    output: str
    summary: ReportSummary
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # name -> JPEG bytes
    sample: int | None = None
    seed: int = 0


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
    counts = data.summary.counts
    items = [
        ("series_converted", "Series converted", counts["series_converted"]),
        ("series_conversion_failed", "Series that failed conversion", counts["series_conversion_failed"]),
        ("series_checked", "Series checked", counts["series_checked"]),
        ("series_ok", "Series ok", counts["series_ok"]),
        ("series_failed", "Series failed verification", counts["series_failed"]),
        ("checks_passed", "Checks passed", counts["checks_passed"]),
        ("checks_failed", "Checks failed", counts["checks_failed"]),
    ]
    items += [(f"instances_{s}", f"Instances {s}", n) for s, n in sorted(data.summary.instance_counts.items())]
    items += [("files_failed", "Files that failed conversion", counts["files_failed"]),
              ("file_failures", "Instances-table accounting failures", counts["file_failures"])]
    rows = (f'<tr data-key="{escape(k)}"><th>{escape(label)}</th>{_num(n)}</tr>' for k, label, n in items)
    return _table("totals", ("", "count"), rows)


def _series_table(data: ReportData) -> str:
    rows = []
    for row in data.summary.series.items():
        status = row["verification"]
        css = "failed" if status == schemas.FAILED else "ok" if status == schemas.OK else ""
        rows.append(
            f'<tr class="{css}" data-series-key="{escape(row["series_key"])}" data-status="{escape(status)}">'
            f'<td><code>{escape(row["series_key"])}</code></td>{_cell(row.get("series_description"))}'
            f'{_cell(row.get("modality"))}{_cell(row.get("geometry"))}{_num(row.get("n_slices"))}'
            f'{_cell(_dims(row.get("shape")))}{_cell(_dims(row.get("spacing")))}{_cell(row.get("dtype"))}'
            f'{_cell(row.get("status"))}{_cell(status, "status")}'
            f'{_num(row["checks_passed"])}{_num(row["checks_failed"])}</tr>')
    headers = ("series_key", "description", "modality", "geometry", "n_slices", "shape", "spacing (mm)", "dtype",
               "conversion", "verification", "checks passed", "checks failed")
    total = data.summary.counts["series_total"]
    return _table("series", headers, rows, total) + _more(len(rows), total, "series")


def _img(name: str, data: ReportData) -> str:
    payload = data.thumbnails.get(name)
    if payload is None:
        return f'<p class="muted">{escape(name)} not found</p>'
    uri = "data:image/jpeg;base64," + base64.b64encode(payload).decode("ascii")
    return f'<img src="{uri}" alt="{escape(name)}">'


def _thumbnails(data: ReportData) -> str:
    cards = []
    for row in data.summary.thumbnails.items():
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
    summary, rows = data.summary, []
    for row in summary.failures.items():
        for line in row.get("failures") or []:
            check, _, detail = line.partition(": ")
            rows.append(f'<tr data-series-key="{escape(row["series_key"])}"><td><code>{escape(row["series_key"])}'
                        f'</code></td>{_cell(check)}{_cell(detail)}</tr>')
    total = summary.counts["failure_lines"]
    section = (_table("failures", ("series_key", "check", "detail"), rows, total)
               + _more(len(rows), total, "failures")) if rows else \
        '<p id="failures" data-total="0">Every check of every checked series passed.</p>'
    files = [f'<tr><td><code>{escape(r["source_uri"])}</code></td>{_cell(r.get("series_key"))}{_cell(r["check"])}'
             f'{_cell(r["detail"])}</tr>' for r in summary.file_failures.items()]
    total = summary.counts["file_failures"]
    section += "<h3>Instances table accounting</h3>" + (
        _table("file-failures", ("source_uri", "series_key", "check", "detail"), files, total)
        + _more(len(files), total, "accounting failures") if files else
        '<p id="file-failures" data-total="0">Every file is listed once and still exists.</p>')
    return section


def _conversion_failures(data: ReportData) -> str:
    summary = data.summary
    series_rows = [f'<tr><td><code>{escape(r["series_key"])}</code></td>{_cell(r.get("reason"))}</tr>'
                   for r in summary.failed_series.items()]
    reasons = [f'<tr><td>{escape(k)}</td>{_num(n)}</tr>' for k, n in sorted(summary.failed_reasons.items())]
    files = [f'<tr><td><code>{escape(r["source_uri"])}</code></td>{_cell(r.get("reason"))}</tr>'
             for r in summary.failed_files.items()]
    if not series_rows and not files:
        return '<p id="failed-files" data-total="0">No series and no file failed conversion.</p>'
    failed_series, failed_files = summary.counts["series_conversion_failed"], summary.counts["files_failed"]
    return ("<h3>Series</h3>" + _table("failed-series", ("series_key", "reason"), series_rows, failed_series)
            + _more(len(series_rows), failed_series, "failed series")
            + "<h3>Files by reason</h3>" + _table("failed-reasons", ("reason", "files"), reasons)
            + "<h3>Files</h3>" + _table("failed-files", ("source_uri", "reason"), files, failed_files)
            + _more(len(files), failed_files, "failed files"))


def render_report(data: ReportData) -> str:
    """The whole page as a string (deterministic: no clock, rows sorted)."""
    failed = data.summary.counts["series_failed"] + data.summary.counts["file_failures"]
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
