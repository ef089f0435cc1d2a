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


def escape_glob(path: str) -> str:
    """`path` with glob characters matched literally (a folder named `a[1]`)."""
    return "".join(f"[{c}]" if c in GLOB_CHARS else c for c in path)


def split_pattern(pattern: str) -> list[str]:
    """A folder's `root/**` as patterns that together match the same files exactly once, one per direct
    sub-folder (`sub/**`) plus `root/*` for the files at its top, so they can be listed in parallel.
    Any other pattern (a glob, one file) and a folder that does not exist stay as they are."""
    if not pattern.endswith("/**") or GLOB_CHARS & set(pattern[:-3]):
        return [pattern]
    root = pattern[:-3]
    folders = storage.subfolders(root)
    if not folders and not storage.exists(root):
        return [pattern]
    return [escape_glob(root) + "/*"] + [escape_glob(folder) + "/**" for folder in folders]


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


def _columns(uri: str, names: list[str]) -> list[list]:
    """The named columns of a CSV or Parquet table, each as a list of values."""
    if uri.lower().endswith(".parquet"):
        with storage.open_read(uri, block_size=8 * 1024 * 1024) as fp:
            table = pq.read_table(fp)
        found = table.column_names
        pick = lambda name: table.column(name).to_pylist()  # noqa: E731
    else:
        reader = csv.DictReader(io.StringIO(storage.read_bytes(uri).decode("utf-8-sig")))
        rows, found = list(reader), reader.fieldnames or []
        pick = lambda name: [row[name] for row in rows]  # noqa: E731
    for name in names:
        if name not in found:
            raise ManifestError(f"manifest {uri} has no column {name!r} (columns: {list(found)})")
    return [pick(name) for name in names]


def read_manifest_entries(uri: str, column: str = "uri", label_column: str | None = None
                          ) -> list[tuple[str, str | None]]:
    """(URI, label) per file: URIs from `column` (relative ones resolved against the manifest,
    repeats read once), labels from `label_column` (e.g. the PACS extract's instance_id)."""
    columns = _columns(uri, [column] + ([label_column] if label_column else []))
    labels = columns[1] if label_column else [None] * len(columns[0])
    seen: dict[str, str | None] = {}
    for value, label in zip(columns[0], labels):
        if value:
            seen.setdefault(_resolve(uri, str(value).strip()), None if label is None else str(label))
    return list(seen.items())


def read_manifest(uri: str, column: str = "uri") -> list[str]:
    """URIs in `column` of a CSV or Parquet manifest, relative paths resolved against it, deduplicated."""
    return [u for u, _ in read_manifest_entries(uri, column)]
