"""List the files behind --input, spread over workers: a folder's direct sub-folders matched in parallel
(Beam's MatchAll), globs by MatchAll, each manifest (of a glob of them) read by its own worker."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio

from dicom_io.inputs import first_listed, iter_manifest_entries, manifest_pieces, resolve_input, split_pattern
from transforms.counters import CountFn


def _from_metadata(metadata) -> tuple[str, int | None, None]:
    return metadata.path, metadata.size_in_bytes, None


def _without_size(entry: tuple[str, str | None]) -> tuple[str, None, str | None]:
    return entry[0], None, entry[1]


def _first_entry(element: tuple[str, list]) -> tuple[str, str | None]:
    """(uri, its listings in every manifest piece) -> (uri, the label of its first listing): each file once."""
    uri, listings = element
    return uri, first_listed(listings)


class MatchSpread(beam.PTransform):
    """PBegin -> FileMetadata of every file matching `pattern`; a folder is split by split_pattern and its
    parts matched by MatchAll on as many workers, so no single worker lists the whole archive."""

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = pattern

    def expand(self, pbegin):
        return (pbegin
                | "Pattern" >> beam.Create([self._pattern])
                | "SplitPattern" >> beam.FlatMap(split_pattern)
                | "SpreadPatterns" >> beam.Reshuffle()
                | "MatchAll" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW_IF_WILDCARD))


class ReadManifests(beam.PTransform):
    """PBegin -> (uri, label) once per URI of the manifests matching `pattern`: each CSV manifest and each
    row group of a Parquet one read (streamed) by its own worker; a URI listed twice keeps its first label."""

    def __init__(self, pattern: str, column: str, label_column: str | None):
        super().__init__()
        self._pattern, self._column, self._label_column = pattern, column, label_column

    def expand(self, pbegin):
        return (pbegin
                | "ManifestPattern" >> beam.Create([self._pattern])
                | "ManifestPieces" >> beam.FlatMap(manifest_pieces)
                | "SpreadPieces" >> beam.Reshuffle()
                | "ReadPiece" >> beam.FlatMap(iter_manifest_entries, column=self._column,
                                              label_column=self._label_column)
                | "GroupByUri" >> beam.GroupByKey()
                | "OncePerUri" >> beam.Map(_first_entry))


class ListInputs(beam.PTransform):
    """PCollection of (uri, size or None, manifest label or None), one per input file, spread out."""

    def __init__(self, input_uri: str, manifest_column: str = "uri", label_column: str | None = None):
        super().__init__()
        self._input_uri = input_uri
        self._manifest_column = manifest_column
        self._label_column = label_column

    def expand(self, pbegin):
        spec = resolve_input(self._input_uri)
        if spec.kind == "manifest":
            listed = (pbegin
                      | "ReadManifests" >> ReadManifests(spec.pattern, self._manifest_column, self._label_column)
                      | "WithoutSize" >> beam.Map(_without_size))
        else:
            listed = (pbegin
                      | "MatchFiles" >> MatchSpread(spec.pattern)
                      | "PathAndSize" >> beam.Map(_from_metadata))
        return listed | "CountListed" >> beam.ParDo(CountFn("files_listed")) | "Spread" >> beam.Reshuffle()
