"""What a crashed run leaves in a local OUT, removed by the next run before it writes anything.

A run holds OUT's lock when this runs, so nothing found here is being written. Three kinds:
- temporary names of atomic writes (`storage.write_bytes`: `NAME.tmp-<32 hex>`; zarr's LocalStore:
  `NAME.<32 hex>.partial`), anywhere below OUT but inside Zarr groups (those go whole, below);
- partial volumes: `volumes/{key}.zarr` (or `.zarr.zip`) without its commit record `series/{key}.json`;
- slices CSVs without their commit record.
On gs:// object writes are atomic (no temporary names), and a partial volume is deleted when its
series is converted again (dicom_io.convert's commit protocol); nothing is listed there.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass

from dicom_io import schemas, storage

LOG = logging.getLogger("dicomflow")
TEMPORARY = re.compile(r"(\.tmp-[0-9a-f]{32}|\.[0-9a-f]{32}\.partial)$")


@dataclass(frozen=True)
class Swept:
    """What `sweep` removed."""

    temporary_files: int = 0
    partial_series: int = 0


def _temporary_files(root: str) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.endswith(".zarr")]  # volumes: whole groups, see _partial_series
        found += [os.path.join(folder, f) for f in files if TEMPORARY.search(f)]
    return found


def _keys(folder: str, suffix: str) -> set[str]:
    if not os.path.isdir(folder):
        return set()
    return {name[:-len(suffix)] for name in os.listdir(folder) if name.endswith(suffix)}


def _partial_series(root: str) -> list[str]:
    committed = _keys(os.path.join(root, schemas.SERIES_DIR), ".json")
    volumes = os.path.join(root, schemas.VOLUMES_DIR)
    slices = os.path.join(root, schemas.SLICES_DIR)
    return ([os.path.join(volumes, f"{k}.zarr") for k in sorted(_keys(volumes, ".zarr") - committed)]
            + [os.path.join(volumes, f"{k}{schemas.ZIP_SUFFIX}")
               for k in sorted(_keys(volumes, schemas.ZIP_SUFFIX) - committed)]
            + [os.path.join(slices, f"{k}.csv") for k in sorted(_keys(slices, ".csv") - committed)])


def sweep(output: str) -> Swept:
    """Remove a crashed run's debris from a local OUT (see the module docstring); nothing on gs://."""
    if storage.is_remote(output):
        return Swept()
    root = output.removeprefix("file://")
    if not os.path.isdir(root):
        return Swept()
    temporary = _temporary_files(root)
    for path in temporary:
        os.remove(path)
    partial = _partial_series(root)
    for path in partial:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if temporary or partial:
        LOG.warning("removed what an earlier run left: %d temporary files, %d partial series outputs",
                    len(temporary), len(partial))
    return Swept(len(temporary), len(partial))
