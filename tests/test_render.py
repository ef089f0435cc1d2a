"""dicom_io.render: VOI window formula, window choice, 8-bit images, deterministic bytes, the montage."""

from __future__ import annotations

import io

import numpy as np
import pytest
import zarr
from PIL import Image

from dicom_io import render


def test_window_follows_the_ps3_3_linear_formula():
    # center 40, width 400: x <= c - 0.5 - (w-1)/2 = -160 -> 0; x > c - 0.5 + (w-1)/2 = 239 -> 255
    x = np.array([-1000, -160, -159.5, 39.5, 239, 240, 3000], dtype=np.float64)
    expected = np.rint(np.clip((x - 39.5) / 399.0 + 0.5, 0, 1) * 255).astype(np.uint8)
    out = render.window(x, 40, 400)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    assert out[0] == 0 and out[1] == 0 and out[-1] == 255 and out[-2] == 255 and out[3] == 128


def test_window_width_one_is_a_threshold_and_below_one_is_refused():
    assert render.window(np.array([9.0, 10.0, 11.0]), 10.5, 1).tolist() == [0, 0, 255]
    with pytest.raises(ValueError):
        render.window(np.zeros(2), 0, 0.5)


def test_voi_from_tags_first_value_then_modality_default_then_none():
    assert render.voi_from_tags({"WindowCenter": [50.0, 400.0], "WindowWidth": [350.0, 2000.0]}, "CT") == (50.0, 350.0)
    assert render.voi_from_tags({"WindowCenter": "30\\60", "WindowWidth": "100\\200"}, "MR") == (30.0, 100.0)
    assert render.voi_from_tags({}, "CT") == (40.0, 400.0)
    assert render.voi_from_tags({"WindowCenter": 10.0, "WindowWidth": 0.0}, "ct") == (40.0, 400.0)  # invalid width
    assert render.voi_from_tags({}, "MR") is None


def test_without_a_window_the_data_range_maps_onto_0_255():
    plane = np.array([[-5, 0], [5, 10]], dtype=np.int16)
    image = render.to_image(plane)
    assert image.mode == "L" and np.asarray(image).min() == 0 and np.asarray(image).max() == 255
    flat = render.to_image(np.full((2, 2), 7, dtype=np.float32))  # constant: no division by zero
    assert np.asarray(flat).tolist() == [[0, 0], [0, 0]]


def test_monochrome1_is_inverted_on_display():
    plane = np.array([[0, 100]], dtype=np.int16)
    normal = np.asarray(render.to_image(plane, 50, 100))
    inverted = np.asarray(render.to_image(plane, 50, 100, invert=True))
    assert np.array_equal(inverted, 255 - normal)
    assert render.display_of({"modality": "CR", "monochrome1": True, "tags": {}}).invert


def test_colour_is_kept_and_scaled_to_uint8():
    rgb8 = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb8[..., 0] = 200
    image = render.to_image(rgb8, 40, 400)  # a window never applies to colour
    assert image.mode == "RGB" and image.size == (5, 4) and np.asarray(image)[0, 0].tolist() == [200, 0, 0]
    rgb12 = np.zeros((2, 2, 3), dtype=np.uint16)
    rgb12[0, 0] = (4095, 2048, 0)  # 12 bits used: shifted down by 4
    assert np.asarray(render.to_image(rgb12))[0, 0].tolist() == [255, 128, 0]


def _chunks(data: bytes) -> list[bytes]:
    names, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        names.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return names


def test_encode_is_deterministic_and_carries_no_metadata():
    image = render.to_image(np.arange(64 * 64, dtype=np.int16).reshape(64, 64))
    image.info["exif"] = b"Exif\x00\x00junk"  # whatever an image carries is dropped
    jpeg, png = render.encode(image, "jpeg"), render.encode(image, "png")
    assert jpeg == render.encode(image.copy(), "jpeg") and png == render.encode(image.copy(), "png")
    assert jpeg[:2] == b"\xff\xd8" and b"Exif" not in jpeg
    assert set(_chunks(png)) == {b"IHDR", b"IDAT", b"IEND"}
    assert Image.open(io.BytesIO(png)).tobytes() == image.tobytes()  # PNG is lossless
    with pytest.raises(ValueError):
        render.encode(image, "gif")


class Spy:
    """A Zarr array that records how many values each read returned."""

    def __init__(self, array):
        self._array, self.reads = array, []
        self.shape, self.dtype = array.shape, array.dtype

    def __getitem__(self, key):
        values = self._array[key]
        self.reads.append(np.asarray(values).size)
        return values


def test_montage_reads_three_planes_and_keeps_the_physical_aspect(tmp_path):
    array = zarr.create_array(str(tmp_path / "v.zarr"), shape=(20, 40, 60), dtype="int16", chunks=(4, 40, 60))
    array[:] = np.arange(20 * 40 * 60, dtype=np.int16).reshape(20, 40, 60) % 1000
    spy = Spy(array)
    # z 5 mm x 20 = 100 mm, y 1 mm x 40 = 40 mm, x 0.5 mm x 60 = 30 mm; the tallest extent is z
    image = render.montage(spy, [5.0, 1.0, 0.5], height=200)
    assert sorted(spy.reads) == sorted([40 * 60, 20 * 60, 20 * 40])  # three planes, never the volume
    px_per_mm = 200 / 100
    widths = [round(30 * px_per_mm), round(30 * px_per_mm), round(40 * px_per_mm)]  # z-plane, y-plane, x-plane
    assert image.size == (sum(widths) + 2 * render.PANEL_GAP, 200) and image.mode == "L"
    pixels = np.asarray(image)
    assert pixels[: round(40 * px_per_mm), : widths[0]].std() > 0  # the axial panel: 40 mm tall
    assert not pixels[round(40 * px_per_mm) + 2:, : widths[0]].any()  # below it: background


def test_montage_z_step_for_irregular_stacks_and_colour():
    volume = np.zeros((10, 8, 8, 3), dtype=np.uint8)
    volume[..., 1] = 255
    affine = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]]
    assert render.z_step_from_affine(affine) == 2.5 and render.z_step_from_affine(None) is None
    image = render.montage(volume, [None, 1.0, 1.0], z_step=2.5, height=100)  # 25 mm of z against 8 mm
    assert image.mode == "RGB" and image.height == 100 and np.asarray(image)[50, 200 // 5].tolist() != [0, 0, 0]
    fallback = render.montage(volume, [None, 1.0, 1.0], height=100)  # no z step: 1 mm, 10 mm tall
    assert fallback.height == 100


def test_slice_image_resamples_non_square_pixels():
    plane = np.arange(20 * 10, dtype=np.int16).reshape(20, 10)  # 20 rows x 0.5 mm = 10 mm, 10 cols x 2 mm = 20 mm
    image = render.slice_image(plane, (0.5, 2.0), render.Display(), max_size=100)
    assert image.size == (100, 50)
