"""Siemens mosaics (dicom_io/mosaic.py) on the real DWI mosaics nibabel ships, end to end.

nibabel's `siemens_dwi_0.dcm.gz` / `siemens_dwi_1000.dcm.gz` are real Siemens headers (CSA
included) whose pixels were zeroed to make them small; the tests also write them with a known
pattern in every tile (same headers), so demosaicing is checked on values that can differ.
References: nibabel's MosaicWrapper (its own demosaic and position code, not the CSA reader we
share) and dcm2niix (pinned in requirements-test.txt).
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import warnings

import nibabel
import numpy as np
import pydicom
import pytest
import zarr

from benchmarks.crosscheck_dcm2niix import Nifti, dicomflow_volumes, matches
from dicom_io import pixels, schemas, storage
from dicom_io.errors import HeaderError
from dicom_io.header import read_header
from dicom_io.tables import read_table
from pipelines.convert import run
from tests.conftest import RUNNER_ARGS

NIBABEL_DATA = os.path.join(os.path.dirname(nibabel.__file__), "nicom", "tests", "data")
DWI = {0: os.path.join(NIBABEL_DATA, "siemens_dwi_0.dcm.gz"), 1000: os.path.join(NIBABEL_DATA, "siemens_dwi_1000.dcm.gz")}
N_IMAGES, TILE, GRID = 48, 128, 7


def _header(path):
    with storage.open_source(path) as fp:
        return read_header(fp, path, storage.size_of(path))


def _nibabel_wrapper(path):
    from nibabel.nicom import dicomwrappers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return dicomwrappers.wrapper_from_data(pydicom.dcmread(io.BytesIO(gzip.open(path).read())))


def _pattern(b_value: int) -> np.ndarray:
    """A 896 x 896 mosaic whose 48 tiles all differ (12-bit values), the unused tile zero."""
    r, c = np.mgrid[0:TILE, 0:TILE]
    mosaic = np.zeros((GRID * TILE, GRID * TILE), dtype=np.uint16)
    for k in range(N_IMAGES):
        tile = (k * 61 + r * 7 + c * 3 + b_value // 10) % 4096
        row, col = divmod(k, GRID)
        mosaic[row * TILE:(row + 1) * TILE, col * TILE:(col + 1) * TILE] = tile
    return mosaic


@pytest.fixture(scope="module")
def patterned(tmp_path_factory):
    """The two mosaics with patterned pixels: {b: (gz path, plain path)}."""
    return write_patterned(tmp_path_factory.mktemp("mosaic"))


def write_patterned(root):
    """The two mosaics with patterned pixels under root/gz and root/plain: {b: (gz path, plain path)}."""
    (root / "gz").mkdir()
    (root / "plain").mkdir()
    out = {}
    for b, path in DWI.items():
        ds = pydicom.dcmread(io.BytesIO(gzip.open(path).read()))
        ds.PixelData = _pattern(b).tobytes()
        plain = root / "plain" / f"dwi_{b}.dcm"
        ds.save_as(plain)
        zipped = root / "gz" / f"dwi_{b}.dcm.gz"
        zipped.write_bytes(gzip.compress(plain.read_bytes()))
        out[b] = (str(zipped), str(plain))
    return out


def test_nibabel_ships_real_mosaics():
    for path in DWI.values():
        h = _header(path)
        assert "MOSAIC" in h.image_type and h.rows == h.columns == 896 and h.mosaic is not None


def test_mosaic_header_tiles_and_corrected_positions_agree_with_nibabel():
    h = _header(DWI[1000])
    assert (h.mosaic.n_images, h.mosaic.grid, h.plane_rows, h.plane_columns) == (N_IMAGES, GRID, TILE, TILE)
    wrapper = _nibabel_wrapper(DWI[1000])
    assert np.allclose(h.frames[0].position, wrapper.image_position, atol=1e-6)
    assert not np.allclose(h.frames[0].position, h.image_position)  # the stored IPP is the mosaic's corner
    # slice k: k x SpacingBetweenSlices (3 mm) along the CSA slice normal, as nibabel's affine says
    affine = wrapper.affine  # nibabel's DICOM affine: LPS, (row, column, slice) index order
    for k in (1, 47):
        assert np.allclose(h.frames[k].position, (affine @ np.array([0, 0, k, 1.0]))[:3], atol=1e-4)
    assert h.value("b_value") == 1000 and np.allclose(h.value("diffusion_direction"), [0.99997449, 0.00505012, -0.00505012])


def test_demosaic_equals_nibabel_on_patterned_tiles(patterned):
    zipped, _ = patterned[1000]
    h = _header(zipped)
    with storage.open_source(zipped) as fp:
        tiles = pixels.decode(fp, h)
    assert tiles.shape == (N_IMAGES, TILE, TILE)
    assert len({t.tobytes() for t in tiles}) == N_IMAGES  # every tile differs: order is testable
    reference = _nibabel_wrapper(zipped).get_data()  # (rows, cols, slices), scaled (slope 1 here)
    assert np.array_equal(np.moveaxis(reference, 2, 0), tiles)


def test_absurd_number_of_images_in_mosaic_is_refused_before_any_allocation(tmp_path):
    from nibabel.nicom import csareader

    ds = pydicom.dcmread(io.BytesIO(gzip.open(DWI[0]).read()))
    h = _header(DWI[0])
    raw = ds[0x00291010].value
    csa = csareader.read(raw)
    assert csa["tags"]["NumberOfImagesInMosaic"]["items"] == [N_IMAGES]
    # rewrite the CSA item "48" as "99999999" in place (same length: the item is "48" + 6 spaces)
    at = raw.index(b"NumberOfImagesInMosaic")
    patched = raw[:at] + raw[at:].replace(b"48      ", b"99999999", 1)
    assert patched != raw and csareader.read(patched)["tags"]["NumberOfImagesInMosaic"]["items"] == [99999999]
    ds[0x00291010].value = patched
    path = str(tmp_path / "absurd.dcm")
    ds.save_as(path)
    with pytest.raises(HeaderError, match="NumberOfImagesInMosaic is 99999999"):
        _header(path)
    assert h.mosaic.n_images == N_IMAGES


def test_bad_mosaic_layout_is_an_invalid_header(tmp_path):
    ds = pydicom.dcmread(io.BytesIO(gzip.open(DWI[0]).read()))
    ds.Rows = ds.Columns = 900  # not a multiple of the 7 x 7 grid
    ds.PixelData = bytes(900 * 900 * 2)
    path = str(tmp_path / "bad.dcm")
    ds.save_as(path)
    with pytest.raises(HeaderError, match="invalid header: a 900 x 900 mosaic cannot hold a 7 x 7 grid of 48 images"):
        _header(path)


@pytest.fixture(scope="module")
def converted(patterned, tmp_path_factory):
    """dicomflow over the two .dcm.gz mosaics (4D default and --stacks_3d) and dcm2niix over plain copies."""
    gz_dir = os.path.dirname(patterned[0][0])
    out4, out3 = str(tmp_path_factory.mktemp("out4d")), str(tmp_path_factory.mktemp("out3d"))
    run(["--input", gz_dir, "--output", out4, *RUNNER_ARGS])
    run(["--input", gz_dir, "--output", out3, "--stacks_3d", *RUNNER_ARGS])
    d2n = str(tmp_path_factory.mktemp("dcm2niix"))
    binary = shutil.which("dcm2niix") or os.path.join(os.path.dirname(sys.executable), "dcm2niix")
    subprocess.run([binary, "-z", "n", "-f", "dwi", "-o", d2n, os.path.dirname(patterned[0][1])],
                   check=True, capture_output=True)
    return out4, out3, d2n


def test_dwi_mosaics_become_one_4d_array_with_b_values_and_directions(converted, patterned):
    out4, _, _ = converted
    [row] = read_table(out4, "series").to_pylist()
    assert row["status"] == "converted" and row["n_volumes"] == 2 and row["n_slices"] == N_IMAGES
    assert row["shape"] == [2, N_IMAGES, TILE, TILE] and row["dtype"] == "int16" and row["geometry"] == "regular"
    assert (row["rows"], row["columns"]) == (TILE, TILE)  # the tile, not the mosaic's (0028,0010)
    mosaic_rows = json.load(open(glob.glob(os.path.join(out4, "series", "*.json"))[0]))["tags"]["Rows"]
    assert mosaic_rows > TILE
    volumes = json.loads(row["volumes"])
    assert [v["b_value"] for v in volumes] == [0, 1000]
    assert volumes[0]["diffusion_direction"] is None
    assert np.allclose(volumes[1]["diffusion_direction"], [0.99997449, 0.00505012, -0.00505012])
    group = zarr.open_group(row["zarr_uri"], mode="r")
    assert group["0"].metadata.dimension_names == ("t", "z", "y", "x")
    axes = group.attrs["ome"]["multiscales"][0]["axes"]
    assert [(a["name"], a["type"]) for a in axes] == [("t", "time"), ("z", "space"), ("y", "space"), ("x", "space")]
    assert group.attrs["dicom"]["volumes"] == volumes
    instances = read_table(out4, "instances").to_pylist()
    assert sorted(r["source_uri"] for r in instances) == sorted(p for p, _ in patterned.values())
    slices = list(csv.DictReader(open(row["zarr_uri"].replace("/volumes/", "/slices/").replace(".zarr", ".csv"))))
    assert [(int(r["t_index"]), int(r["z_index"])) for r in slices] == [(t, z) for t in range(2) for z in range(N_IMAGES)]
    assert {r["source_uri"] for r in slices if r["t_index"] == "1"} == {patterned[1000][0]}


def test_4d_array_matches_dcm2niix_voxels_affine_bvals_and_bvecs(converted):
    out4, _, d2n = converted
    [volume] = dicomflow_volumes(out4)
    image = nibabel.load(os.path.join(d2n, "dwi.nii"))
    bvals = [float(v) for v in open(os.path.join(d2n, "dwi.bval")).read().split()]
    assert image.shape == (TILE, TILE, N_IMAGES, 2) and bvals == [0.0, 1000.0]
    assert matches(Nifti(np.asarray(image.dataobj), image.affine, bvals), volume) is None
    assert matches(Nifti(np.asarray(image.dataobj), image.affine, [0.0, 900.0]), volume).startswith("b-values")
    shifted = image.affine.copy()
    shifted[:3, 3] += 0.5  # half a voxel off: another grid
    assert matches(Nifti(np.asarray(image.dataobj), shifted, bvals), volume) == "other grid"
    volume.data[5, 6, 7, 1] += 1
    assert matches(Nifti(np.asarray(image.dataobj), image.affine, bvals), volume) == "voxels differ"
    # .bvec (FSL, image axes; dcm2niix flips the row axis, so y changes sign) from diffusion_direction_image
    bvec = np.loadtxt(os.path.join(d2n, "dwi.bvec"))
    record = json.load(open(glob.glob(os.path.join(out4, "series", "*.json"))[0]))
    ours = np.array([v["diffusion_direction_image"] or [0, 0, 0] for v in record["volumes"]]).T * [[1], [-1], [1]]
    assert np.allclose(bvec, ours, atol=1e-5)


def test_stacks_3d_flag_writes_one_stack_per_volume_each_a_dcm2niix_volume(converted):
    _, out3, d2n = converted
    rows = sorted(read_table(out3, "series").to_pylist(), key=lambda r: r["stack_index"])
    assert [(r["n_volumes"], schemas.stack_attributes_of(r).get("b_value")) for r in rows] == [(1, 0), (1, 1000)]
    image = nibabel.load(os.path.join(d2n, "dwi.nii"))
    data = np.asarray(image.dataobj)
    for t, volume in enumerate(sorted(dicomflow_volumes(out3), key=lambda v: v.key)):
        assert matches(Nifti(data[..., t], image.affine, None), volume) is None


def test_verify_passes_on_the_4d_output(converted):
    from dicom_io import schemas, tables
    from pipelines import verify as verify_job

    out4, _, _ = converted
    verify_job.run(["--output", out4, *RUNNER_ARGS])
    [result] = tables.read_shards(schemas.verify_prefix(out4, schemas.VERIFY_PREFIX), schemas.VERIFY_SCHEMA).to_pylist()
    assert result["status"] == schemas.OK and result["checks_failed"] == 0, result
    assert result["checks_passed"] >= 2 * N_IMAGES * 2  # every plane of both volumes, stored and re-decoded
    assert verify_job.exit_status(["--output", out4]) == 0


def test_previews_of_a_4d_array_name_every_plane_and_the_first_volume_middle(patterned, tmp_path):
    out = str(tmp_path / "out")
    run(["--input", os.path.dirname(patterned[0][0]), "--output", out, "--previews", "all", *RUNNER_ARGS])
    [row] = read_table(out, "series").to_pylist()
    slices = list(csv.DictReader(open(os.path.join(out, "slices", f"{row['series_key']}.csv"))))
    uris = [r["preview_uri"] for r in slices]
    assert len(set(uris)) == 2 * N_IMAGES and all(os.path.exists(u) for u in uris)  # one file per plane
    assert uris[N_IMAGES].endswith(f"{N_IMAGES:05d}.jpg")  # t=1, z=0: planes numbered volume after volume
    middle = str(tmp_path / "middle")
    run(["--input", os.path.dirname(patterned[0][0]), "--output", middle, "--previews", "middle", *RUNNER_ARGS])
    slices = list(csv.DictReader(open(os.path.join(middle, "slices", f"{row['series_key']}.csv"))))
    marked = [(r["t_index"], r["z_index"]) for r in slices if r["preview_uri"]]
    assert marked == [("0", str(N_IMAGES // 2))]
    assert os.path.exists(os.path.join(middle, "previews", f"{row['series_key']}_montage.jpg"))


def _bvec_world(bvec: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """FSL .bvec columns (voxel axes, i negated when det > 0) as RAS unit directions."""
    axes = affine_ras[:3, :3] / np.linalg.norm(affine_ras[:3, :3], axis=0)
    voxel = bvec * ([[-1.0], [1.0], [1.0]] if np.linalg.det(affine_ras[:3, :3]) > 0 else 1.0)
    return axes @ voxel


def test_nifti_export_of_the_dwi_writes_dcm2niix_voxels_affine_bval_and_bvec(converted, tmp_path):
    from benchmarks.crosscheck_dcm2niix import Volume
    from dicom_io import schemas
    from pipelines import export

    out4, _, d2n = converted
    to = str(tmp_path / "nifti")
    export.run(["--output", out4, "--to", to, "--format", "nifti", *RUNNER_ARGS])
    [path] = glob.glob(os.path.join(to, "*.nii.gz"))
    stem = path.removesuffix(".nii.gz")
    ours, reference = nibabel.load(path), nibabel.load(os.path.join(d2n, "dwi.nii"))
    bvals = open(stem + ".bval").read().split()
    assert bvals == open(os.path.join(d2n, "dwi.bval")).read().split() == ["0", "1000"]
    # same voxels on the same grid (dcm2niix's NIfTI has the row axis flipped: a signed permutation), 1e-3 mm
    volume = Volume("ours", np.asarray(ours.dataobj), ours.affine, [float(b) for b in bvals])
    assert ours.shape == reference.shape == (TILE, TILE, N_IMAGES, 2)
    assert matches(Nifti(np.asarray(reference.dataobj), reference.affine, [0.0, 1000.0]), volume) is None
    bvec, reference_bvec = np.loadtxt(stem + ".bvec"), np.loadtxt(os.path.join(d2n, "dwi.bvec"))
    assert bvec.shape == reference_bvec.shape == (3, 2)
    assert np.array_equal(bvec[:, 0], [0, 0, 0]) and np.array_equal(reference_bvec[:, 0], [0, 0, 0])  # b = 0
    # the same gradient in the world, each file's .bvec read in its own voxel axes with FSL's i rule ...
    world = _bvec_world(bvec, ours.affine)
    np.testing.assert_allclose(world, _bvec_world(reference_bvec, reference.affine), atol=1e-4)
    # ... which is the DICOM (0019,100E) direction (LPS) in RAS
    [record] = [json.load(open(p)) for p in glob.glob(os.path.join(out4, "series", "*.json"))]
    lps = np.array(record["volumes"][1]["diffusion_direction"])
    np.testing.assert_allclose(world[:, 1], lps * [-1, -1, 1], atol=1e-4)
    # in numbers: ours is along (column, row, slice) with det > 0 (i negated), dcm2niix's along (column, -row,
    # slice) with det < 0, so the two files differ in the sign of their first two rows
    assert np.linalg.det(ours.affine[:3, :3]) > 0 > np.linalg.det(reference.affine[:3, :3])
    np.testing.assert_allclose(bvec, reference_bvec * [[-1], [-1], [1]], atol=1e-4)
    assert schemas.nifti_uri(to, record["series_key"]) == path


def test_crosscheck_accepts_dcm2niix_float32_philips_scaling_only_within_its_bound():
    """dcm2niix stores Philips FP as integers with scl_slope = FP(1) - FP(0) rounded in float32
    (IM_0027_fMAP's field map: 0.24420166 for the exact 0.24420024). The crosscheck calls such an
    output a match only when every voxel is within that float32 error; one voxel off by more is not."""
    from benchmarks.crosscheck_dcm2niix import Volume

    f32 = np.float32
    rs, ri, ss = f32(0.24420024420024), f32(-500.0), f32(4.095000267028809)

    def fp(pv):  # dcm2niix's PhilipsPreciseVal, in float32
        return f32(f32(f32(pv) * rs + ri) / f32(rs * ss))

    inter, slope = fp(0), f32(fp(1) - fp(0))
    stored = np.arange(4096, dtype=np.int16).reshape(16, 16, 16)  # x, y, z
    theirs = stored.astype(np.float64) * float(slope) + float(inter)
    exact = (stored.astype(np.float64) * float(rs) + float(ri)) / (float(rs) * float(ss))
    assert np.abs(theirs - exact).max() > 1e-3  # dcm2niix's value is visibly off...
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nifti = Nifti(theirs, affine, None, stored, float(slope), float(inter))
    ours = Volume("k", exact.astype(np.float32), affine, None)  # dicomflow's FP, float32
    why = matches(nifti, ours)
    assert why is not None and why.startswith("scaling:")  # ...but within its own rounding
    ours.data[3, 4, 5] += 0.5
    assert matches(nifti, ours) == "voxels differ"
    assert matches(Nifti(theirs, affine, None), Volume("k", exact.astype(np.float32), affine, None)) == "voxels differ"
