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


def test_buffer_pool_reuses_by_shape_bounds_what_it_holds_and_refuses_a_double_give():
    from dicom_io.volume import BufferPool

    pool = BufferPool(max_bytes=3 * 1024)
    a = pool.take((16, 32), "int16")  # 1 KB
    b = pool.take((16, 32), "int16")
    assert a is not b
    pool.give(a, b)
    assert pool.held_bytes == 2048
    taken = {id(pool.take((16, 32), "int16")), id(pool.take((16, 32), "<i2"))}
    assert taken == {id(a), id(b)}
    fresh = pool.take((16, 32), "int16")  # empty again: a fresh one
    assert id(fresh) not in taken
    assert pool.take((32, 16), "int16").shape == (32, 16)  # another shape never gets those
    pool.give(a)
    with pytest.raises(ValueError, match="twice"):
        pool.give(a)
    pool.give(np.empty(4096, dtype=np.uint8))  # over max_bytes: dropped, not held
    assert pool.held_bytes == 1024


def test_volumes_written_one_after_another_with_reused_buffers_are_identical(tmp_path):
    """The second and third writers of a process take the first one's buffers (with its old
    contents): their volumes must be byte for byte the first one's."""
    import hashlib

    rng = np.random.default_rng(5)
    planes = rng.integers(-1000, 1000, size=(70, 64, 64)).astype(np.int16)  # two shards, one partial
    layout = choose_layout(70, 64, 64, "int16")
    digests = []
    for i in range(3):
        uri = str(tmp_path / f"v{i}.zarr")
        writer = VolumeWriter(uri, layout, {}, 3)
        for plane in (planes if i != 1 else planes[::-1])[:70]:
            writer.append(plane)
        writer.close()
        files = sorted(p for p in (tmp_path / f"v{i}.zarr").rglob("*") if p.is_file() and "c" in p.parts)
        digests.append(hashlib.md5(b"".join(p.read_bytes() for p in files)).hexdigest())
        assert np.array_equal(zarr.open_group(uri, mode="r")["0"][:], planes if i != 1 else planes[::-1])
    assert digests[0] == digests[2] != digests[1]
