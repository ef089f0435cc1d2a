"""dicom_io.readers.open_volume: the same array, attributes and affines from either store layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from dicom_io import readers, schemas
from dicom_io.tables import read_table


def test_open_volume_reads_what_convert_committed(converted):
    rows = [r for r in read_table(converted, "series").to_pylist() if r["status"] == "converted"]
    assert rows
    for row in rows:
        key = row["series_key"]
        record = json.loads(open(schemas.series_json_uri(converted, key)).read())
        with readers.open_volume(converted, key) as vol:
            assert vol.store_kind == schemas.STORE_DIRECTORY and vol.uri == row["zarr_uri"]
            assert vol.dicom == zarr.open_group(row["zarr_uri"], mode="r").attrs["dicom"]
            assert vol.shape == tuple(record["shape"])
            expected = zarr.open_group(row["zarr_uri"], mode="r")["0"][:]
            assert np.array_equal(vol.array[:], expected)
            assert np.array_equal(vol.array[1:3], expected[1:3])  # lazy slicing, not the whole array
            if record["affine_lps"] is None:
                assert vol.affine_ras is None
                continue
            lps = np.asarray(record["affine_lps"])
            np.testing.assert_array_equal(vol.affine_lps, lps)
            np.testing.assert_array_equal(vol.affine_ras[:2], -lps[:2])
            np.testing.assert_array_equal(vol.affine_ras[2:], lps[2:])


def test_missing_volume_is_a_specific_error(converted):
    with pytest.raises(readers.VolumeNotFound, match="no-such-key"):
        readers.open_volume(converted, "no-such-key")
