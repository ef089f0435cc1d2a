"""End to end: pipelines.verify over converted outputs (clean, resampled, corrupted, sampled), and its report in Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from dicom_io import schemas, storage, verify, tables
from dicom_io.tables import read_table
from pipelines import verify as verify_job
from pipelines.convert import run as convert
from tests import synthetic
from tests.conftest import RUNNER_ARGS
from tests.test_report_html import assert_not_blank, dump_dom, needs_chromium, parse_dom, screenshot

SEED = 11
ORIGIN = (-64.0, -64.0, 0.0)  # 32 x 4 mm over the synthetic body: thumbnails show its structures


def _positions(n: int, spacing: float) -> list:
    return synthetic.axial_positions(n, spacing, origin=ORIGIN)


def _spec(name: str, **changes) -> synthetic.SeriesSpec:
    fields = dict(series_uid=synthetic.uid_from("verify", name), study_uid=synthetic.uid_from("verify-study"),
                  patient_id="VERIFY", modality="CT", positions=_positions(6, 2.0),
                  iop=synthetic.AXIAL_IOP, pixel_spacing=(4.0, 4.0), rows=32, cols=32, slice_thickness=2.0)
    fields.update(changes)
    return synthetic.SeriesSpec(**fields)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> str:
    """The mixed corpus plus a tilted stack, MONOCHROME1, RGB, a radiograph and an enhanced (multi-frame) MR."""
    root = tmp_path_factory.mktemp("verify-pipeline-in")
    synthetic.make_corpus(root / "mixed", seed=SEED, rows=24, cols=24)
    tilted = _spec("tilted", positions=[(-64.0, -64.0 + 0.8 * k, 2.0 * k) for k in range(6)])
    synthetic.write_series(root / "tilted", tilted, seed=SEED)
    for variant in ("monochrome1", "rgb", "dx"):
        spec = _spec(variant, positions=_positions(1 if variant == "dx" else 3, 2.0))
        for i in range(len(spec.positions)):
            synthetic.write_variant(root / variant / f"{i:03d}", spec, i, seed=SEED, variant=variant)
    os.makedirs(root / "enhanced")
    # one echo: with two, convert lists the file once per echo stack (see the report on issue 6)
    synthetic.write_enhanced_mr(root / "enhanced" / "multi.dcm",
                                _spec("enhanced", modality="MR", intercept=0.0, positions=_positions(4, 3.0)),
                                (12.0,), seed=SEED)
    return str(root)


def _converted(root: str, out: str, *flags: str) -> str:
    convert(["--input", root, "--output", out, *flags, *RUNNER_ARGS])
    return out


@pytest.fixture(scope="module")
def verified(corpus_root, tmp_path_factory) -> str:
    out = _converted(corpus_root, str(tmp_path_factory.mktemp("verify-pipeline-out")))
    verify_job.run(["--output", out, *RUNNER_ARGS])
    return out


def _verify_rows(out: str) -> dict[str, dict]:
    table = tables.read_shards(schemas.verify_prefix(out, schemas.VERIFY_PREFIX), schemas.VERIFY_SCHEMA)
    return {r["series_key"]: r for r in table.to_pylist()}


def _file_rows(out: str) -> list[dict]:
    return tables.read_shards(schemas.verify_prefix(out, schemas.VERIFY_FILES_PREFIX),
                                schemas.VERIFY_FILES_SCHEMA).to_pylist()


def test_every_converted_series_is_checked_and_passes(verified):
    series = read_table(verified, "series").to_pylist()
    converted = {r["series_key"] for r in series if r["status"] == "converted"}
    rows = _verify_rows(verified)
    assert set(rows) == converted and len(converted) >= 9
    assert {r["geometry"] for r in rows.values()} >= {"regular", "irregular_spacing", "tilted", "single_slice"}
    for key, row in rows.items():
        assert row["status"] == "ok" and row["checks_failed"] == 0 and row["failures"] == [], (key, row["failures"])
        assert row["thumbnails"] and all(storage.exists(schemas.thumbnail_uri(verified, n)) for n in row["thumbnails"])
    assert _file_rows(verified) == []
    assert verify_job.exit_status(["--output", verified]) == 0
    shard = os.path.join(verified, "verify", "verify", "verify-00000-of-00001.parquet")
    assert pq.read_table(shard).schema.names == schemas.VERIFY_SCHEMA.names


def test_resampled_volumes_verify_too(corpus_root, tmp_path):
    out = _converted(corpus_root, str(tmp_path / "out"), "--tilt", "resample", "--irregular", "resample")
    verify_job.run(["--output", out, *RUNNER_ARGS])
    rows = _verify_rows(out)
    assert rows and all(r["status"] == "ok" for r in rows.values()), [r["failures"] for r in rows.values()]
    records = {k: json.loads(storage.read_bytes(schemas.series_json_uri(out, k))) for k in rows}
    resampled = {k for k, r in records.items() if r.get("resampled_from")}
    assert {records[k]["resampled_from"] for k in resampled} == {"tilted", "irregular_spacing"}
    for key in resampled:  # interpolated planes: every source decode-checked, each plane placed by the affine
        n_files, n_slices = records[key]["n_source_files"], records[key]["n_slices"]
        assert rows[key]["geometry"] == "regular" and rows[key]["checks_passed"] >= n_files + 2 * n_slices


@needs_chromium
def test_the_report_in_a_browser_matches_the_tables(verified, tmp_path):
    report = schemas.report_uri(verified)
    instances = read_table(verified, "instances").to_pylist()
    rows = _verify_rows(verified)
    dom = parse_dom(dump_dom(report, tmp_path))
    totals = dom.totals()
    assert totals["series_checked"] == totals["series_ok"] == len(rows) and totals["series_failed"] == 0
    for status, n in Counter(r["status"] for r in instances).items():
        assert totals[f"instances_{status}"] == n
    assert totals["files_failed"] == sum(1 for r in instances if r["status"] == "failed") == len(dom.tables["failed-files"])
    assert {a["data-series-key"] for a in dom.row_attrs["series"]} == set(rows)
    assert dom.ids["verdict"]["data-status"] == "ok" and len(dom.images) == 2 * len(rows)
    image = screenshot(report, tmp_path, "1400,2000")
    assert_not_blank(image)
    image.save(os.path.join(str(tmp_path), "clean-report.png"))


def _corrupt(out: str) -> tuple[str, str, str]:
    """Change one value of one stored slice, and list one file twice in the instances table.

    Returns the changed series' key, the doubled file and the series that file belongs to."""
    rows = sorted(read_table(out, "series").to_pylist(), key=lambda r: r["series_key"])
    key = next(r["series_key"] for r in rows if r["status"] == "converted" and r["geometry"] == "regular")
    volume = zarr.open_group(schemas.zarr_uri(out, key), mode="r+")["0"]
    plane = volume[1]
    plane[0, 0] += 1
    volume[1] = plane
    [shard] = storage.glob(schemas.table_prefix(out, schemas.SUMMARY_INSTANCES_PREFIX) + "-*.parquet")
    table = pq.read_table(shard)
    doubled = pa.concat_tables([table, table.slice(0, 1)])
    buffer = io.BytesIO()
    pq.write_table(doubled, buffer)
    storage.write_bytes(shard, buffer.getvalue())
    return key, table.column("source_uri")[0].as_py(), table.column("series_key")[0].as_py()


@needs_chromium
def test_a_corrupted_output_fails_and_the_report_says_where(verified, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(verified, out)
    key, doubled, doubled_key = _corrupt(out)
    assert doubled_key and doubled_key != key
    verify_job.run(["--output", out, "--report", str(tmp_path / "report.html"), *RUNNER_ARGS])
    rows = _verify_rows(out)
    assert sorted(k for k, r in rows.items() if r["status"] == "failed") == sorted([key, doubled_key])
    assert rows[key]["failures"] == [rows[key]["failures"][0]]
    assert rows[key]["failures"][0].startswith("volume: z=1: stored slice MD5")
    assert rows[doubled_key]["failures"] == [f"instances: {doubled}: 2 instances rows"]
    assert [(r["source_uri"], r["check"]) for r in _file_rows(out)] == [(doubled, "duplicate")]
    assert verify_job.exit_status(["--output", out]) == 1
    dom = parse_dom(dump_dom(str(tmp_path / "report.html"), tmp_path))
    assert dom.ids["verdict"]["data-status"] == "failed"
    assert dom.totals()["series_failed"] == 2 and dom.totals()["file_failures"] == 1
    assert {a["data-series-key"] for a in dom.row_attrs["series"][:2]} == {key, doubled_key}  # failures first
    assert sorted((r[0], r[1]) for r in dom.tables["failures"]) == sorted([(key, "volume"), (doubled_key, "instances")])
    assert dom.tables["file-failures"][0][::2] == [doubled, "duplicate"]
    image = screenshot(str(tmp_path / "report.html"), tmp_path, "1400,2000")
    assert_not_blank(image)
    image.save(os.path.join(str(tmp_path), "failed-report.png"))


def test_sample_checks_n_series_chosen_by_the_seed(verified, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(verified, out)
    shutil.rmtree(os.path.join(out, "verify"))
    converted = [r["series_key"] for r in read_table(out, "series").to_pylist() if r["status"] == "converted"]
    expected = sorted(converted, key=lambda k: verify.sample_rank(k, 5))[:3]
    verify_job.run(["--output", out, "--sample", "3", "--seed", "5", "--report_thumbnails", "1", *RUNNER_ARGS])
    assert sorted(_verify_rows(out)) == sorted(expected)
    html = storage.read_bytes(schemas.report_uri(out)).decode()
    assert "a sample of 3 converted series (seed 5)" in html
    assert len(parse_dom(html).images) == 2  # thumbnails embedded for one series only


def test_validate_refuses_an_output_without_summary(tmp_path):
    with pytest.raises(SystemExit, match="holds no summary"):
        verify_job.run(["--output", str(tmp_path), *RUNNER_ARGS])
    with pytest.raises(SystemExit, match="--output required"):
        verify_job.run([*RUNNER_ARGS])


def test_verify_tables_are_cut_at_rows_per_shard_and_the_report_still_counts_everything(verified, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(verified, out)
    verify_job.run(["--output", out, "--rows_per_shard", "2", "--report_thumbnails", "0", *RUNNER_ARGS])
    shards = sorted(f for f in os.listdir(os.path.join(out, "verify", "verify")) if f.startswith("verify-"))
    sizes = [pq.read_metadata(os.path.join(out, "verify", "verify", f)).num_rows for f in shards]
    assert len(shards) >= sum(sizes) / 2 and max(sizes) <= 2 and all(f.endswith(f"-of-{len(shards):05d}.parquet")
                                                                        for f in shards)
    assert _verify_rows(out).keys() == _verify_rows(verified).keys()  # the union: every series, once
    totals = parse_dom(storage.read_bytes(schemas.report_uri(out)).decode()).totals()
    assert totals["series_checked"] == totals["series_ok"] == sum(sizes)
