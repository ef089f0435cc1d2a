"""Shard objects written by dicom_io/shard_writer.py are byte-identical to zarr-python's own.

Each case writes the same data twice: through VolumeWriter (or write_shard) and through zarr's
`array[...] = data` into another store, then compares every object of the two trees byte for byte.
CPU per 512x512 int16 slice: `python -m benchmarks.shard_writer_bench` (numbers in its docstring).
"""

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec

from dicom_io import shard_writer, storage, volume
from dicom_io.volume import VolumeWriter, choose_layout


def _data(layout: volume.VolumeLayout, seed: int = 12) -> np.ndarray:
    """Compressible noise in the layout's dtype: a ramp plus small random steps."""
    noise = np.random.default_rng(seed).integers(0, 40, size=layout.shape)
    return ((noise + np.arange(layout.shape[-1])) % 200).astype(layout.dtype)


def _reference(root: Path, layout: volume.VolumeLayout, data: np.ndarray) -> Path:
    """What zarr-python writes: the same group and array, filled with one `array[...] = data`."""
    group = zarr.open_group(str(root), mode="w", zarr_format=3)
    VolumeWriter._create(group, layout, volume.COMPRESSION_LEVEL)[...] = data
    return root


def _streamed(root: Path, layout: volume.VolumeLayout, data: np.ndarray) -> Path:
    writer = VolumeWriter(str(root), layout, {})
    for plane in data.reshape((-1,) + layout.slab_shape[1:]):
        writer.append(plane)
    writer.close()
    return root


def _objects(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same_objects(ours: Path, theirs: Path) -> None:
    mine, reference = _objects(ours), _objects(theirs)
    assert sorted(mine) == sorted(reference) and any("/c/" in k or k.startswith("c/") for k in mine)
    assert [k for k in reference if mine[k] != reference[k]] == []


def _with_zero_chunks(layout: volume.VolumeLayout, data: np.ndarray) -> np.ndarray:
    data[:16, :150] = 0  # two inner chunks of shard 0 are fill: left out of its body and index
    data[64:] = 0  # the whole last shard is fill: no object at all
    return data


def _float_specials(layout: volume.VolumeLayout, data: np.ndarray) -> np.ndarray:
    data[:10] = -0.0  # a chunk of -0.0 is data to zarr (bit-pattern compare with the 0.0 fill)
    data[10:20] = 0.0  # a chunk of +0.0 is fill: not written
    data[20, 0, :3] = (np.nan, np.inf, -np.inf)
    return data


def _incompressible(layout: volume.VolumeLayout, data: np.ndarray) -> np.ndarray:
    """Full-entropy bytes: Blosc frames at their largest, the bound of shard_writer.output_buffer."""
    return np.random.default_rng(5).integers(0, 256, size=data.shape, dtype=np.uint8)


CASES = {
    "int16 partial final shard": (choose_layout(70, 300, 260, "int16"), None),
    "int16 four shards, buffers reused": (choose_layout(200, 40, 30, "int16"), None),
    "uint8 3x4 chunks per plane": (choose_layout(40, 600, 520, "uint8"), None),
    "float32": (choose_layout(40, 64, 48, "float32"), _float_specials),
    "uint8 incompressible": (choose_layout(70, 64, 48, "uint8"), _incompressible),
    "colour c=3": (choose_layout(20, 64, 48, "uint8", channels=3), None),
    "4d t,z,y,x": (choose_layout(70, 40, 30, "int16", n_volumes=2), None),
    "zero chunks and a zero shard": (choose_layout(70, 300, 260, "int16"), _with_zero_chunks),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_volume_writer_objects_are_zarrs_bytes(tmp_path, case):
    layout, edit = CASES[case]
    data = _data(layout)
    data = edit(layout, data) if edit else data
    ours = _streamed(tmp_path / "ours.zarr", layout, data)
    _assert_same_objects(ours, _reference(tmp_path / "zarr.zarr", layout, data))
    back = zarr.open_group(str(ours), mode="r")["0"][:]
    assert back.dtype == data.dtype and np.array_equal(back, data, equal_nan=data.dtype.kind == "f")
    if case.startswith("zero"):
        assert not (ours / "0" / "c" / "1").exists() and (ours / "0" / "c" / "0" / "0" / "0").exists()
    if case.startswith("float"):
        assert layout.chunks[0] == 10 and np.signbit(back[:10]).all() and not np.signbit(back[10:20]).any()


def test_the_direct_path_is_taken_for_volume_layouts(tmp_path, monkeypatch):
    calls = []
    real = shard_writer.write_shard
    monkeypatch.setattr(shard_writer, "write_shard", lambda *a: calls.append(a[2]) or real(*a))
    layout = choose_layout(70, 40, 30, "int16", n_volumes=2)
    _streamed(tmp_path / "v.zarr", layout, _data(layout))
    assert calls == [(0, 0, 0, 0), (0, 1, 0, 0), (1, 0, 0, 0), (1, 1, 0, 0)]


def _array(root: Path, data: np.ndarray, **kwargs) -> zarr.Array:
    options = {"chunks": (16, 128, 128), "shards": (64, 256, 256), "fill_value": 0,
               "compressors": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")} | kwargs
    return zarr.create_array(str(root), shape=data.shape, dtype=data.dtype, zarr_format=3, **options)


def _write_every_shard(array: zarr.Array, data: np.ndarray) -> None:
    encoding = shard_writer.encoding_of(array)
    grid = [-(-s // n) for s, n in zip(array.shape, encoding.shard_shape)]
    for coords in np.ndindex(*grid):
        region = tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, encoding.shard_shape))
        shard_writer.write_shard(array, encoding, coords, data[region])


@pytest.mark.parametrize("fill", [0, 7])
def test_partial_edge_chunks_in_every_axis(tmp_path, fill):
    """Shards (64, 256, 256) over 70x300x260: the last shards and their edge chunks are partial in z, y and x."""
    data = np.random.default_rng(3).integers(0, 30, size=(70, 300, 260)).astype("int16")
    data[:16, :128, :128] = fill  # a chunk equal to the fill value: not written
    data[64:, 256:, 256:] = fill  # a whole corner shard of fill: no object
    _write_every_shard(_array(tmp_path / "ours.zarr", data, fill_value=fill), data)
    _array(tmp_path / "zarr.zarr", data, fill_value=fill)[...] = data
    _assert_same_objects(tmp_path / "ours.zarr", tmp_path / "zarr.zarr")
    assert not (tmp_path / "ours.zarr" / "c" / "1" / "1" / "1").exists()
    assert np.array_equal(zarr.open_array(str(tmp_path / "ours.zarr"), mode="r")[:], data)


def test_typesize_and_shuffle_left_to_zarr_are_read_from_the_evolved_codec(tmp_path):
    data = np.random.default_rng(4).normal(size=(20, 64, 64)).astype("float64")
    options = {"chunks": (10, 32, 32), "shards": (20, 64, 64), "compressors": BloscCodec(cname="zstd", clevel=5)}
    _write_every_shard(_array(tmp_path / "ours.zarr", data, **options), data)
    _array(tmp_path / "zarr.zarr", data, **options)[...] = data
    _assert_same_objects(tmp_path / "ours.zarr", tmp_path / "zarr.zarr")


def test_unsupported_arrays_get_no_encoding(tmp_path):
    data = np.zeros((4, 8, 8), dtype="int16")
    gzip = _array(tmp_path / "gzip.zarr", data, chunks=(2, 8, 8), shards=(4, 8, 8), compressors=GzipCodec())
    unsharded = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(4, 8, 8), dtype="int16", chunks=(2, 8, 8))
    dense = _array(tmp_path / "dense.zarr", data, chunks=(2, 8, 8), shards=(4, 8, 8),
                   config={"write_empty_chunks": True})
    inner = [zarr.codecs.BytesCodec(), BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")]
    start = zarr.create_array(str(tmp_path / "start.zarr"), shape=(4, 8, 8), dtype="int16", compressors=None,
                              serializer=zarr.codecs.ShardingCodec(chunk_shape=(2, 8, 8), codecs=inner,
                                                                   index_location="start"))
    assert shard_writer.encoding_of(_array(tmp_path / "ok.zarr", data, chunks=(2, 8, 8), shards=(4, 8, 8)))
    assert [shard_writer.encoding_of(a) for a in (gzip, unsharded, dense, start)] == [None] * 4


def test_writer_falls_back_to_zarr_without_an_encoding(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_writer, "encoding_of", lambda array: None)
    monkeypatch.setattr(shard_writer, "write_shard", pytest.fail)  # the fallback never writes directly
    layout = choose_layout(70, 300, 260, "int16")
    data = _data(layout)
    _assert_same_objects(_streamed(tmp_path / "ours.zarr", layout, data),
                         _reference(tmp_path / "zarr.zarr", layout, data))


def test_write_shard_refuses_data_of_the_wrong_extent(tmp_path):
    array = _array(tmp_path / "v.zarr", np.zeros((70, 300, 260), dtype="int16"))
    with pytest.raises(ValueError, match=r"needs data of shape \(6, 256, 256\)"):
        shard_writer.write_shard(array, shard_writer.encoding_of(array), (1, 0, 0), np.zeros((5, 256, 256), "int16"))


def test_fsspec_store_gets_zarrs_bytes(tmp_path):
    """The bucket path: FsspecStore (memory:// here, gs:// in production) through the same store object."""
    import fsspec

    layout = choose_layout(70, 40, 30, "int16")
    data, base = _data(layout), f"memory://{tmp_path.name}"
    writer = VolumeWriter(f"{base}/ours.zarr", layout, {})
    for plane in data:
        writer.append(plane)
    writer.close()
    group = zarr.open_group(storage.zarr_store(f"{base}/zarr.zarr"), mode="w", zarr_format=3)
    VolumeWriter._create(group, layout, volume.COMPRESSION_LEVEL)[...] = data
    fs = fsspec.filesystem("memory")
    ours, theirs = (fs.find(f"/{tmp_path.name}/{name}") for name in ("ours.zarr", "zarr.zarr"))
    assert [p.replace("ours.zarr", "") for p in ours] == [p.replace("zarr.zarr", "") for p in theirs]
    assert len(ours) == 4 and all(fs.cat_file(a) == fs.cat_file(b) for a, b in zip(ours, theirs))
