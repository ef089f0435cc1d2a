"""--previews: per-slice and middle/montage images, naming, windowing, MONOCHROME1."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

from dicom_io import schemas
from dicom_io.render import PANEL_GAP
from dicom_io.tables import read_table
from pipelines.convert import run
from tests import synthetic
from tests.conftest import RUNNER_ARGS


def _slices(out: str, key: str) -> list[dict]:
    with open(schemas.slices_csv_uri(out, key)) as fh:
        return list(csv.DictReader(fh))


def _converted(out: str) -> list[dict]:
    return [r for r in read_table(out, "series").to_pylist() if r["status"] == "converted"]


def test_all_writes_one_image_per_slice_named_by_key_and_z(corpus, tmp_path):
    out = str(tmp_path / "out")
    run(["--input", corpus.root, "--output", out, "--previews", "all", *RUNNER_ARGS])
    for row in _converted(out):
        slices = _slices(out, row["series_key"])
        assert [s["preview_uri"] for s in slices] == [
            os.path.join(out, "previews", row["series_key"], f"{z:05d}.jpg") for z in range(len(slices))]
        image = Image.open(slices[0]["preview_uri"])
        assert image.format == "JPEG" and image.mode == "L" and image.size == (64, 64)


def test_middle_slice_and_montage_with_the_physical_aspect_ratio(corpus, tmp_path):
    out = str(tmp_path / "out")
    run(["--input", corpus.root, "--output", out, "--previews", "middle", "--preview_format", "png", *RUNNER_ARGS])
    uid = next(u for u, e in corpus.expected.items() if e["kind"] == "regular" and e["spec"].iop == synthetic.AXIAL_IOP)
    row = next(r for r in _converted(out) if r["series_instance_uid"] == uid)
    key, spec = row["series_key"], corpus.expected[uid]["spec"]
    slices = _slices(out, key)
    middle = os.path.join(out, "previews", f"{key}.png")
    assert [s["preview_uri"] for s in slices if s["preview_uri"]] == [middle]
    assert slices[len(slices) // 2]["preview_uri"] == middle
    montage = Image.open(os.path.join(out, "previews", f"{key}_montage.png"))
    # axial 64 x 64 px of 3.906 mm, 20 slices of 2.5 mm: panels 250 x 250 mm, 250 x 50 mm, 250 x 50 mm,
    # drawn at one scale (the tallest panel is 256 px): widths 256 + 256 + 256 and gaps
    ny, sy, nz, sz = spec.rows, spec.pixel_spacing[0], len(spec.positions), 2.5
    scale = 256 / max(ny * sy, nz * sz)
    assert montage.size == (pytest.approx(3 * ny * sy * scale + 2 * PANEL_GAP, abs=3), 256)
    coronal = np.asarray(montage)[:, 256 + PANEL_GAP + 128]  # the centre column of the coronal panel
    assert (coronal > 0).sum() == pytest.approx(nz * sz * scale, abs=3)  # 50 mm of tissue tall, not 64 px


def test_monochrome1_previews_are_inverted(tmp_path):
    spec = synthetic.SeriesSpec(
        series_uid=synthetic.uid_from("prev-m1"), study_uid=synthetic.uid_from("prev-study"), patient_id="P",
        modality="CT", positions=synthetic.axial_positions(1, 1.0), iop=synthetic.AXIAL_IOP,
        pixel_spacing=(7.8, 7.8), rows=32, cols=32)  # the phantom is ~250 mm wide
    twin = synthetic.SeriesSpec(**{**spec.__dict__, "series_uid": synthetic.uid_from("prev-m2")})
    same = synthetic.slice_pixels(spec, 0, 1)  # identical stored values in both files
    synthetic.write_variant(tmp_path / "in" / "m1", spec, 0, seed=1, variant="monochrome1", pixels=same)
    synthetic.write_instance(tmp_path / "in" / "m2", twin, 0, seed=1, pixels=same)
    out = str(tmp_path / "out")
    run(["--input", str(tmp_path / "in"), "--output", out, "--previews", "all", "--preview_format", "png",
         *RUNNER_ARGS])
    images = {r["series_instance_uid"]: np.asarray(Image.open(_slices(out, r["series_key"])[0]["preview_uri"]))
              for r in _converted(out)}
    m1, m2 = images[spec.series_uid], images[twin.series_uid]
    assert np.array_equal(m1, 255 - m2) and m2.std() > 0


def test_naming_by_sop_uid_and_by_a_manifest_column(corpus, tmp_path):
    regular = [p for e in corpus.expected.values() if e["kind"] == "regular" for p in e["files"]]
    manifest = tmp_path / "extract.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["instance_id", "local_file_path"])
        writer.writerows([f"0000{i:04d}-aaaa-bbbb-cccc-{i:012d}", p] for i, p in enumerate(regular))
    by_manifest = str(tmp_path / "by-manifest")
    run(["--input", str(manifest), "--manifest_column", "local_file_path", "--preview_naming",
         "manifest:instance_id", "--output", by_manifest, "--previews", "all", *RUNNER_ARGS])
    names = sorted(os.listdir(os.path.join(by_manifest, "previews")))
    assert names == sorted(f"0000{i:04d}-aaaa-bbbb-cccc-{i:012d}.jpg" for i in range(len(regular)))
    by_sop = str(tmp_path / "by-sop")
    run(["--input", corpus.root, "--output", by_sop, "--previews", "all", "--preview_naming", "sop", *RUNNER_ARGS])
    rows = [r for row in _converted(by_sop) for r in _slices(by_sop, row["series_key"])]
    assert all(r["preview_uri"] == os.path.join(by_sop, "previews", f"{r['sop_instance_uid']}.jpg") for r in rows)
    assert len(os.listdir(os.path.join(by_sop, "previews"))) == len(rows)
