"""dicom_io.tables and transforms.tables: shard counts planned from the rows, deterministic bytes,
and the 5,000-file manifest run cut into shards of at most --rows_per_shard rows."""

from __future__ import annotations

import glob
import os
import random
import re

import pyarrow.parquet as pq
import pytest

from dicom_io import schemas, tables
from pipelines import convert as convert_job
from pipelines import manifest as manifest_job
from tests import synthetic
from tests.conftest import RUNNER_ARGS


# ---- the plan -------------------------------------------------------------------------------------

def _counts(keys) -> dict[int, int]:
    counts: dict[int, int] = {}
    for key in keys:
        bucket = tables.bucket_of_key(key)
        counts[bucket] = counts.get(bucket, 0) + 1
    return counts


@pytest.mark.parametrize("n_rows,cap", [(0, 10), (1, 10), (10, 10), (11, 10), (5000, 1000), (12345, 777)])
def test_plan_keeps_every_shard_under_the_cap_with_few_shards(n_rows, cap):
    keys = [f"/archive/{i:06d}.dcm" for i in range(n_rows)]
    plan = tables.plan_shards(_counts(keys), cap)
    sizes = [0] * plan.num_shards
    for key in keys:
        sizes[plan.shard_of(key)] += 1
    assert max(sizes) <= cap and sum(sizes) == n_rows
    assert -(-n_rows // cap) <= plan.num_shards <= max(1, 2 * -(-n_rows // cap))
    assert all(sizes) or n_rows == 0  # no empty shard but the one of an empty table


def test_plan_depends_only_on_the_rows():
    keys = [f"k{i}" for i in range(3000)]
    shuffled = random.Random(1).sample(keys, len(keys))
    assert tables.plan_shards(_counts(keys), 100) == tables.plan_shards(_counts(shuffled), 100)
    assert tables.plan_shards({}, 5) == tables.ShardPlan(1)
    with pytest.raises(ValueError):
        tables.plan_shards({}, 0)


def test_a_forced_plan_is_the_old_modulo():
    plan = tables.forced_plan(7)
    assert plan.num_shards == 7 and all(plan.shard_of(f"k{i}") == tables.shard_of_key(f"k{i}", 7) for i in range(100))


# ---- 5,000 files, --rows_per_shard 1000 ------------------------------------------------------------

N_FILES = 5000


@pytest.fixture(scope="module")
def scale_corpus(tmp_path_factory) -> synthetic.Corpus:
    """5,000 tiny one-slice series (8x8 pixels) in 16 folders: 5,000 instance rows, 5,000 series rows."""
    return synthetic.make_scale_corpus(tmp_path_factory.mktemp("scale"), N_FILES, slices_per_series=1)


def _shards(out: str, name: str, ext: str = "parquet") -> list[str]:
    return sorted(glob.glob(os.path.join(out, name, f"{name}-*.{ext}")))  # contract 2: a folder per table


def _rows(files: list[str]) -> list[dict]:
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_manifest_tables_are_cut_at_rows_per_shard_and_union_to_the_one_shard_run(scale_corpus, tmp_path):
    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    manifest_job.run(["--input", scale_corpus.root, "--output", one, "--table_shards", "1", *RUNNER_ARGS])
    manifest_job.run(["--input", scale_corpus.root, "--output", many, "--rows_per_shard", "1000", *RUNNER_ARGS])
    for name, key in ((schemas.MANIFEST_INSTANCES_PREFIX, "uri"), (schemas.MANIFEST_SERIES_PREFIX, "series_key")):
        files = _shards(many, name)
        sizes = [pq.read_metadata(f).num_rows for f in files]
        assert len(files) >= 5 and max(sizes) <= 1000 and sum(sizes) == N_FILES, (name, sizes)
        assert all(re.search(rf"-{i:05d}-of-{len(files):05d}\.parquet$", f) for i, f in enumerate(files))
        whole = _rows(_shards(one, name))
        assert len(_shards(one, name)) == 1
        assert sorted(_rows(files), key=lambda r: r[key]) == sorted(whole, key=lambda r: r[key])
        # rows sorted within each shard
        for f in files:
            keys = pq.read_table(f, columns=[key]).column(key).to_pylist()
            assert keys == sorted(keys)


def test_the_same_input_gives_the_same_shard_bytes_and_stale_shards_go(tmp_path):
    corpus = synthetic.make_scale_corpus(tmp_path / "in", 600, slices_per_series=3)
    out = str(tmp_path / "out")
    args = ["--input", corpus.root, "--output", out, *RUNNER_ARGS]
    manifest_job.run([*args, "--table_shards", "3"])
    assert len(_shards(out, schemas.MANIFEST_INSTANCES_PREFIX)) == 3
    manifest_job.run([*args, "--rows_per_shard", "150"])
    first = {f: open(f, "rb").read() for f in _shards(out, schemas.MANIFEST_INSTANCES_PREFIX)}
    assert len(first) >= 4 and all(f.endswith(f"-of-{len(first):05d}.parquet") for f in first)  # 3-shard files gone
    manifest_job.run([*args, "--rows_per_shard", "150", "--direct_running_mode", "multi_processing",
                      "--direct_num_workers", "2"])
    again = {f: open(f, "rb").read() for f in _shards(out, schemas.MANIFEST_INSTANCES_PREFIX)}
    assert again == first


def test_convert_tables_of_rejected_files_are_cut_too(tmp_path):
    archive = tmp_path / "in"
    archive.mkdir()
    for i in range(60):
        (archive / f"note-{i:03d}.txt").write_bytes(b"not a dicom file %d" % i)
    out = str(tmp_path / "out")
    convert_job.run(["--input", str(archive), "--output", out, "--rows_per_shard", "10", *RUNNER_ARGS])
    files = _shards(os.path.join(out, schemas.SUMMARY_DIR), schemas.SUMMARY_INSTANCES_PREFIX)
    sizes = [pq.read_metadata(f).num_rows for f in files]
    assert len(files) >= 6 and max(sizes) <= 10 and sum(sizes) == 60
    series = _shards(os.path.join(out, schemas.SUMMARY_DIR), schemas.SUMMARY_SERIES_PREFIX)
    assert [os.path.basename(f) for f in series] == [f"{schemas.SUMMARY_SERIES_PREFIX}-00000-of-00001.parquet"]
