"""One corpus for the export tests: every pixel encoding and geometry class, converted once per session.

int16 CT (axial, oblique, tilted, irregular), float32 (one slope, and per-slice PET slopes), MR,
8-bit RGB, MONOCHROME1, a projection radiograph without geometry, and pydicom's CT_small/MR_small.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest

from dicom_io.tables import read_table
from tests import synthetic
from tests.conftest import RUNNER_ARGS
from tests.test_crosscheck import _dcm2niix_binary

SEED = 5
OBLIQUE = math.radians(20.0)
OBLIQUE_IOP = (1.0, 0.0, 0.0, 0.0, round(math.cos(OBLIQUE), 6), round(-math.sin(OBLIQUE), 6))


ORIGIN = (-40.0, -45.0, -6.0)  # 20 x 3.5 mm by 24 x 4 mm over the synthetic body: real structure in every slice


def _axial(n: int, spacing: float = 2.0) -> list:
    return synthetic.axial_positions(n, spacing, origin=ORIGIN)


def _spec(name: str, **changes) -> synthetic.SeriesSpec:
    fields = dict(series_uid=synthetic.uid_from("export", name), study_uid=synthetic.uid_from("export-study"),
                  patient_id="EXPORT", modality="CT", positions=_axial(6),
                  iop=synthetic.AXIAL_IOP, pixel_spacing=(4.0, 3.5), rows=24, cols=20, slice_thickness=2.0)
    fields.update(changes)
    return synthetic.SeriesSpec(**fields)


SERIES = {
    "axial": _spec("axial"),
    "oblique": _spec("oblique", iop=OBLIQUE_IOP, positions=synthetic.stack_positions(6, 2.0, ORIGIN, OBLIQUE_IOP)),
    "tilted": _spec("tilted", positions=[(ORIGIN[0], ORIGIN[1] + 2.0 * k * math.tan(math.radians(15.0)), 2.0 * k)
                                         for k in range(6)]),
    "irregular": _spec("irregular", positions=[p for i, p in enumerate(_axial(7)) if i != 3]),
    "float": _spec("float", slope=0.25, intercept=-1000.5),
    "pet": _spec("pet", modality="PT", intercept=0.0),  # slopes set per slice below
    "mr": _spec("mr", modality="MR", intercept=0.0),
}
VARIANTS = {"rgb": _spec("rgb", positions=_axial(3)),
            "monochrome1": _spec("monochrome1"),
            "dx": _spec("dx", positions=_axial(1))}
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm")  # pydicom's own test files
PYDICOM_DATA_FILES = ("693_UNCI.dcm", "MR2_UNCI.dcm")  # pydicom-data's (a 512 x 512 CT, a vendor MR)
DTYPES = {"axial": "int16", "float": "float32", "pet": "float32", "rgb": "uint8", "monochrome1": "int16"}


@dataclass
class ExportSource:
    root: Path
    out: str
    rows: dict[str, dict]  # name -> converted series row
    folders: dict[str, Path]  # name -> its source folder

    def key(self, name: str) -> str:
        return self.rows[name]["series_key"]


def _write(root: Path) -> dict[str, Path]:
    folders = {}
    for name, spec in SERIES.items():
        folders[name] = root / name
        files = synthetic.write_series(folders[name], spec, seed=SEED)
        if name == "pet":  # per-slice slopes, as PET writes them: a float32 volume of several scales
            for i, path in enumerate(sorted(files)):
                ds = pydicom.dcmread(path)
                ds.RescaleSlope = f"{0.013 * (i + 1):.3f}"
                ds.save_as(path, enforce_file_format=True)
    for name, spec in VARIANTS.items():
        folders[name] = root / name
        for i in range(len(spec.positions)):
            synthetic.write_variant(folders[name] / f"{i:03d}", spec, i, seed=SEED, variant=name)
    for name in PYDICOM_FILES + PYDICOM_DATA_FILES:
        folders[name] = root / name.removesuffix(".dcm")
        folders[name].mkdir()
        shutil.copy(pydicom.data.get_testdata_file(name, download=False), folders[name] / name)
    return folders


def _uid_of(folder: Path) -> str:
    return str(pydicom.dcmread(next(p for p in sorted(folder.rglob("*")) if p.is_file()),
                               stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture(scope="session")
def export_src(tmp_path_factory) -> ExportSource:
    from pipelines.convert import run

    root = tmp_path_factory.mktemp("export-src")
    folders = _write(root)
    out = str(tmp_path_factory.mktemp("export-out"))
    run(["--input", str(root), "--output", out, *RUNNER_ARGS])
    series = read_table(out, "series").to_pylist()
    rows = {}
    for name, folder in folders.items():
        found = [r for r in series if r["series_instance_uid"] == _uid_of(folder) and r["stack_index"] == 0]
        assert len(found) == 1 and found[0]["status"] == "converted", (name, found)
        rows[name] = found[0]
    for name, row in rows.items():  # a test on a constant volume would prove little
        import zarr
        volume = zarr.open_group(row["zarr_uri"], mode="r")["0"][:]
        assert all(len(np.unique(plane)) > 3 for plane in volume), name
    for name, dtype in DTYPES.items():
        assert rows[name]["dtype"] == dtype, (name, rows[name]["dtype"])
    assert rows["tilted"]["geometry"] == "tilted" and rows["irregular"]["geometry"] == "irregular_spacing"
    return ExportSource(root, out, rows, folders)


def dcm2niix(folder: Path, scratch: Path) -> Path:
    """dcm2niix (uncompressed) on one series folder: its single plain .nii."""
    scratch.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([_dcm2niix_binary(), "-z", "n", "-b", "n", "-f", "%s_%e", "-o", str(scratch), str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plain = [p for p in sorted(scratch.iterdir()) if re.fullmatch(r"\d+_\d+\.nii", p.name)]
    assert len(plain) == 1, (os.listdir(scratch), proc.stdout)
    return plain[0]


def exports_table(to) -> dict[str, dict]:
    """The exports table of an export folder, by series key."""
    from dicom_io import schemas, tables

    rows = tables.read_shards(schemas.export_prefix(str(to), schemas.EXPORTS_PREFIX), schemas.EXPORT_SCHEMA)
    return {r["series_key"]: r for r in rows.to_pylist()}
