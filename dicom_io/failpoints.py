"""Deterministic crash points for fault tests: the process dies exactly where a test says.

DICOMFLOW_KILL_AT="POINT:SUBSTRING:N" SIGKILLs this process the N-th time it reaches POINT with a
URI containing SUBSTRING, e.g. `before_replace:/slices/:2` (the second slices CSV written under
its temporary name, not yet renamed) or `after_replace:/series/:3` (the third series committed).
Counts are per process: the fault tests run the job with --processes 1 so the N-th hit is the same
every run; in a forked worker the job's launcher is killed too. Unset, `reached` costs one lookup. Points: `before_replace`, `after_replace`
(dicom_io.storage.write_bytes, local paths).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

ENV = "DICOMFLOW_KILL_AT"
_lock = threading.Lock()
_hits: dict[str, int] = {}


def reached(point: str, uri: str) -> None:
    """Die here if DICOMFLOW_KILL_AT names this point, a substring of `uri`, and this is the N-th hit."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    substring, _, count = rest.rpartition(":")
    if name != point or substring not in uri:
        return
    with _lock:
        _hits[spec] = _hits.get(spec, 0) + 1
        if _hits[spec] == int(count):
            parent = multiprocessing.parent_process()  # a worker of dicom_io.workers: the job dies with it
            if parent is not None and parent.pid:
                os.kill(parent.pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
