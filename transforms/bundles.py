"""What a DoFn emits from finish_bundle (work that a pool finished after its element's process call)."""

from __future__ import annotations

from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue


def in_global_window(value) -> WindowedValue:
    """`value` with the window finish_bundle must give it (every dicomflow collection is global)."""
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])
