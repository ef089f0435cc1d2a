"""One series, start to end: plan its stacks, write each, and the row of every file it holds.

Beam-free: `transforms.series.ConvertSeriesFn` maps it over the grouped headers, in the worker or,
on a local run, in a forked process of `dicom_io.workers.Pool` (so it takes one picklable argument).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from dicom_io.convert import (READ_AHEAD, ConvertSettings, StackResult, convert_stack, exclusion_rows,
                              merge_instance_rows, pixel_digest)
from dicom_io.header import InstanceHeader
from dicom_io.plan import plan_series


@dataclass
class SeriesResult:
    """What a series produced: one StackResult per stack, one instance row per file, duplicates skipped."""

    stacks: list[StackResult]
    instances: list[dict[str, Any]]
    duplicates: int = 0


class SeriesFailed(RuntimeError):
    """An unexpected error while converting a series; the message names the series."""


_decoders: dict[int, ThreadPoolExecutor] = {}


def _decoder_pool() -> ThreadPoolExecutor:
    """This process's read-ahead pool (a forked child makes its own: threads are not inherited)."""
    pool = _decoders.get(os.getpid())
    if pool is None:
        pool = _decoders[os.getpid()] = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="dicomflow-decode")
    return pool


def convert_series(task: tuple[str, list[InstanceHeader], ConvertSettings]) -> SeriesResult:
    """Plan and write every stack of one series (SeriesInstanceUID, its headers, the settings)."""
    series_uid, headers, settings = task
    try:
        plan = plan_series(series_uid, list(headers), partial(pixel_digest, max_bytes=settings.max_pixel_bytes),
                           four_d=settings.four_d, philips_scaling=settings.philips_scaling)
        rows = exclusion_rows(plan)
        stacks = []
        for stack in plan.stacks:
            result = convert_stack(stack, settings, _decoder_pool())
            result.slices = []  # written already; not carried back across processes
            stacks.append(result)
            rows.extend(result.instances)
        return SeriesResult(stacks, merge_instance_rows(rows), duplicates=len(plan.exclusions))
    except Exception as exc:
        raise SeriesFailed(f"series {series_uid!r}: {type(exc).__name__}: {exc}") from exc
