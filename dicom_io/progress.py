"""Progress while a job runs: workers count what they did, the launching process shows it.

Workers call `add(name, n)` next to their Beam counters (Beam's counters reach the launcher
only at the end of a local run). When the launcher set DICOMFLOW_PROGRESS_DIR (a local run,
in-process or multi-process: worker processes inherit it), each process keeps its totals in
`DIR/<pid>.json`, rewritten at most twice a second, and the launcher sums them into a live bar
(on a terminal) or a line every LOG_EVERY_S seconds. Elsewhere (Dataflow workers) each process
logs its own totals every WORKER_LOG_EVERY_S seconds, which Cloud Logging shows per worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Iterator

ENV_DIR = "DICOMFLOW_PROGRESS_DIR"
FLUSH_EVERY_S = 0.5
LOG_EVERY_S = 10.0
WORKER_LOG_EVERY_S = 60.0
LOG = logging.getLogger("dicomflow")
MB = 1024 * 1024


class _Tally:
    """This process's totals, and when they were last shared."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.flushed = self.logged = time.monotonic()

    def add(self, name: str, n: int) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n
            now = time.monotonic()
            folder = os.environ.get(ENV_DIR)
            if folder and now - self.flushed >= FLUSH_EVERY_S:
                self.flushed = now
                self._write(folder)
            elif not folder and now - self.logged >= WORKER_LOG_EVERY_S:
                self.logged = now
                LOG.info("progress of this worker: %s", describe(self.counts))

    def flush(self) -> None:
        folder = os.environ.get(ENV_DIR)
        if folder:
            with self.lock:
                self._write(folder)

    def _write(self, folder: str) -> None:
        path = os.path.join(folder, f"{os.getpid()}.json")
        try:
            with open(path + ".new", "w") as handle:
                json.dump(self.counts, handle)
            os.replace(path + ".new", path)
        except OSError:  # the launcher removed the folder: the run is over
            pass


_TALLY = _Tally()


def _reset_after_fork() -> None:
    """A forked worker (dicom_io.workers) counts from zero into its own file."""
    global _TALLY
    _TALLY = _Tally()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def add(name: str, n: int = 1) -> None:
    """Count `n` more of `name` (files_listed, files_read, series_written, bytes_written, ...)."""
    if n:
        _TALLY.add(name, n)


def flush() -> None:
    """Share this process's totals now (end of a bundle)."""
    _TALLY.flush()


def describe(counts: dict[str, int]) -> str:
    """`1,234 of 3,000 files read, 5 series written, 12 MB written` from whatever was counted."""
    parts = []
    if "files_read" in counts or "files_listed" in counts:
        listed = counts.get("files_listed")
        parts.append(f"{counts.get('files_read', 0):,}" + (f" of {listed:,}" if listed else "") + " files read")
    for name, label in (("series_written", "series written"), ("series_reused", "series reused"),
                        ("series_checked", "series verified"), ("rows_written", "rows written")):
        if counts.get(name):
            parts.append(f"{counts[name]:,} {label}")
    if counts.get("bytes_written"):
        parts.append(f"{counts['bytes_written'] / MB:,.0f} MB written")
    return ", ".join(parts) or "starting"


def _totals(folder: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for name in os.listdir(folder):
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as handle:
                    for key, value in json.load(handle).items():
                        totals[key] = totals.get(key, 0) + int(value)
            except (OSError, ValueError):
                continue  # being replaced: read next time
    return totals


class _Display(threading.Thread):
    """Polls the progress folder and draws a tqdm bar or writes a line every LOG_EVERY_S."""

    def __init__(self, folder: str, bar: bool):
        super().__init__(name="dicomflow-progress", daemon=True)
        self.folder, self.stop, self.started = folder, threading.Event(), time.monotonic()
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=None, unit=" files", file=sys.stderr, dynamic_ncols=True, leave=False)

    def run(self) -> None:
        last_line = time.monotonic()
        while not self.stop.wait(0.5 if self.bar is not None else 1.0):
            counts = _totals(self.folder)
            if self.bar is not None:
                self._draw(counts)
            elif time.monotonic() - last_line >= LOG_EVERY_S:
                last_line = time.monotonic()
                print(f"progress: {describe(counts)} ({time.monotonic() - self.started:.0f} s)",
                      file=sys.stderr, flush=True)

    def _draw(self, counts: dict[str, int]) -> None:
        self.bar.total = counts.get("files_listed") or None
        self.bar.n = counts.get("files_read", counts.get("series_checked", 0))
        rest = {k: v for k, v in counts.items() if k not in ("files_read", "files_listed")}
        self.bar.set_postfix_str(describe(rest) if rest else "", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=5)
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def display(mode: str = "auto", local: bool = True) -> Iterator[None]:
    """Show the run's progress while the block runs: `bar`, `log`, `none`, or `auto` (bar on a terminal)."""
    if mode == "none" or not local:
        yield
        return
    bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
    with _TALLY.lock:
        _TALLY.counts.clear()  # an in-process run starts from zero, whatever ran before in this process
    folder = tempfile.mkdtemp(prefix="dicomflow-progress-")
    previous = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = folder
    shown = _Display(folder, bar)
    shown.start()
    try:
        yield
    finally:
        shown.close()
        if previous is None:
            os.environ.pop(ENV_DIR, None)
        else:
            os.environ[ENV_DIR] = previous
        shutil.rmtree(folder, ignore_errors=True)
