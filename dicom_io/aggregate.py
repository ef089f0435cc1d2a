"""Summary tables of by-hand shard runs: each convert run over a shard keeps its rows as a part,
and the summary tables are rebuilt as the union of every part (README "Shards and aggregate").

A file or series found in several parts (a shard converted twice, shards that overlap) is kept
once: the best status wins (converted, then skipped, then failed), then the later part name.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable


from dicom_io import schemas, storage
from dicom_io.convert import STATUS_RANK
from dicom_io.tables import SCHEMAS, read_parquet

KEY_FIELDS = {schemas.SUMMARY_SERIES_PREFIX: "series_key", schemas.SUMMARY_INSTANCES_PREFIX: "source_uri"}
SHARD_INPUT = re.compile(r"^(series_shard_\d+)\.csv$")
PART_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,99}$")


def default_part(input_uri: str) -> str | None:
    """The part a convert run writes by default: `series_shard_XX` for a manifest shard CSV, else none."""
    match = SHARD_INPUT.match(os.path.basename(input_uri.rstrip("/")))
    return match.group(1) if match else None


def check_part(part: str) -> str:
    """A part name is one path segment of safe characters (it names a folder under OUT/summary/parts)."""
    if not PART_NAME.match(part):
        raise ValueError(f"summary part {part!r}: use letters, digits, '.', '_' or '-' (not first)")
    return part


def part_of(uri: str) -> str:
    """The part name of a part file URI (.../parts/{part}/{name}-IIIII-of-NNNNN.parquet)."""
    return uri.replace("\\", "/").rstrip("/").split("/")[-2]


def part_files(output: str, name: str) -> list[str]:
    return storage.glob(schemas.parts_glob(output, name))


def read_part(uri: str, name: str) -> list[dict[str, Any]]:
    """Rows of one part file, each tagged with its part (`_part`, dropped before writing)."""
    table = read_parquet(uri, SCHEMAS[name])
    part = part_of(uri)
    return [{**row, "_part": part} for row in table.to_pylist()]


def _rank(row: dict[str, Any]) -> tuple:
    return (STATUS_RANK.get(row.get("status"), len(STATUS_RANK)), _negated(row["_part"]))


def _negated(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)


def pick(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The one row kept for a key seen in several parts, without its `_part` tag."""
    best = min(rows, key=_rank)
    return {k: v for k, v in best.items() if k != "_part"}
