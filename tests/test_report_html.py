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

from dicom_io import render, report_html

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


def _data() -> report_html.ReportData:
    thumbs = {"a_middle.jpg": _jpeg(), "a_montage.jpg": _jpeg()}
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
    return report_html.ReportData(
        output="gs://bucket/out", verify_rows=verify_rows, series_rows=series_rows,
        instance_counts={"converted": 32, "failed": 3, "skipped": 2},
        failed_files=[{"source_uri": "/in/d1", "reason": "decode error: JPEG 2000: corrupt"},
                      {"source_uri": "/in/notes.txt", "reason": "not dicom: no DICM prefix"},
                      {"source_uri": "/in/d2", "reason": "stack not converted: /in/d1 failed"}],
        failed_files_total=3, failed_reasons={"decode error": 1, "not dicom": 1, "stack not converted": 1},
        file_failures=[{"source_uri": "/in/x", "series_key": None, "check": "missing", "detail": "no longer exists"}],
        thumbnails=thumbs, sample=3, seed=7)


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


def test_long_tables_are_cut_and_say_so(monkeypatch):
    monkeypatch.setattr(report_html, "MAX_ROWS", 2)
    dom_html = report_html.render_report(_data())
    dom = parse_dom(dom_html)
    assert len(dom.tables["series"]) == 2 and dom.ids["series"]["data-total"] == "4"
    assert "2 of 4 series listed." in dom_html and "2 of 3 failed files listed." in dom_html


def test_a_clean_run_says_so():
    data = _data()
    data.verify_rows = [data.verify_rows[0]]
    data.file_failures, data.failed_files, data.failed_files_total, data.failed_reasons = [], [], 0, {}
    data.series_rows = [r for r in data.series_rows if r["status"] == "converted"]
    dom = parse_dom(report_html.render_report(data))
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
