"""Every core of a local run: a pool of forked processes for the CPU-bound steps inside one Beam worker.

A local run has one Beam worker; Beam's own multi-process mode starts each worker as a fresh
interpreter (about 2 s and 2 CPU-s of imports each) and moves every element through gRPC. A fork of
the running process costs milliseconds and shares its imported modules, so header parsing and volume
assembly run on every core at a fraction of that cost. On Dataflow (one SDK process per core already)
the pool has one process and `map_unordered` runs inline: the same code, no pool.

Results come back in completion order with their input, so callers that need an order sort (every
table writer does). At most `2 x processes` inputs are in flight: memory stays bounded.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator


PR_SET_PDEATHSIG = 1


def _init_worker() -> None:
    """Pool initializer: the worker dies with its parent, and its garbage collector leaves alone
    what it inherited (the launcher's listing and grouped headers): gc.freeze() moves every inherited
    object to the permanent generation, so collections neither spend CPU on them nor copy their
    pages (a collection touches every object it traverses, and a touched shared page is copied)."""
    gc.freeze()
    _die_with_parent()


def _die_with_parent() -> None:
    """A worker is killed when its parent dies (even by SIGKILL), never orphaned."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        return
    if os.getppid() == 1:  # the parent died before the line above ran
        os._exit(1)


def default_processes() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Pool:
    """`processes` forked workers, started on first use; with 1, work runs in the calling process."""

    def __init__(self, processes: int = 1):
        self.processes = max(1, processes)
        self._executor: ProcessPoolExecutor | None = None
        self._pending: dict[Future, Any] = {}

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("fork"),
                                                 initializer=_init_worker)
        return self._executor

    def submit(self, fn: Callable, item: Any) -> Iterator[tuple[Any, Any]]:
        """Queue fn(item); yield (item, result) of whatever finished, waiting only while the pool is full.

        fn's exception is raised here, when its result is collected.
        """
        if self.processes == 1:
            yield item, fn(item)
            return
        self._pending[self._start().submit(fn, item)] = item
        if len(self._pending) >= 2 * self.processes:
            yield from self._collect(wait(self._pending, return_when=FIRST_COMPLETED).done)
        else:
            yield from self._collect([f for f in self._pending if f.done()])

    def drain(self) -> Iterator[tuple[Any, Any]]:
        """(item, result) of everything still in flight, as it finishes."""
        while self._pending:
            yield from self._collect(wait(self._pending, return_when=FIRST_COMPLETED).done)

    def _collect(self, done: Iterable[Future]) -> Iterator[tuple[Any, Any]]:
        for future in list(done):
            item = self._pending.pop(future)
            yield item, future.result()

    def map_unordered(self, fn: Callable, items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """(item, fn(item)) for every item, on every process, bounded in flight."""
        for item in items:
            yield from self.submit(fn, item)
        yield from self.drain()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
