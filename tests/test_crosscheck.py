"""Cross-check dicomflow's volumes and affines against tools nobody here wrote.

* SimpleITK (ITK + GDCM): voxel arrays and the LPS affine (origin + direction * spacing).
* dcm2niix: NIfTI data and sform, compared in *world coordinates* only (dcm2niix picks its own
  storage orientation, so no axis order is assumed).

One corpus (``tests.synthetic.make_corpus`` plus an extra 20-degree oblique series) is written
and converted once per module; dcm2niix also runs once.  The whole module takes a few seconds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from dicom_io.tables import read_table
from tests.synthetic import Corpus, SeriesSpec, make_corpus, slice_normal, stack_positions, uid_from, write_series

import SimpleITK as sitk  # noqa: E402  (a pinned test requirement: missing must fail, not skip)

SEED = 0
OBLIQUE_DEGREES = 20.0
AFFINE_ATOL = 1e-4  # mm
INDEX_ATOL = 1e-3  # voxels: the NIfTI sform is float32

# NIfTI-1 datatype codes -> numpy dtype (without byte order)
NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- fixtures


@dataclass
class Stack:
    """One dicomflow output stack: its series JSON, volume and slices CSV rows."""

    record: dict[str, Any]
    volume: np.ndarray
    slices: list[dict[str, str]]

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.record["affine_lps"], dtype=np.float64)


@dataclass
class Crosscheck:
    corpus: Corpus
    oblique: SeriesSpec
    oblique_files: list[str]
    output: Path
    scratch: Path
    records: list[dict[str, Any]]  # every OUT/series/*.json

    def uid(self, name: str) -> str:
        """SeriesInstanceUID of a named series of the corpus."""
        if name == "oblique":
            return self.oblique.series_uid
        number = {"axial": 1, "coronal": 2, "irregular": 4, "mr": 6}[name]
        uid = uid_from("series", SEED, number)
        assert uid in self.corpus.expected, name
        return uid

    def files(self, name: str) -> list[str]:
        """Unique instance files of a named series (the duplicate file is not listed)."""
        if name == "oblique":
            return list(self.oblique_files)
        return list(self.corpus.expected[self.uid(name)]["files"])

    def stack(self, name: str, echo: int | None = None) -> Stack:
        """The dicomflow stack of a named series (of one echo for the MR series)."""
        uid = self.uid(name)
        found = [
            r for r in self.records
            if r["series_instance_uid"] == uid and (r.get("stack_attributes") or {}).get("echo") == echo
        ]
        assert len(found) == 1, f"{name} echo={echo}: {len(found)} stacks in {[r['series_key'] for r in self.records]}"
        record = found[0]
        volume = zarr.open_group(record["zarr_uri"], mode="r")["0"][:]
        with open(self.output / "slices" / f"{record['series_key']}.csv", newline="") as fp:
            slices = list(csv.DictReader(fp))
        return Stack(record, volume, slices)


def _oblique_spec(corpus: Corpus) -> SeriesSpec:
    """A regular CT stack whose IOP is rotated 20 degrees about the patient x (L) axis."""
    axial = corpus.expected[uid_from("series", SEED, 1)]["spec"]
    t = math.radians(OBLIQUE_DEGREES)
    iop = tuple(round(v, 6) + 0.0 for v in (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t)))
    return SeriesSpec(
        series_uid=uid_from("crosscheck", SEED, "oblique"), study_uid=axial.study_uid, patient_id=axial.patient_id,
        modality="CT", positions=stack_positions(16, 2.0, (-125.0, -110.0, -20.0), iop), iop=iop,
        pixel_spacing=axial.pixel_spacing, rows=axial.rows, cols=axial.cols, series_number=9,
        series_description="OBLIQUE 20deg", slice_thickness=2.0,
    )


@pytest.fixture(scope="module")
def xc(tmp_path_factory: pytest.TempPathFactory) -> Crosscheck:
    """The corpus plus the oblique series, converted once by the convert pipeline."""
    from pipelines.convert import run

    root = tmp_path_factory.mktemp("xc_input")
    corpus = make_corpus(root, seed=SEED)
    oblique = _oblique_spec(corpus)
    oblique_files = write_series(root / "oblique", oblique, seed=SEED)
    output = tmp_path_factory.mktemp("xc_output") / "out"
    # dcm2niix writes each echo as its own NIfTI: compare with one 3D stack per echo
    run(["--input", str(root), "--output", str(output), "--stacks_3d", "--runner", "DirectRunner"])
    records = [json.loads(p.read_text()) for p in sorted((output / "series").glob("*.json"))]
    return Crosscheck(corpus, oblique, oblique_files, output, tmp_path_factory.mktemp("xc_scratch"), records)


def _dcm2niix_binary() -> str | None:
    candidate = Path(sys.executable).with_name("dcm2niix")
    return str(candidate) if candidate.exists() else shutil.which("dcm2niix")


@pytest.fixture(scope="module")
def nifti(xc: Crosscheck) -> dict[tuple[str, int], Path]:
    """Run dcm2niix once on the input folder: {(SeriesInstanceUID, echo number or 0): primary .nii}."""
    exe = _dcm2niix_binary()
    assert exe is not None, "dcm2niix is a pinned test requirement (requirements-test.txt)"
    outdir = xc.scratch / "dcm2niix"
    outdir.mkdir()
    proc = subprocess.run(
        [exe, "-z", "n", "-b", "n", "-f", "%j_%s_%e", "-o", str(outdir), xc.corpus.root],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"dcm2niix exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    # "{SeriesInstanceUID}_{SeriesNumber}_{echo}{extra}.nii": extra is empty for the converted
    # stack itself and e.g. "_Eq_1" (equalised/interpolated copy), "_Tilt_1", "_ROI1", "a" for
    # derived files or name collisions.  Only the plain files are matched.
    pattern = re.compile(r"^(?P<uid>[0-9.]+)_(?P<series>\d+)_(?P<echo>\d+)(?P<extra>.*)\.nii$")
    found: dict[tuple[str, int], list[Path]] = {}
    for path in sorted(outdir.iterdir()):
        m = pattern.match(path.name)
        if m and not m["extra"]:
            found.setdefault((m["uid"], int(m["echo"])), []).append(path)
    duplicated = {k: v for k, v in found.items() if len(v) > 1}
    assert not duplicated, duplicated
    return {k: v[0] for k, v in found.items()}


# --------------------------------------------------------------------------- helpers


@dataclass
class ItkSeries:
    image: Any
    array: np.ndarray  # (z, y, x)
    sop_uids: list[str]  # per z
    positions: list[tuple[float, float, float]]  # (0020,0032) per z

    @property
    def affine(self) -> np.ndarray:
        """ITK's index -> LPS matrix: column i = direction[:, i] * spacing[i], translation = origin."""
        direction = np.asarray(self.image.GetDirection(), dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(self.image.GetSpacing(), dtype=np.float64)
        affine[:3, 3] = self.image.GetOrigin()
        return affine


def itk_read(xc: Crosscheck, name: str) -> ItkSeries:
    """Read a series with ITK's ImageSeriesReader, files discovered and sorted by GDCM.

    The unique files of the series are linked into one scratch folder first.  Passing the
    corpus root with ``recursive=True`` would also pick up the exact duplicate in root/sub
    (same SOPInstanceUID, same position): GDCM's IPPSorter then gives up on the whole series
    and GetGDCMSeriesFileNames returns 21 files in file-name order (ITK warns "Non uniform
    sampling"), i.e. an unsorted volume.  dicomflow drops that duplicate itself; the test
    compares against ITK on the clean file set.
    """
    uid = xc.uid(name)
    folder = xc.scratch / f"itk_{name}"
    if not folder.exists():
        folder.mkdir()
        for path in xc.files(name):
            os.symlink(path, folder / Path(path).name)
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid, False, False)
    assert len(names) == len(xc.files(name))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    sops = [reader.GetMetaData(i, "0008|0018").strip().rstrip("\x00") for i in range(len(names))]
    positions = [
        tuple(float(v) for v in reader.GetMetaData(i, "0020|0032").strip().split("\\")) for i in range(len(names))
    ]
    return ItkSeries(image, sitk.GetArrayFromImage(image), sops, positions)  # type: ignore[arg-type]


@dataclass
class Nifti:
    data: np.ndarray  # (nx, ny, nz): voxel (i, j, k), i fastest in the file; scl_slope/inter applied
    sform: np.ndarray  # 4x4, voxel -> RAS mm


def read_nifti(path: Path) -> Nifti:
    """Minimal NIfTI-1 (.nii, uncompressed) reader: data with scaling applied, and the sform."""
    raw = path.read_bytes()
    endian = "<" if np.frombuffer(raw[:4], "<i4")[0] == 348 else ">"
    assert np.frombuffer(raw[:4], endian + "i4")[0] == 348, f"{path}: not NIfTI-1"

    def field(offset: int, kind: str, count: int = 1) -> np.ndarray:
        return np.frombuffer(raw, endian + kind, count, offset)

    dim = field(40, "i2", 8)
    assert 3 <= dim[0] <= 4 and (dim[0] == 3 or dim[4] == 1), f"{path}: dim {dim}"
    shape = tuple(int(v) for v in dim[1:4])
    datatype = int(field(70, "i2")[0])
    vox_offset = int(field(108, "f4")[0])
    slope, inter = (float(v) for v in field(112, "f4", 2))
    sform_code = int(field(254, "i2")[0])
    assert sform_code > 0, f"{path}: no sform"
    sform = np.eye(4)
    sform[:3] = field(280, "f4", 12).reshape(3, 4)
    data = np.frombuffer(raw, endian + NIFTI_DTYPES[datatype], int(np.prod(shape)), vox_offset)
    data = data.reshape(shape, order="F").astype(np.float64)
    if slope != 0.0 and math.isfinite(slope):  # scl_slope == 0 means "no scaling"
        data = data * slope + inter
    return Nifti(data, sform)


def _all_voxels(shape: tuple[int, ...]) -> np.ndarray:
    """Homogeneous (i, j, k, 1) columns of every voxel of a (z, y, x) volume, C order of (k, j, i)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size, dtype=np.int64)]).astype(np.float64)


def _nifti_indices(nii: Nifti, lps: np.ndarray) -> np.ndarray:
    """LPS mm (4, N) -> integer NIfTI voxel indices (3, N); asserts they are integral and in range."""
    ijk = (np.linalg.inv(nii.sform) @ (LPS_TO_RAS @ lps))[:3]
    rounded = np.rint(ijk)
    worst = float(np.abs(ijk - rounded).max())
    assert worst < INDEX_ATOL, f"world position falls between dcm2niix voxels (off by {worst:.4f} voxel)"
    idx = rounded.astype(np.int64)
    limits = np.asarray(nii.data.shape)[:, None]
    assert (idx >= 0).all() and (idx < limits).all(), f"outside dcm2niix volume {nii.data.shape}"
    return idx


def _corners_and_centre(shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(i, j, k) of the 8 corners and the centre of a (z, y, x) volume."""
    nz, ny, nx = shape[:3]
    corners = [(i, j, k) for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)]
    return corners + [(nx // 2, ny // 2, nz // 2)]


# --------------------------------------------------------------------------- tests: job


def test_checked_series_converted(xc: Crosscheck) -> None:
    """Sanity: the series this module cross-checks were converted with the expected geometry."""
    table = read_table(str(xc.output), "series").to_pylist()
    by_uid: dict[str, list[dict]] = {}
    for row in table:
        by_uid.setdefault(row["series_instance_uid"], []).append(row)
    expected = {"axial": (1, "regular"), "coronal": (1, "regular"), "oblique": (1, "regular"),
                "irregular": (1, "irregular_spacing"), "mr": (2, "regular")}
    for name, (n_stacks, geom) in expected.items():
        rows = by_uid.get(xc.uid(name), [])
        assert len(rows) == n_stacks, name
        for row in rows:
            assert row["status"] == "converted", (name, row["status"], row.get("reason"))
            assert row["geometry"] == geom, (name, row["geometry"])


# --------------------------------------------------------------------------- tests: SimpleITK


@pytest.mark.parametrize("name", ["axial", "coronal", "oblique"])
def test_simpleitk_regular(xc: Crosscheck, name: str) -> None:
    """Voxels equal ITK's exactly, same z order, and affine_lps equals ITK's index->LPS matrix."""
    stack = xc.stack(name)
    itk = itk_read(xc, name)
    # GDCM's IPPSorter sorts by position along the slice normal (row x column), ascending, like
    # dicomflow; ITK's z order is therefore NOT reversed and the arrays compare index for index.
    # ITK also applies the modality LUT (GDCMImageIO), so both hold HU as int16.
    assert itk.array.shape == stack.volume.shape
    assert np.array_equal(itk.array, stack.volume)
    assert [row["sop_instance_uid"] for row in stack.slices] == itk.sop_uids
    np.testing.assert_allclose(stack.affine, itk.affine, rtol=0, atol=AFFINE_ATOL)
    # ... and both put every slice's first pixel at its own (0020,0032)
    for k, position in enumerate(itk.positions):
        np.testing.assert_allclose((stack.affine @ [0, 0, k, 1])[:3], position, rtol=0, atol=AFFINE_ATOL)


def test_oblique_is_really_oblique(xc: Crosscheck) -> None:
    """The extra series exercises a non-axis-aligned affine (20 degrees about x)."""
    stack = xc.stack("oblique")
    normal = slice_normal(xc.oblique.iop)
    step = stack.affine[:3, 2]
    assert math.degrees(math.acos(abs(normal[2]))) == pytest.approx(OBLIQUE_DEGREES, abs=1e-3)
    np.testing.assert_allclose(step, 2.0 * normal, atol=1e-4)
    assert stack.record["spacing"][0] == pytest.approx(2.0, abs=1e-4)


# --------------------------------------------------------------------------- tests: dcm2niix

DCM2NIIX_CASES = [("axial", None), ("coronal", None), ("oblique", None), ("mr", 1), ("mr", 2)]


@pytest.mark.parametrize(("name", "echo"), DCM2NIIX_CASES, ids=[f"{n}{'' if e is None else f'-e{e}'}"
                                                                  for n, e in DCM2NIIX_CASES])
def test_dcm2niix_world_coordinates(xc: Crosscheck, nifti: dict, name: str, echo: int | None) -> None:
    """Every dicomflow voxel, placed in the world by affine_lps, lands on a dcm2niix voxel centre
    (through the inverse sform, after LPS -> RAS) holding the same intensity."""
    stack = xc.stack(name, echo)
    key = (xc.uid(name), echo or 0)
    assert key in nifti, f"no dcm2niix output for {key}: {sorted(nifti)}"
    nii = read_nifti(nifti[key])
    assert nii.data.size == stack.volume.size

    # the handful first: corners and centre, with a readable failure
    for i, j, k in _corners_and_centre(stack.volume.shape):
        lps = stack.affine @ np.array([i, j, k, 1.0])
        a, b, c = _nifti_indices(nii, lps[:, None])[:, 0]
        assert nii.data[a, b, c] == stack.volume[k, j, i], f"voxel (i={i}, j={j}, k={k}) -> nifti ({a}, {b}, {c})"

    # then every voxel: the map must be a bijection and all intensities equal
    ijk1 = _all_voxels(stack.volume.shape)
    idx = _nifti_indices(nii, stack.affine @ ijk1)
    assert len(np.unique(np.ravel_multi_index(tuple(idx), nii.data.shape))) == stack.volume.size
    np.testing.assert_array_equal(nii.data[tuple(idx)], stack.volume.ravel().astype(np.float64))


def test_mr_echoes_differ(xc: Crosscheck) -> None:
    """The two echo stacks differ, so matching each to the right dcm2niix file is meaningful."""
    e1, e2 = xc.stack("mr", 1).volume, xc.stack("mr", 2).volume
    assert e1.shape == e2.shape == (10, 64, 64)
    assert not np.array_equal(e1, e2)


# --------------------------------------------------------------------------- tests: irregular spacing

# The irregular series has 15 nominal positions 1.25 mm apart with index 7 missing: 14 slices at
# z = -50.0 ... -42.5 and -40.0 ... -32.5 (-41.25 missing), one 2.5 mm gap.  No uniform grid holds
# these 14 planes, and the missing plane was never acquired.  What the tools do (dcm2niix v1.0.20260724, SimpleITK
# 2.5.7):
#   * dcm2niix warns "Interslice distance varies" and writes a 14-slice NIfTI whose sform uses the
#     first step (1.25 mm), so every slice after the gap sits 1.25 mm too low, plus a 15-slice
#     "_Eq_1" copy in which the missing plane is *interpolated* from its neighbours (made-up data);
#   * ITK warns "Non uniform sampling or missing slices detected" and uses the mean step
#     (17.5 / 13 = 1.346 mm), so no slice but the first and last is where the affine says.
# The correct answer is neither: keep the 14 real planes in position order, record their real
# positions, and say the spacing is irregular: geometry == "irregular_spacing", spacing[0] is None
# (no single z step exists), max_gap 2.5 mm, and the slices CSV holds exactly the 14 real
# positions.  (affine_lps's third column is then the mean step, like ITK's; per-slice positions
# must come from the CSV.)


def test_irregular_spacing_reported(xc: Crosscheck) -> None:
    spec = xc.corpus.expected[xc.uid("irregular")]["spec"]
    stack = xc.stack("irregular")
    record = stack.record
    assert record["geometry"] == "irregular_spacing"
    assert record["spacing"][0] is None
    assert record["spacing"][1:] == pytest.approx(list(spec.pixel_spacing))
    assert record["max_gap"] == pytest.approx(2.5, abs=1e-6)
    assert record["spacing_min"] == pytest.approx(1.25, abs=1e-6)
    assert stack.volume.shape == (14, spec.rows, spec.cols)
    true_z = sorted(p[2] for p in spec.positions)
    assert len(true_z) == 14 and -41.25 not in true_z and {-42.5, -40.0} <= set(true_z)
    assert [int(r["z_index"]) for r in stack.slices] == list(range(14))
    assert [float(r["ipp_z"]) for r in stack.slices] == true_z  # exact: DS strings round-trip
    assert {(float(r["ipp_x"]), float(r["ipp_y"])) for r in stack.slices} == {spec.positions[0][:2]}
    # the affine still anchors the first slice and the in-plane axes exactly
    x0, y0 = spec.positions[0][:2]
    np.testing.assert_allclose(stack.affine[:3, 3], (x0, y0, true_z[0]), rtol=0, atol=AFFINE_ATOL)


def test_irregular_planes_match_simpleitk(xc: Crosscheck) -> None:
    """ITK still sorts the 14 real slices correctly: each dicomflow plane equals ITK's plane of the
    same SOPInstanceUID, at the same z index and the same (0020,0032)."""
    stack = xc.stack("irregular")
    itk = itk_read(xc, "irregular")
    assert itk.array.shape == stack.volume.shape
    by_sop = {row["sop_instance_uid"]: row for row in stack.slices}
    assert set(by_sop) == set(itk.sop_uids)
    for k, sop in enumerate(itk.sop_uids):
        row = by_sop[sop]
        assert int(row["z_index"]) == k, sop
        assert (float(row["ipp_x"]), float(row["ipp_y"]), float(row["ipp_z"])) == itk.positions[k]
        assert np.array_equal(stack.volume[int(row["z_index"])], itk.array[k]), f"plane {k} ({sop})"
    # in-plane geometry and origin agree with ITK; the z column is a mean step in both (see above)
    np.testing.assert_allclose(stack.affine[:, [0, 1, 3]], itk.affine[:, [0, 1, 3]], rtol=0, atol=AFFINE_ATOL)


def test_irregular_planes_match_dcm2niix(xc: Crosscheck, nifti: dict) -> None:
    """dcm2niix's plain (non-"_Eq") output holds the same 14 real planes in the same order.

    Its sform is wrong after the gap (see above), so only slice 0 is placed through world
    coordinates; that fixes dcm2niix's in-plane axes and the direction of its slice axis.
    """
    stack = xc.stack("irregular")
    nii = read_nifti(nifti[(xc.uid("irregular"), 0)])
    nz, ny, nx = stack.volume.shape
    assert nii.data.size == stack.volume.size
    plane0 = _all_voxels((1, ny, nx))
    idx = _nifti_indices(nii, stack.affine @ plane0)
    slice_axis = ({0, 1, 2} - {a for a in range(3) if len(set(idx[a])) > 1}).pop()
    assert nii.data.shape[slice_axis] == nz
    k0 = int(idx[slice_axis][0])
    sign = 1 if k0 == 0 else -1
    assert k0 in (0, nz - 1)
    for k in range(nz):
        idx[slice_axis] = k0 + sign * k
        np.testing.assert_array_equal(nii.data[tuple(idx)], stack.volume[k].ravel().astype(np.float64), f"plane {k}")
