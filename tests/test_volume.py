import json

import numpy as np
import pytest
import zarr

from dicom_io.volume import VolumeWriter, choose_layout, slice_md5


def test_layout_shards_hold_whole_planes_and_chunks_tile_them():
    layout = choose_layout(1000, 512, 512, "int16")
    assert layout.shards == (64, 512, 512) and layout.chunks == (16, 256, 256)
    assert choose_layout(3, 100, 90, "int16").chunks == (3, 100, 90)
    big = choose_layout(10, 4096, 4096, "float32")  # 64 MB planes: one slice per shard
    assert big.shards[0] == 1
    colour = choose_layout(5, 64, 64, "uint8", channels=3)
    assert colour.shape == (5, 64, 64, 3) and colour.dimension_names == ("z", "y", "x", "c")


def test_writer_streams_slices_into_two_shards(tmp_path):
    data = np.arange(70 * 20 * 30, dtype=np.int16).reshape(70, 20, 30)
    uri = str(tmp_path / "v.zarr")
    writer = VolumeWriter(uri, choose_layout(70, 20, 30, "int16"), {"dicom": {"x": 1}})
    for plane in data:
        writer.append(plane)
    assert writer.close() == 70
    group = zarr.open_group(uri, mode="r")
    assert np.array_equal(group["0"][:], data) and group.attrs["dicom"] == {"x": 1}
    assert [slice_md5(p) for p in group["0"][:]] == [slice_md5(p) for p in data]
    meta = json.loads((tmp_path / "v.zarr" / "0" / "zarr.json").read_text())
    shard = meta["codecs"][0]
    assert shard["name"] == "sharding_indexed"
    blosc = [c for c in shard["configuration"]["codecs"] if c["name"] == "blosc"][0]["configuration"]
    assert (blosc["cname"], blosc["shuffle"]) == ("zstd", "bitshuffle")
    objects = [p for p in (tmp_path / "v.zarr" / "0" / "c").rglob("*") if p.is_file()]
    assert len(objects) == 2  # two shards of 64 + 6 slices, not 70 chunk files


def test_md5_is_of_little_endian_bytes():
    plane = np.array([[1, 256]], dtype=">i2")
    assert slice_md5(plane) == slice_md5(plane.astype("<i2"))


def test_writer_refuses_a_short_volume(tmp_path):
    writer = VolumeWriter(str(tmp_path / "v.zarr"), choose_layout(3, 4, 4, "int16"), {})
    writer.append(np.zeros((4, 4), np.int16))
    with pytest.raises(RuntimeError, match="wrote 1 slices of 3"):
        writer.close()


def test_writer_streams_a_4d_array_volume_after_volume(tmp_path):
    data = np.arange(3 * 70 * 4 * 5, dtype=np.int16).reshape(3, 70, 4, 5)  # 70 slices: two shards per volume
    layout = choose_layout(70, 4, 5, "int16", n_volumes=3)
    assert layout.shape == (3, 70, 4, 5) and layout.shards == (1, 64, 4, 5) and layout.chunks[0] == 1
    assert layout.dimension_names == ("t", "z", "y", "x")
    uri = str(tmp_path / "v4.zarr")
    writer = VolumeWriter(uri, layout, {})
    for plane in data.reshape(-1, 4, 5):
        writer.append(plane)
    assert writer.close() == 3 * 70
    assert np.array_equal(zarr.open_group(uri, mode="r")["0"][:], data)


def test_writer_refuses_a_4d_array_missing_slices(tmp_path):
    writer = VolumeWriter(str(tmp_path / "short.zarr"), choose_layout(4, 2, 2, "int16", n_volumes=2), {})
    for _ in range(7):
        writer.append(np.zeros((2, 2), dtype=np.int16))
    with pytest.raises(RuntimeError, match="wrote 7 slices of 8"):
        writer.close()
