"""dicom_io.report_html: the page a person opens, checked as a person would: in headless Chromium.

The browser helpers here (screenshot, dump_dom, parse_dom) are also used by test_verify_pipeline.py.
Chromium: `apt-get install -y chromium` (Debian); the browser tests skip when it is absent.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from dicom_io import render, report_html, report_summary

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
# Skipped only on a developer machine without the browser; under CI (make test installs it) the
# tests run and fail if it is missing.
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="chromium not installed (apt-get install -y chromium)")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _chromium(args: list[str], workdir) -> subprocess.CompletedProcess:
    profile = os.path.join(str(workdir), f"chromium-profile-{len(os.listdir(str(workdir)))}")
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, timeout=120, check=True)


def screenshot(html_path: str, workdir, size: str = "1400,2000") -> Image.Image:
    """The page as Chromium paints it in a window of `size`."""
    png = os.path.join(str(workdir), f"screenshot-{len(os.listdir(str(workdir)))}.png")
    _chromium([f"--screenshot={png}", f"--window-size={size}", f"file://{html_path}"], workdir)
    return Image.open(png).convert("RGB")


def dump_dom(html_path: str, workdir) -> str:
    """The DOM after Chromium parsed (and would have run) the page."""
    return _chromium(["--dump-dom", f"file://{html_path}"], workdir).stdout.decode("utf-8")


def assert_not_blank(image: Image.Image) -> None:
    """Painted: pixel values vary and many colours are used (a blank or error page has a few)."""
    pixels = np.asarray(image, dtype=np.float64)
    assert pixels.std() > 20, "the screenshot is (nearly) one colour"
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 50, "too few distinct colours"


@dataclass
class Dom:
    """Tables by id (rows of cell texts, with each row's attributes), and attributes of every element with an id."""

    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    row_attrs: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    ids: dict[str, dict[str, str]] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        """The totals table as {data-key: count}."""
        return {a["data-key"]: int(r[-1]) for a, r in zip(self.row_attrs["totals"], self.tables["totals"])}


class _DomParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.dom, self._table, self._cells, self._text, self._in_body = Dom(), None, None, None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.dom.ids[attrs["id"]] = attrs
        if tag == "table" and "id" in attrs:
            self._table = attrs["id"]
            self.dom.tables[self._table], self.dom.row_attrs[self._table] = [], []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table and self._in_body:
            self._cells = []
            self.dom.row_attrs[self._table].append(attrs)
        elif tag in ("td", "th") and self._cells is not None:
            self._text = []
        elif tag == "img":
            self.dom.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._text is not None:
            self._cells.append("".join(self._text).strip())
            self._text = None
        elif tag == "tr" and self._cells is not None:
            self.dom.tables[self._table].append(self._cells)
            self._cells = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def parse_dom(html: str) -> Dom:
    parser = _DomParser()
    parser.feed(html)
    return parser.dom


# ---- the page ---------------------------------------------------------------------------------------

def _jpeg() -> bytes:
    yy, xx = np.mgrid[:96, :128]
    return render.encode(render.to_image(((xx * 3 + yy * 2) % 400 - 200).astype(np.int16), 0, 400), "jpeg")


def _rows(max_rows: int = report_summary.MAX_ROWS) -> tuple[list, list, list, list]:
    verify_rows = [
        {"series_key": "a", "status": "ok", "checks_passed": 40, "checks_failed": 0, "failures": [],
         "geometry": "regular", "thumbnails": ["a_middle.jpg", "a_montage.jpg"]},
        {"series_key": "b<script>", "status": "failed", "checks_passed": 10, "checks_failed": 2,
         "failures": ["volume: z=3: stored slice MD5 x != slices CSV y", "source: z=1: /in/<f>: source missing"],
         "geometry": "irregular_spacing", "thumbnails": ["gone.jpg"]},
    ]
    series_rows = [
        {"series_key": "a", "status": "converted", "series_description": "AXIAL & <b>bold</b>", "modality": "CT",
         "geometry": "regular", "n_slices": 20, "shape": [20, 64, 64], "spacing": [2.5, 0.781, 0.781], "dtype": "int16"},
        {"series_key": "b<script>", "status": "converted", "modality": "MR", "geometry": "irregular_spacing",
         "n_slices": 9, "shape": [9, 32, 32], "spacing": [None, 1.0, 1.0], "dtype": "float32"},
        {"series_key": "c", "status": "converted", "geometry": "regular", "n_slices": 3},
        {"series_key": "d", "status": "failed", "reason": "decode error: JPEG 2000: corrupt (/in/d1)"},
    ]
    instances = ([{"source_uri": f"/in/ok{i:02d}", "status": "converted", "reason": ""} for i in range(32)]
                 + [{"source_uri": f"/in/skip{i}", "status": "skipped", "reason": "localizer: x"} for i in range(2)]
                 + [{"source_uri": "/in/d1", "status": "failed", "reason": "decode error: JPEG 2000: corrupt"},
                    {"source_uri": "/in/notes.txt", "status": "failed", "reason": "not dicom: no DICM prefix"},
                    {"source_uri": "/in/d2", "status": "failed", "reason": "stack not converted: /in/d1 failed"}])
    file_failures = [{"source_uri": "/in/x", "series_key": None, "check": "missing", "detail": "no longer exists"}]
    return series_rows, verify_rows, instances, file_failures


def _data(max_rows: int = report_summary.MAX_ROWS) -> report_html.ReportData:
    thumbs = {"a_middle.jpg": _jpeg(), "a_montage.jpg": _jpeg()}
    # fed in two halves and merged, as the Beam combiner does across bundles
    series_rows, verify_rows, instances, file_failures = _rows()
    verified = {r["series_key"]: r for r in verify_rows}
    halves = [report_summary.ReportSummary(max_rows), report_summary.ReportSummary(max_rows)]
    for i, half in enumerate(halves):
        for row in series_rows[i::2]:  # verify rows travel with their series (the CoGroupByKey)
            v = verified.get(row["series_key"])
            report_summary.add_element(half, report_summary.SERIES, ([row], [v] if v else []))
        for row in instances[i::2]:
            report_summary.add_element(half, report_summary.INSTANCE, row)
        for row in file_failures[i::2]:
            report_summary.add_element(half, report_summary.FILE, row)
    summary = report_summary.merge(halves)
    assert summary.counts == report_summary.summarize(*_rows(), max_rows=max_rows).counts
    return report_html.ReportData(output="gs://bucket/out", summary=summary, thumbnails=thumbs, sample=3, seed=7)


def test_the_page_holds_every_number_escaped():
    html = report_html.render_report(_data())
    assert html == report_html.render_report(_data())  # deterministic
    assert "<script>" not in html and "b&lt;script&gt;" in html and "AXIAL &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    dom = parse_dom(html)
    assert dom.totals() == {"series_converted": 3, "series_conversion_failed": 1, "series_checked": 2, "series_ok": 1,
                            "series_failed": 1, "checks_passed": 50, "checks_failed": 2, "instances_converted": 32,
                            "instances_failed": 3, "instances_skipped": 2, "files_failed": 3, "file_failures": 1}
    statuses = [a["data-status"] for a in dom.row_attrs["series"]]
    assert statuses == ["failed", "failed", "ok", "not checked"]  # failures first
    assert [r[0] for r in dom.tables["series"]] == ["b<script>", "d", "a", "c"]
    assert dom.tables["series"][0][5:7] == ["9 × 32 × 32", "— × 1 × 1"]  # irregular: no z spacing
    assert [r[1] for r in dom.tables["failures"]] == ["volume", "source"]
    assert dom.tables["file-failures"] == [["/in/x", "—", "missing", "no longer exists"]]
    assert dom.tables["failed-reasons"] == [["decode error", "1"], ["not dicom", "1"], ["stack not converted", "1"]]
    assert dom.ids["verdict"]["data-status"] == "failed"
    assert len(dom.images) == 2 and base64.b64decode(dom.images[0].split(",", 1)[1]) == _jpeg()
    assert "a sample of 3 converted series (seed 7)" in html and "gone.jpg not found" not in html


def test_long_tables_are_cut_and_say_so():
    dom_html = report_html.render_report(_data(max_rows=2))
    dom = parse_dom(dom_html)
    assert len(dom.tables["series"]) == 2 and dom.ids["series"]["data-total"] == "4"
    assert [r[0] for r in dom.tables["series"]] == ["b<script>", "d"]  # the first two in page order, not any two
    assert "2 of 4 series listed." in dom_html and "2 of 3 failed files listed." in dom_html
    assert [r[0] for r in dom.tables["failed-files"]] == ["/in/d1", "/in/d2"]
    assert dom.totals()["files_failed"] == 3 and dom.totals()["instances_converted"] == 32


def test_a_summary_holds_at_most_its_limits_whatever_it_was_fed():
    summary = report_summary.ReportSummary(max_rows=10, max_thumbnails=3)
    for i in range(1000):
        report_summary.add_instance(summary, {"source_uri": f"/in/{999 - i:04d}", "status": "failed", "reason": "x: y"})
        report_summary.add_verify(summary, {"series_key": f"k{i:04d}", "status": "ok", "checks_passed": 1,
                                            "checks_failed": 0, "failures": [], "thumbnails": ["t.jpg"]})
    assert len(summary.failed_files.pairs) <= 20 and len(summary.thumbnails.pairs) <= 6
    assert [r["source_uri"] for r in summary.failed_files.items()] == [f"/in/{i:04d}" for i in range(10)]
    assert [r["series_key"] for r in summary.thumbnails.items()] == ["k0000", "k0001", "k0002"]
    assert summary.counts["files_failed"] == 1000 and summary.failed_reasons == {"x": 1000}


def test_a_clean_run_says_so():
    series_rows, verify_rows, instances, _ = _rows()
    summary = report_summary.summarize([r for r in series_rows if r["status"] == "converted"], verify_rows[:1],
                                       [r for r in instances if r["status"] != "failed"])
    dom = parse_dom(report_html.render_report(report_html.ReportData(output="out", summary=summary)))
    assert dom.ids["verdict"]["data-status"] == "ok" and dom.ids["failures"]["data-total"] == "0"
    assert dom.ids["failed-files"]["data-total"] == "0"
    assert report_html.reason_class("not dicom: empty file") == "not dicom" and report_html.reason_class(None)


@needs_chromium
def test_chromium_renders_the_page_with_its_tables_and_images(tmp_path):
    path = tmp_path / "report.html"
    path.write_text(report_html.render_report(_data()), encoding="utf-8")
    dom = parse_dom(dump_dom(str(path), tmp_path))
    assert dom.totals()["series_checked"] == 2 and len(dom.tables["series"]) == 4
    assert len(dom.tables["failures"]) == 2 and len(dom.images) == 2
    image = screenshot(str(path), tmp_path)
    assert_not_blank(image)
    pixels = np.asarray(image).reshape(-1, 3)
    banner = (pixels[:, 0] > 240) & (pixels[:, 1] < 240) & (pixels[:, 1] > 220)  # the pale red "failed" banner
    assert banner.sum() > 1000
    assert re.search(r"b&lt;script&gt;", path.read_text()) and "<script>" not in dump_dom(str(path), tmp_path)
