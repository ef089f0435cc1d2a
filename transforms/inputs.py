"""List the files behind --input: Beam's MatchFiles for folders, prefixes and globs; manifests read on a worker."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio

from dicom_io.inputs import expand_manifests, read_manifest_entries, resolve_input
from transforms.counters import CountFn


def _from_metadata(metadata) -> tuple[str, int | None, None]:
    return metadata.path, metadata.size_in_bytes, None


def _without_size(entry: tuple[str, str | None]) -> tuple[str, None, str | None]:
    return entry[0], None, entry[1]


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
            listed = (
                pbegin
                | "ManifestPattern" >> beam.Create([spec.pattern])
                | "ExpandManifests" >> beam.FlatMap(expand_manifests)
                | "ReadManifest" >> beam.FlatMap(read_manifest_entries, column=self._manifest_column,
                                                 label_column=self._label_column)
                | "WithoutSize" >> beam.Map(_without_size)
            )
        else:
            listed = (
                pbegin
                | "MatchFiles" >> fileio.MatchFiles(spec.pattern)
                | "PathAndSize" >> beam.Map(_from_metadata)
            )
        return listed | "CountListed" >> beam.ParDo(CountFn("files_listed")) | "Spread" >> beam.Reshuffle()
