"""What `--input` means: a folder or bucket prefix, a glob, or a manifest table of URIs."""

from __future__ import annotations

import csv
import io
import os
import posixpath
from dataclasses import dataclass

import pyarrow.parquet as pq

from dicom_io import storage

MANIFEST_SUFFIXES = (".csv", ".parquet")
GLOB_CHARS = set("*?[")


class ManifestError(ValueError):
    """The manifest cannot be used: missing column, unreadable table."""


@dataclass(frozen=True)
class InputSpec:
    """`kind` is "manifest" (patterns of tables) or "files" (a Beam match pattern)."""

    kind: str
    pattern: str


def resolve_input(input_uri: str) -> InputSpec:
    """Classify --input: a .csv/.parquet (or a glob of them) is a manifest, a folder gets '/**'."""
    if not storage.is_remote(input_uri):
        input_uri = os.path.abspath(input_uri.removeprefix("file://"))
    if input_uri.lower().endswith(MANIFEST_SUFFIXES):
        return InputSpec("manifest", input_uri)
    if GLOB_CHARS & set(input_uri):
        return InputSpec("files", input_uri)
    if not storage.is_remote(input_uri) and os.path.isfile(input_uri):
        return InputSpec("files", input_uri)
    return InputSpec("files", input_uri.rstrip("/") + "/**")


def expand_manifests(pattern: str) -> list[str]:
    """Manifest URIs matching `pattern` (a plain URI matches itself), sorted."""
    if not GLOB_CHARS & set(pattern):
        return [pattern]
    return storage.glob(pattern)


def _resolve(base: str, value: str) -> str:
    if "://" in value or os.path.isabs(value):
        return value
    if storage.is_remote(base):
        return posixpath.normpath(posixpath.join(posixpath.dirname(base), value)).replace(":/", "://", 1)
    return os.path.normpath(os.path.join(os.path.dirname(base), value))


def read_manifest(uri: str, column: str = "uri") -> list[str]:
    """URIs in `column` of a CSV or Parquet manifest, relative paths resolved against it, deduplicated."""
    if uri.lower().endswith(".parquet"):
        with storage.open_read(uri, block_size=8 * 1024 * 1024) as fp:
            table = pq.read_table(fp)
        if column not in table.column_names:
            raise ManifestError(f"manifest {uri} has no column {column!r} (columns: {table.column_names})")
        values = table.column(column).to_pylist()
    else:
        text = storage.read_bytes(uri).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        if column not in (reader.fieldnames or []):
            raise ManifestError(f"manifest {uri} has no column {column!r} (columns: {reader.fieldnames})")
        values = [row[column] for row in reader]
    seen: dict[str, None] = {}
    for value in values:
        if value:
            seen.setdefault(_resolve(uri, value.strip()), None)
    return list(seen)
