"""One-object volumes: a Zarr v3 tree packed into OUT/volumes/{key}.zarr.zip, and read back lazily.

zarr's own ZipStore stamps every entry with the wall clock, so two runs would write different bytes.
The tree is therefore written to a local scratch directory first (the usual streaming VolumeWriter),
then packed here with sorted entries, a fixed timestamp and no compression (chunks are already
Blosc-compressed), and put at its URI as one object: atomic on GCS, os.replace locally.
Any ZIP reader, zarr.storage.ZipStore included, opens the result.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from typing import Any, Iterator

from dicom_io import storage

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date ZIP can hold: same bytes on every run


def pack_directory(root: str, destination: str) -> None:
    """Write every file below `root` into the ZIP `destination`, paths relative and sorted."""
    names = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                   for d, _, files in os.walk(root) for f in files)
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.create_system, info.external_attr = 3, 0o644 << 16
            with open(os.path.join(root, name), "rb") as handle:
                archive.writestr(info, handle.read(), compress_type=zipfile.ZIP_STORED)


@contextmanager
def staged_zip(uri: str) -> Iterator[str]:
    """Yield a local scratch directory for the Zarr tree; on a clean exit pack it and put it at `uri`.

    On an exception nothing is written at `uri` and the scratch space is removed.
    """
    scratch = tempfile.mkdtemp(prefix="dicomflow-zip-")
    try:
        tree = os.path.join(scratch, "volume.zarr")
        yield tree
        packed = os.path.join(scratch, "volume.zarr.zip")
        pack_directory(tree, packed)
        storage.put_file(packed, uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_store(uri: str) -> Any:
    """A read-only zarr store over the ZIP object at `uri`: zarr's ZipStore locally; on buckets an
    fsspec ZipFileSystem, which reads the central directory and then each chunk by ranged reads."""
    import zarr.storage

    if not storage.is_remote(uri):
        return zarr.storage.ZipStore(uri.removeprefix("file://"), mode="r")
    import fsspec
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

    zip_fs = fsspec.filesystem("zip", fo=uri, target_options=storage.REMOTE_OPTIONS)
    return zarr.storage.FsspecStore(fs=AsyncFileSystemWrapper(zip_fs, asynchronous=True), path="", read_only=True)
