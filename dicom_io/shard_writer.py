"""Write whole Zarr v3 shard objects directly, byte for byte what zarr-python's ShardingCodec writes.

zarr-python's per-shard machinery (asyncio, a thread hop per inner chunk, indexing, a filled
buffer, a copy and an equality array per chunk) costs CPU on top of Blosc (issue #12). Here a
shard is encoded in one plain loop: inner chunks in zarr's morton order, each Blosc-encoded with the array's own codec
configuration, chunks equal to the fill value everywhere left out (`write_empty_chunks=False`),
then the (offset, nbytes) uint64 little-endian index in C order and its crc32c. The object goes
through the array's own zarr store. Arrays whose codecs differ from that one layout get None from
`encoding_of`, and their callers write through zarr instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import google_crc32c  # zarr's own crc32c implementation (a zarr dependency)
import numpy as np
from numcodecs.blosc import MAX_OVERHEAD, Blosc
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import NDBuffer
from zarr.core.indexing import morton_order_iter
from zarr.core.sync import sync

EMPTY = 2**64 - 1  # index entry of a chunk not written
_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclass(frozen=True)
class ShardEncoding:
    """What writing one shard object needs, taken from an array's (evolved) metadata."""

    shape: tuple[int, ...]
    shard_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    blosc: Blosc

    @property
    def chunks_per_shard(self) -> tuple[int, ...]:
        return tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape))


def encoding_of(array: Any) -> ShardEncoding | None:
    """The encoding of a zarr v3 array sharded as dicomflow writes it, else None (write through zarr).

    Supported: one `sharding_indexed` codec, index at the end with codecs bytes(little) + crc32c,
    inner codecs bytes + blosc, C order, write_empty_chunks off.
    """
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3 or len(meta.codecs) != 1:
        return None
    if not hasattr(meta.chunk_grid, "chunk_shape"):  # a regular grid: the only one sharding accepts
        return None
    config = meta.codecs[0].to_dict()
    if config.get("name") != "sharding_indexed":
        return None
    sharding = config["configuration"]
    blosc = _inner_blosc(sharding["codecs"])
    if blosc is None or not _plain_index(sharding) or not _plain_array_config(array):
        return None
    dtype = np.dtype(array.dtype)
    if dtype.itemsize > 1 and dtype.byteorder == ">":
        return None
    return ShardEncoding(
        shape=tuple(array.shape),
        shard_shape=tuple(meta.chunk_grid.chunk_shape),
        chunk_shape=tuple(sharding["chunk_shape"]),
        dtype=dtype,
        fill_value=meta.fill_value,
        blosc=blosc,
    )


def _inner_blosc(codecs: Any) -> Blosc | None:
    """The numcodecs Blosc zarr's BloscCodec builds for [bytes, blosc] (same fields, same call)."""
    if len(codecs) != 2 or [c["name"] for c in codecs] != ["bytes", "blosc"]:
        return None
    if (codecs[0].get("configuration") or {}).get("endian", "little") != "little":
        return None
    conf = codecs[1]["configuration"]
    return Blosc.from_config({"cname": conf["cname"], "clevel": conf["clevel"],
                              "shuffle": _SHUFFLE[conf["shuffle"]], "blocksize": conf["blocksize"],
                              "typesize": conf["typesize"]})


def _plain_index(sharding: dict[str, Any]) -> bool:
    names = [(c["name"], (c.get("configuration") or {}).get("endian", "little"))
             for c in sharding["index_codecs"]]
    return sharding["index_location"] == "end" and names == [("bytes", "little"), ("crc32c", "little")]


def _plain_array_config(array: Any) -> bool:
    config = array.config
    return config.order == "C" and not config.write_empty_chunks


def shard_key(array: Any, shard_coords: tuple[int, ...]) -> str:
    """The store key of a shard object, e.g. `0/c/1/0/0` (the array's chunk key encoding)."""
    key = array.metadata.encode_chunk_key(shard_coords)
    path = array.store_path.path
    return f"{path}/{key}" if path else key


def shard_extent(encoding: ShardEncoding, shard_coords: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of a shard's region of the array: the shard shape, clipped at the array's end."""
    return tuple(min(n, size - c * n) for c, n, size in zip(shard_coords, encoding.shard_shape, encoding.shape))


def write_shard(array: Any, encoding: ShardEncoding, shard_coords: tuple[int, ...], data: np.ndarray,
                out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> int:
    """Write one shard: `data` is the shard's whole region of the array (clipped at the array's end).

    `out` (from `output_buffer`) is reused for the object's bytes when given. Returns the object's
    size; 0 when every chunk is fill and, as zarr does, the key is deleted.
    """
    expected = shard_extent(encoding, shard_coords)
    if data.shape != expected:
        raise ValueError(f"shard {shard_coords} of {encoding.shape} needs data of shape {expected}, got {data.shape}")
    store, key = array.store_path.store, shard_key(array, shard_coords)
    blob = encode_shard(encoding, data, out, scratch)
    if blob is None:
        sync(store.delete(key))
        return 0
    sync(store.set(key, default_buffer_prototype().buffer.from_array_like(blob)))
    return len(blob)


def output_buffer(encoding: ShardEncoding) -> np.ndarray:
    """A buffer that holds any shard object of `encoding`: each chunk's Blosc frame is at most its
    raw size plus MAX_OVERHEAD, then the index and its crc32c. Reused, it spares a writer fresh pages."""
    n_chunks = int(np.prod(encoding.chunks_per_shard))
    chunk_bytes = int(np.prod(encoding.chunk_shape)) * encoding.dtype.itemsize
    return np.empty(n_chunks * (chunk_bytes + MAX_OVERHEAD) + 16 * n_chunks + 4, dtype=np.uint8)


def chunk_buffer(encoding: ShardEncoding) -> np.ndarray:
    """A buffer for one inner chunk (encode_shard's scratch)."""
    return np.empty(encoding.chunk_shape, dtype=encoding.dtype)


def encode_shard(encoding: ShardEncoding, data: np.ndarray, out: np.ndarray | None = None,
                 scratch: np.ndarray | None = None) -> np.ndarray | None:
    """The shard object for `data` (its region of the array) as a uint8 view of `out`, or None when
    every chunk is fill; `scratch` (chunk_buffer) holds a chunk that is not contiguous in `data`."""
    data = np.asarray(data, dtype=encoding.dtype)
    out = output_buffer(encoding) if out is None else out
    cps = encoding.chunks_per_shard
    index = np.full(cps + (2,), EMPTY, dtype="<u8")
    offset, scratch = 0, chunk_buffer(encoding) if scratch is None else scratch
    for coords in morton_order_iter(cps):
        blob = encode_chunk(encoding, _chunk_of(encoding, data, coords, scratch))
        if blob is None:
            continue
        index[coords] = (offset, len(blob))
        out[offset:offset + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        offset += len(blob)
    if not offset:
        return None
    index_bytes = index.reshape(-1).view(np.uint8)
    out[offset:offset + index_bytes.size] = index_bytes
    end = offset + index_bytes.size
    out[end:end + 4] = np.array([google_crc32c.value(index_bytes.tobytes())], dtype="<u4").view(np.uint8)
    return out[:end + 4]


def _chunk_of(encoding: ShardEncoding, data: np.ndarray, coords: tuple[int, ...],
              scratch: np.ndarray) -> np.ndarray | None:
    """Inner chunk `coords` of the shard, C-contiguous (copied into `scratch` when it is not); padded
    with the fill value past the array's end as zarr pads it; None when wholly past the end (all
    fill, so never written). One scratch buffer per shard: no fresh pages to fault in per chunk."""
    region = tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, encoding.chunk_shape))
    block = data[region]
    if block.shape == encoding.chunk_shape:
        if block.flags.c_contiguous:
            return block
        np.copyto(scratch, block)
        return scratch
    if 0 in block.shape:
        return None
    scratch.fill(encoding.fill_value)
    scratch[tuple(slice(0, n) for n in block.shape)] = block
    return scratch


def encode_chunk(encoding: ShardEncoding, chunk: np.ndarray | None) -> bytes | None:
    """Blosc bytes of one C-contiguous inner chunk, or None when it equals the fill value everywhere."""
    if chunk is None or _is_fill(chunk, encoding.fill_value):
        return None
    return bytes(encoding.blosc.encode(chunk.reshape(-1).view(np.uint8)))


def _is_fill(chunk: np.ndarray, fill: Any) -> bool:
    """zarr's empty-chunk test (NDBuffer.all_equal); an all-zero-bits fill takes a fast path.

    zarr compares floats against a 0.0 fill by bit pattern, so -0.0 counts as data, as here.
    """
    if _zero_bits(chunk.dtype, fill):
        flat = chunk.reshape(-1).view(np.uint8)
        return not (flat.view(np.uint64) if flat.size % 8 == 0 else flat).any()  # 8 bytes a step
    return bool(NDBuffer.from_numpy_array(chunk).all_equal(fill))


@lru_cache(maxsize=64)
def _zero_bits(dtype: np.dtype, fill: Any) -> bool:
    """True when the fill is all-zero bits for a dtype whose equality is bitwise (ints, bool, +0.0)."""
    if dtype.kind not in "biuf":
        return False
    return not np.asarray(fill, dtype=dtype).tobytes().strip(b"\0")
