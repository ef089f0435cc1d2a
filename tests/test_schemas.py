"""dicom_io.schemas: the contract-3 path helpers (`*_path` columns relative to OUT)."""

from __future__ import annotations

import os

import pytest

from dicom_io import schemas
from dicom_io.errors import OutsideOutputError


@pytest.mark.parametrize("out", ["out", "out/", "./runs/out", "/data/out", "/data/out/", "file:///data/out"])
def test_local_paths_round_trip_whatever_form_out_is_given_in(out):
    for uri in (schemas.zarr_uri(out, "k"), schemas.volume_uri(out, "k", schemas.STORE_ZIP),
                schemas.slices_csv_uri(out, "k"), schemas.series_json_uri(out, "k")):
        path = schemas.relative_to_output(out, uri)
        assert not os.path.isabs(path) and "\\" not in path and path.count("/") == 1
        assert schemas.resolve_output_path(out, path) == uri
    assert schemas.relative_to_output(out, schemas.zarr_uri(out, "k")) == "volumes/k.zarr"


def test_a_relative_out_and_an_absolute_uri_of_the_same_place_agree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert schemas.relative_to_output("out", str(tmp_path / "out" / "volumes" / "k.zarr")) == "volumes/k.zarr"
    assert schemas.relative_to_output(str(tmp_path / "out"), "out/slices/k.csv") == "slices/k.csv"


@pytest.mark.parametrize("out", ["gs://bucket/prefix", "gs://bucket/prefix/", "gs://bucket"])
def test_bucket_paths_round_trip(out):
    uri = schemas.zarr_uri(out, "k")
    assert schemas.relative_to_output(out, uri) == "volumes/k.zarr"
    assert schemas.resolve_output_path(out, "volumes/k.zarr") == uri
    assert schemas.resolve_output_path("gs://other/moved", "volumes/k.zarr") == "gs://other/moved/volumes/k.zarr"


@pytest.mark.parametrize("out, uri", [
    ("/data/out", "/data/other/volumes/k.zarr"),
    ("/data/out", "/data/out"),
    ("/data/out", "/data/outside/k.zarr"),  # a common string prefix is not a parent folder
    ("gs://bucket/prefix", "gs://bucket/prefix2/volumes/k.zarr"),
    ("gs://bucket/prefix", "gs://other/prefix/volumes/k.zarr"),
    ("gs://bucket/prefix", "gs://bucket/prefix/../x/k.zarr"),
    ("gs://bucket/prefix", "/bucket/prefix/volumes/k.zarr"),
    ("/data/out", "gs://bucket/data/out/volumes/k.zarr"),
])
def test_a_uri_outside_out_is_refused_with_both_named(out, uri):
    with pytest.raises(OutsideOutputError, match="is not under the output") as caught:
        schemas.relative_to_output(out, uri)
    assert uri in str(caught.value) and out in str(caught.value) and isinstance(caught.value, ValueError)


def test_absolute_values_resolve_to_themselves_and_an_empty_one_is_refused():
    assert schemas.resolve_output_path("/new/out", "/old/out/volumes/k.zarr") == "/old/out/volumes/k.zarr"
    assert schemas.resolve_output_path("/new/out", "gs://b/out/volumes/k.zarr") == "gs://b/out/volumes/k.zarr"
    for empty in ("", None):
        with pytest.raises(ValueError, match="no path"):
            schemas.resolve_output_path("/new/out", empty)


def test_every_uri_column_of_a_table_has_its_path_sibling():
    for schema in (schemas.SERIES_SCHEMA, schemas.VLM_PAIRS_SCHEMA):
        uris = [n for n in schema.names if n.endswith(("_uri", "_uris")) and n != "source_uri"]
        assert uris and all(n.replace("_uri", "_path") in schema.names for n in uris), schema.names
    assert "preview_path" in schemas.SLICE_COLUMNS and schemas.SLICE_COLUMNS[-1] == "preview_path"
    assert schemas.CONTRACT_VERSION == 3
