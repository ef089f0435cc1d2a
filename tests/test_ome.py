"""dicom_io/ome.py: OME-Zarr 0.5 metadata validated by ome-zarr-models (3D and 4D), pyramids, omero windows."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from ome_zarr_models.common.omero import Omero
from ome_zarr_models.v05.image import Image

from dicom_io import ome, readers
from pipelines.convert import run as convert
from tests.conftest import RUNNER_ARGS, all_files


def test_levels_halve_in_plane_and_z_only_when_z_is_finer():
    assert ome.level_factors([2.5, 0.7, 0.7], 3) == [(1, 1, 1), (1, 2, 2), (2, 4, 4)]  # 1.4 < 2.5; 2.8 > 2.5
    assert ome.level_factors([1.0, 1.0, 1.0], 2) == [(1, 1, 1), (2, 2, 2)]
    with pytest.raises(ome.PyramidError):
        ome.level_factors([1.0, 1.0, 1.0], 0)


def test_translation_is_the_first_position_along_the_array_axes():
    axial = [[0.5, 0, 0, -10.0], [0, 0.5, 0, 20.0], [0, 0, 3.0, 30.0], [0, 0, 0, 1]]
    assert ome.translation_zyx(axial) == [30.0, 20.0, -10.0]
    sagittal = [[0, 0, 2.0, 7.0], [1.5, 0, 0, -4.0], [0, -1.5, 0, 9.0], [0, 0, 0, 1]]  # x along y, y along -z
    assert ome.translation_zyx(sagittal) == [7.0, -9.0, -4.0]
    assert ome.translation_zyx(None) == [0.0, 0.0, 0.0]


def test_downsample_is_a_rounded_block_mean_with_edge_padding():
    block = np.array([[[0, 1, 2], [3, 4, 5]]], dtype=np.int16)  # (1, 2, 3)
    out = ome.downsample(block, (1, 2, 2))
    assert out.dtype == np.int16 and out.tolist() == [[[2, 4]]]  # mean(0,1,3,4) = 2; mean(2,2,5,5) = 3.5 -> 4 (even)
    floats = ome.downsample(block.astype(np.float32), (1, 2, 2))
    assert floats.tolist() == [[[2.0, 3.5]]]


def test_omero_window_from_window_center_and_width():
    window = ome.omero({"dtype": "int16", "modality": "CT", "tags": {"WindowCenter": [40.0, 400.0],
                                                                       "WindowWidth": [400.0, 2000.0]}})
    Omero.model_validate(window)
    assert window["channels"][0]["window"] == {"start": -160.0, "end": 240.0, "min": -32768.0, "max": 32767.0}
    assert ome.omero({"dtype": "int16", "tags": {}}) is None


def _groups(out: str) -> list[tuple[dict, zarr.Group]]:
    rows = readers.converted_rows(out)
    return [(r, zarr.open_group(r["zarr_uri"], mode="r")) for r in rows]


def _validated(group: zarr.Group) -> Image:
    image = Image.from_zarr(group)
    if "omero" in group.attrs["ome"]:
        Omero.model_validate(group.attrs["ome"]["omero"])
    return image


def test_default_volumes_validate_with_translation(converted):
    checked = 0
    for row, group in _groups(converted):
        if "ome" not in group.attrs:
            assert len(row["shape"]) == 4 and row["shape"][-1] == 3 and row["n_volumes"] == 1  # colour only
            continue
        image = _validated(group)
        [dataset] = image.attributes.ome.multiscales[0].datasets
        transforms = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
        assert [t["type"] for t in transforms] == ["scale", "translation"] and dataset.path == "0"
        lead = [0.0] if row["n_volumes"] > 1 else []
        assert transforms[1]["translation"] == lead + ome.translation_zyx(group.attrs["dicom"]["affine_lps"])
        checked += 1
    assert checked >= 4


@pytest.fixture(scope="module")
def pyramid(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pyramid"))
    convert(["--input", corpus.root, "--output", out, "--pyramid_levels", "3", *RUNNER_ARGS])
    return out


def test_pyramid_levels_are_block_means_and_validate_in_3d_and_4d(pyramid):
    dims = set()
    for row, group in _groups(pyramid):
        if "ome" not in group.attrs:
            continue
        image = _validated(group)
        datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
        assert [d.path for d in image.attributes.ome.multiscales[0].datasets] == ["0", "1", "2"]
        base = np.asarray(datasets[0]["coordinateTransformations"][0]["scale"][-3:])
        previous = group["0"][:]
        for level in (1, 2):
            scale = np.asarray(datasets[level]["coordinateTransformations"][0]["scale"][-3:])
            step = tuple(int(v) for v in np.rint(scale / np.asarray(
                datasets[level - 1]["coordinateTransformations"][0]["scale"][-3:])))
            array = group[str(level)]
            expected = np.stack([ome.downsample(v, step) for v in previous.reshape((-1,) + previous.shape[-3:])])
            assert array.dtype == previous.dtype and array.metadata.dimension_names == group["0"].metadata.dimension_names
            np.testing.assert_array_equal(array[:].reshape(expected.shape), expected)
            previous = array[:]
        assert np.all(scale >= base)
        dims.add(group["0"].ndim)
    assert dims == {3, 4}  # 3D and 4D volumes both validated


def test_pyramid_bytes_are_deterministic_and_readers_see_level_0(pyramid, corpus, tmp_path):
    again = str(tmp_path / "again")
    convert(["--input", corpus.root, "--output", again, "--pyramid_levels", "3", *RUNNER_ARGS])
    ours = {f[len(pyramid):]: open(f, "rb").read() for f in all_files(pyramid + "/volumes")}
    theirs = {f[len(again):]: open(f, "rb").read() for f in all_files(again + "/volumes")}
    assert ours == theirs and any("/1/" in name for name in ours)
    row = readers.converted_rows(pyramid)[0]
    with readers.open_volume(pyramid, row["series_key"]) as vol:
        assert vol.shape == tuple(row["shape"])


def test_zip_store_volumes_with_a_pyramid_validate(corpus, tmp_path):
    out = str(tmp_path / "zip")
    convert(["--input", corpus.root, "--output", out, "--store", "zip", "--pyramid_levels", "2", *RUNNER_ARGS])
    checked = 0
    for row in readers.converted_rows(out):
        assert row["zarr_uri"].endswith(".zarr.zip")
        group = zarr.open_group(zarr.storage.ZipStore(row["zarr_uri"], mode="r"), mode="r")
        if "ome" in group.attrs:
            assert [d.path for d in _validated(group).attributes.ome.multiscales[0].datasets] == ["0", "1"]
            checked += 1
    assert checked >= 4
