"""By-hand shards: convert each manifest shard into one OUT, then pipelines.aggregate: the summary tables
describe every shard's files exactly once, equal as sets of rows to one run over all the shards' files."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter

import pytest

from dicom_io import aggregate, schemas
from dicom_io.tables import read_table
from pipelines import aggregate as aggregate_job
from pipelines.convert import run as convert
from pipelines.manifest import run as manifest
from tests.conftest import RUNNER_ARGS, all_files

N_SHARDS = 3


def _rows(out: str, name: str) -> list[str]:
    """Rows as sorted JSON texts, OUT's own prefix replaced (the two runs write to different roots)."""
    return sorted(json.dumps(r, sort_keys=True, default=str).replace(out, "OUT") for r in read_table(out, name).to_pylist())


def _uris(shard_csv: str) -> list[str]:
    with open(shard_csv, newline="") as fh:
        return [row["uri"] for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def sharded(corpus, tmp_path_factory):
    listed = str(tmp_path_factory.mktemp("manifest"))
    manifest(["--input", corpus.root, "--output", listed, "--num_shards", str(N_SHARDS), *RUNNER_ARGS])
    shards = [schemas.shard_csv_uri(listed, i) for i in range(N_SHARDS)]
    assert all(_uris(s) for s in shards)
    out = str(tmp_path_factory.mktemp("sharded"))
    for shard in shards:
        convert(["--input", shard, "--output", out, *RUNNER_ARGS])
    # without aggregate the summary is the last shard's only
    assert Counter(r["source_uri"] for r in read_table(out, "instances").to_pylist()) == Counter(_uris(shards[-1]))
    aggregate_job.run(["--output", out, *RUNNER_ARGS])
    whole = tmp_path_factory.mktemp("whole")
    every = str(whole / "series_all.csv")
    with open(every, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(schemas.SHARD_COLUMNS)
        for shard in shards:
            with open(shard, newline="") as src:
                writer.writerows(list(csv.reader(src))[1:])
    reference = str(whole / "out")
    convert(["--input", every, "--output", reference, *RUNNER_ARGS])
    return shards, out, reference


def test_every_shard_file_is_in_the_instances_table_exactly_once(sharded):
    shards, out, _ = sharded
    expected = Counter(uri for shard in shards for uri in _uris(shard))
    assert Counter(r["source_uri"] for r in read_table(out, "instances").to_pylist()) == expected
    assert sorted(os.listdir(os.path.join(out, "summary", "parts"))) == [f"series_shard_{i:02d}" for i in range(N_SHARDS)]


def test_aggregated_tables_equal_one_run_over_all_shards(sharded):
    _, out, reference = sharded
    for name in ("series", "instances"):
        assert _rows(out, name) == _rows(reference, name), name
    converted = [r for r in read_table(out, "series").to_pylist() if r["status"] == "converted"]
    assert converted and all(os.path.exists(schemas.series_json_uri(out, r["series_key"])) for r in converted)


def test_rerunning_a_shard_and_aggregating_again_gives_the_same_bytes(sharded):
    shards, out, _ = sharded
    summary = [p for p in all_files(os.path.join(out, "summary")) if os.sep + "parts" + os.sep not in p]
    before = {p: open(p, "rb").read() for p in summary}
    convert(["--input", shards[1], "--output", out, *RUNNER_ARGS])
    aggregate_job.run(["--output", out, *RUNNER_ARGS])
    assert {p: open(p, "rb").read() for p in summary} == before


def test_pick_prefers_converted_then_the_later_part():
    rows = [{"status": "failed", "_part": "b", "x": 1}, {"status": "converted", "_part": "a", "x": 2},
            {"status": "converted", "_part": "c", "x": 3}]
    assert aggregate.pick(rows) == {"status": "converted", "x": 3}
    assert aggregate.default_part("gs://b/m/shards/series_shard_07.csv") == "series_shard_07"
    assert aggregate.default_part("/data/manifest.csv") is None
    with pytest.raises(ValueError):
        aggregate.check_part("../x")


def test_aggregate_without_parts_is_refused(converted):
    with pytest.raises(SystemExit, match="no summary/parts"):
        aggregate_job.run(["--output", converted, *RUNNER_ARGS])


def test_aggregate_on_gs(gcs, sharded):
    _, out, _ = sharded
    remote = gcs.upload_tree(os.path.join(out, "summary", "parts"), "aggregate-out/summary/parts")
    root = remote.rsplit("/summary/parts", 1)[0]
    aggregate_job.run(["--output", root, *RUNNER_ARGS])
    for name in ("series", "instances"):
        assert sorted(json.dumps(r, sort_keys=True, default=str) for r in read_table(root, name).to_pylist()) == \
            sorted(json.dumps(r, sort_keys=True, default=str) for r in read_table(out, name).to_pylist())
