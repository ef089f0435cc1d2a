"""DoFns that hand work to a dicom_io.workers.Pool: batching, and what finish_bundle emits for work that
came back after its element's process call."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

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
