"""Transforms on their own, with TestPipeline + assert_that (no files written but by ConvertSeries)."""

from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to, is_not_empty

from dicom_io.convert import ConvertSettings
from tests.conftest import all_files
from transforms.headers import DropLocalizers, ReadHeaders
from transforms.inputs import ListInputs
from transforms.series import ConvertSeries


def _uri(row):
    return row["source_uri"]


def _status(row):
    return row["status"], row["reason"].split(":")[0]


def test_list_inputs_finds_every_file_recursively(pipeline, corpus):
    with pipeline as p:
        listed = p | ListInputs(corpus.root) | beam.Map(lambda e: (e[0], e[1] == os.path.getsize(e[0])))
        assert_that(listed, equal_to([(f, True) for f in all_files(corpus.root)]))


def test_read_headers_routes_unreadable_files_with_reasons(pipeline, corpus):
    bad = sorted(corpus.broken + corpus.not_dicom)
    with pipeline as p:
        result = p | ListInputs(corpus.root) | ReadHeaders()
        assert_that(result["rejected"] | "Uris" >> beam.Map(_uri), equal_to(bad), label="RejectedUris")
        assert_that(result["rejected"] | "Status" >> beam.Map(_status),
                    equal_to([("failed", "not dicom")] * len(bad)), label="RejectedReasons")
        good = len(corpus.files) - len(bad)
        assert_that(result["headers"] | beam.combiners.Count.Globally(), equal_to([good]), label="HeaderCount")


def test_drop_localizers(pipeline, corpus):
    with pipeline as p:
        routed = p | ListInputs(corpus.root) | ReadHeaders()
        split = routed["headers"] | DropLocalizers()
        assert_that(split["dropped"] | beam.Map(_uri), equal_to(corpus.localizers), label="Localizers")
        assert_that(split["images"] | "LocalizerFlags" >> beam.Map(lambda h: h.is_localizer),
                    equal_to([False] * (len(corpus.files) - len(corpus.broken) - len(corpus.not_dicom) - len(corpus.localizers))), label="NoLocalizerLeft")


def test_convert_series_emits_one_series_row_per_stack(pipeline, corpus, tmp_path):
    settings = ConvertSettings(output=str(tmp_path))
    with pipeline as p:
        headers = (p | ListInputs(corpus.root) | ReadHeaders())["headers"]
        images = (headers | DropLocalizers())["images"]
        result = images | ConvertSeries(settings)
        keys = result["series"] | "Keys" >> beam.Map(lambda r: (r["status"], r["stack_index"]))
        # regular axial, coronal, irregular, and the MR series' two echoes as one (t, z, y, x) stack
        assert_that(keys, equal_to([("converted", 0)] * 4), label="Stacks")
        volumes = result["series"] | "Volumes" >> beam.Map(lambda r: r["n_volumes"])
        assert_that(volumes, equal_to([1, 1, 1, 2]), label="Volumes")
        assert_that(result["instances"], is_not_empty(), label="Instances")
