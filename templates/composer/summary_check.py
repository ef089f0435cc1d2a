"""Post-run check of a convert job: fail when too many input files failed.

Reads OUT/summary/instances/instances-*.parquet (one row per input file, README "Output contract") with
pyarrow through fsspec, so it works on a local folder and on gs:// (gcsfs) alike. Deliberately
free of Airflow and of the dicomflow package: Composer workers have neither installed, only
pyarrow and gcsfs, and the DAG imports this module from its own folder.
"""

from __future__ import annotations

from collections import Counter

import fsspec
import pyarrow.parquet as pq

# Mirrors dicom_io.schemas (SUMMARY_DIR, SUMMARY_INSTANCES_PREFIX, FAILED); tests keep them equal.
INSTANCES_GLOB = "summary/instances/instances-*.parquet"
STATUS_COLUMN = "status"
FAILED = "failed"


def status_counts(output: str) -> dict[str, int]:
    """Rows of OUT/summary/instances/instances-*.parquet per status (converted, skipped, failed)."""
    pattern = output.rstrip("/") + "/" + INSTANCES_GLOB
    fs, path = fsspec.core.url_to_fs(pattern)
    files = sorted(fs.glob(path))
    if not files:
        raise ValueError(f"no instances table at {pattern}: did the convert job write its summary?")
    counts: Counter[str] = Counter()
    for name in files:
        column = pq.read_table(name, columns=[STATUS_COLUMN], filesystem=fs).column(STATUS_COLUMN)
        counts.update(column.to_pylist())
    return dict(counts)


def check_failed_share(output: str, max_failed_share: float = 0.05) -> dict[str, int]:
    """Counts by status; ValueError when failed files exceed `max_failed_share` of all files.

    An empty table also fails: the job listed no input file, which a scheduled run should not
    pass silently.
    """
    if not 0.0 <= max_failed_share <= 1.0:
        raise ValueError(f"max_failed_share must be within [0, 1], got {max_failed_share}")
    counts = status_counts(output)
    total = sum(counts.values())
    if total == 0:
        raise ValueError(f"the instances table under {output} has no rows: no input file was listed")
    failed = counts.get(FAILED, 0)
    if failed / total > max_failed_share:
        raise ValueError(f"{failed} of {total} input files failed ({failed / total:.1%}), more than "
                         f"max_failed_share={max_failed_share:.1%}; counts by status: {counts}")
    return counts
