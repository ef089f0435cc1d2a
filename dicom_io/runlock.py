"""One run at a time per output root: OUT/_dicomflow.lock, created exclusively, kept alive by a
heartbeat, taken over when its holder is dead (same host, no such process) or silent for
STALE_AFTER_S. A second run on the same OUT fails at once and says who holds it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from dicom_io import storage
from dicom_io.errors import StorageError

LOCK_NAME = "_dicomflow.lock"
HEARTBEAT_S = 20.0
STALE_AFTER_S = 90.0


class LockHeld(StorageError):
    """Another live run writes to the same output root."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Acquire before a run writes anything to OUT; release when it ends."""

    def __init__(self, output: str, job: str):
        self.uri = storage.join(output, LOCK_NAME)
        self.output, self.job = output, job
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps({"job": self.job, "host": socket.gethostname(), "pid": os.getpid(),
                           "token": self.token, "heartbeat": time.time()}).encode()

    def _holder(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.uri))
        except (FileNotFoundError, ValueError, OSError):
            return None

    def _is_stale(self, held: dict) -> bool:
        if time.time() - float(held.get("heartbeat", 0)) > STALE_AFTER_S:
            return True
        return held.get("host") == socket.gethostname() and not _pid_alive(int(held.get("pid", 0)))

    def acquire(self) -> "RunLock":
        if not storage.create_exclusive(self.uri, self._record()):
            held = self._holder()
            if held is not None and not self._is_stale(held):
                age = time.time() - float(held.get("heartbeat", 0))
                raise LockHeld(f"another dicomflow {held.get('job')} run writes to {self.output} (host "
                               f"{held.get('host')}, pid {held.get('pid')}, seen {age:.0f} s ago): wait for it, "
                               f"or delete {self.uri} if it is dead")
            storage.write_bytes(self.uri, self._record())  # its holder is gone: take over
        self._thread = threading.Thread(target=self._beat, name="dicomflow-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            storage.write_bytes(self.uri, self._record())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._holder()
        if held is not None and held.get("token") == self.token:
            storage.remove(self.uri)
