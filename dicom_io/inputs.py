"""What `--input` means: a folder or bucket prefix, a glob, or a manifest table of URIs."""

from __future__ import annotations

import csv
import io
import os
import posixpath
from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow.parquet as pq

from dicom_io import storage
from dicom_io.tables import stream_parquet

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


def _check_columns(uri: str, found: list[str], names: list[str]) -> None:
    for name in names:
        if name not in found:
            raise ManifestError(f"manifest {uri} has no column {name!r} (columns: {list(found)})")


@dataclass(frozen=True)
class ManifestPiece:
    """What one worker reads: a CSV manifest whole (streamed), or one row group of a Parquet manifest.
    `order` is the manifest's place among those the pattern matched (first occurrence wins)."""

    uri: str
    order: int
    row_group: int = 0


def manifest_pieces(pattern: str) -> list[ManifestPiece]:
    """The pieces of every manifest matching `pattern` (Parquet footers are read to count row groups)."""
    pieces = []
    for order, uri in enumerate(expand_manifests(pattern)):
        groups = 1
        if uri.lower().endswith(".parquet"):
            with storage.open_read(uri, block_size=1024 * 1024) as fp:
                groups = max(1, stream_parquet(fp).metadata.num_row_groups)
        pieces += [ManifestPiece(uri, order, group) for group in range(groups)]
    return pieces


def _piece_rows(piece: ManifestPiece, names: list[str]) -> Iterator[list]:
    """The named columns of each row of a piece, as lists, streamed."""
    uri = piece.uri
    if uri.lower().endswith(".parquet"):
        with storage.open_read(uri, block_size=8 * 1024 * 1024) as fp:
            parquet = stream_parquet(fp)
            _check_columns(uri, parquet.schema_arrow.names, names)
            if parquet.metadata.num_row_groups == 0:
                return
            table = parquet.read_row_group(piece.row_group, columns=names, use_threads=False)
            yield from zip(*(table.column(name).to_pylist() for name in names))
        return
    with storage.open_read(uri, block_size=8 * 1024 * 1024) as fp:
        reader = csv.DictReader(io.TextIOWrapper(fp, encoding="utf-8-sig", newline=""))
        _check_columns(uri, reader.fieldnames or [], names)
        for row in reader:
            yield [row[name] for name in names]


Position = tuple[int, int, int]  # (manifest order, row group, row): where an entry was listed first


def iter_manifest_entries(piece: ManifestPiece, column: str = "uri", label_column: str | None = None
                          ) -> Iterator[tuple[str, tuple[Position, str | None]]]:
    """(URI, (position, label)) per non-empty `column` value of a piece: URIs resolved against the
    manifest, labels from `label_column`; repeats are left to the caller (the first position wins)."""
    names = [column] + ([label_column] if label_column else [])
    for row_index, values in enumerate(_piece_rows(piece, names)):
        value, label = values[0], values[1] if label_column else None
        if value:
            position = (piece.order, piece.row_group, row_index)
            yield _resolve(piece.uri, str(value).strip()), (position, None if label is None else str(label))


def first_listed(entries: Iterable[tuple[Position, str | None]]) -> str | None:
    """The label of the first listing of a URI listed several times."""
    return min(entries, key=_position)[1]


def _position(entry: tuple[Position, str | None]) -> Position:
    return entry[0]


def manifest_columns(uri: str) -> list[str]:
    """The column names of a CSV (its first line) or Parquet (its schema) manifest, read cheaply."""
    if uri.lower().endswith(".parquet"):
        with storage.open_read(uri) as fp:
            return list(pq.read_schema(fp).names)
    with storage.open_read(uri) as fp:
        first = fp.readline().decode("utf-8-sig")
    return next(csv.reader([first]), [])


def check_manifest(input_uri: str, *columns: str) -> None:
    """Raise ManifestError unless the first manifest behind --input exists and has `columns`."""
    spec = resolve_input(input_uri)
    if spec.kind != "manifest":
        return
    found = expand_manifests(spec.pattern)
    if not found or not storage.exists(found[0]):
        raise ManifestError(f"no manifest matches {input_uri}")
    names = manifest_columns(found[0])
    for name in columns:
        if name not in names:
            raise ManifestError(f"manifest {found[0]} has no column {name!r} (columns: {names})")


def read_manifest_entries(uri: str, column: str = "uri", label_column: str | None = None
                          ) -> list[tuple[str, str | None]]:
    """(URI, label) per file of one manifest, in table order, repeats read once (the first label kept)."""
    found: dict[str, str | None] = {}
    for piece in manifest_pieces(uri):
        for entry_uri, (_, label) in iter_manifest_entries(piece, column, label_column):
            found.setdefault(entry_uri, label)
    return list(found.items())


def read_manifest(uri: str, column: str = "uri") -> list[str]:
    """URIs in `column` of a CSV or Parquet manifest, relative paths resolved against it, deduplicated."""
    return [u for u, _ in read_manifest_entries(uri, column)]
