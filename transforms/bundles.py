"""DoFns that hand work to a dicom_io.workers.Pool: batching, and what finish_bundle emits for work that
came back after its element's process call. PooledFn is the one shape of all of them."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from dicom_io import progress
from dicom_io.workers import Pool


def in_global_window(value) -> WindowedValue:
    """`value` with the window finish_bundle must give it (every dicomflow collection is global)."""
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


def windowed(outputs: Iterable) -> Iterator:
    """finish_bundle's form of `outputs`: each value, tagged or not, in the global window."""
    for out in outputs:
        yield TaggedOutput(out.tag, in_global_window(out.value)) if isinstance(out, TaggedOutput) else in_global_window(out)


class Batches:
    """Elements of a DoFn to `fn` on a dicom_io.workers.Pool in batches of `size` (task = make_task(batch));
    `add` and `finish` yield fn's results as they come back, `finish` everything still in flight."""

    def __init__(self, pool: Pool, fn: Callable, make_task: Callable[[list], Any], size: int = 64):
        self._pool, self._fn, self._make_task, self._size = pool, fn, make_task, size
        self._batch: list = []

    def add(self, element) -> Iterator:
        self._batch.append(element)
        if len(self._batch) >= self._size:
            yield from self._submit()

    def finish(self) -> Iterator:
        if self._batch:
            yield from list(self._submit())
        for _, result in self._pool.drain():
            yield result

    def _submit(self) -> Iterator:
        batch, self._batch = self._batch, []
        for _, result in self._pool.submit(self._fn, self._make_task(batch)):
            yield result


class PooledFn(beam.DoFn):
    """A DoFn whose work runs on a dicom_io.workers.Pool of `processes` forked processes (local runs;
    1, inline, on Dataflow), BATCH elements a task; what is in flight at the end of a bundle is
    emitted from finish_bundle.

    A subclass names `work` (a picklable dicom_io function of one task, as a staticmethod), makes the
    task from a batch of elements (`_task`) and turns one result of `work` into outputs (`_outputs`).
    """

    BATCH = 1  # elements per task when processes > 1 (1 inline: nothing waits for a batch to fill)
    work: Callable[[Any], Any]

    def __init__(self, processes: int = 1):
        super().__init__()
        self._processes = processes

    def setup(self):
        self._workers = Pool(self._processes)
        self._batches = Batches(self._workers, self.work, self._task, self.BATCH if self._processes > 1 else 1)

    def process(self, element):
        for result in self._batches.add(element):
            yield from self._outputs(result)

    def finish_bundle(self):
        for result in self._batches.finish():
            yield from windowed(self._outputs(result))
        progress.flush()

    def teardown(self):
        self._workers.close()

    def _task(self, batch: list) -> Any:
        raise NotImplementedError

    def _outputs(self, result) -> Iterator:
        raise NotImplementedError
