"""Counters every transform shares: Beam metrics (the Dataflow UI, the end of a local run) that also
feed the live progress of a local run (dicom_io.progress)."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from dicom_io import progress

NAMESPACE = "dicomflow"
LOG = logging.getLogger("dicomflow")


class Counter:
    """`Metrics.counter(NAMESPACE, name)` that also counts towards the progress bar, as `shown_as`."""

    def __init__(self, name: str, shown_as: str | None = None):
        self._metric = Metrics.counter(NAMESPACE, name)
        self._shown_as = shown_as or name

    def inc(self, n: int = 1) -> None:
        self._metric.inc(n)
        progress.add(self._shown_as, n)


class CountFn(beam.DoFn):
    """Passes every element on, counted as `name` (e.g. files_listed, the progress bar's total)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def setup(self):
        self.counter = Counter(self._name)

    def process(self, element):
        self.counter.inc()
        yield element

    def finish_bundle(self):
        progress.flush()
