"""Output contract 2: one folder per table, so DuckDB and polars read any table by a glob of its folder."""

from __future__ import annotations

import json
import os
import shutil

import duckdb
import numpy as np
import polars as pl
import pytest

from dicom_io import schemas, storage, tables
from pipelines import manifest as manifest_job
from pipelines import verify as verify_job
from tests.conftest import RUNNER_ARGS, all_files


def _one(sql: str):
    """The single row of a DuckDB query (duckdb 2: relations keep no result, so fetchall)."""
    [row] = duckdb.sql(sql).fetchall()
    return row


def _glob(prefix: str, ext: str = "parquet") -> str:
    return os.path.join(os.path.dirname(prefix), f"*.{ext}")


def _check_parquet_folder(prefix: str, schema, expected_rows: int) -> None:
    pattern = _glob(prefix)
    assert sorted(storage.glob(pattern)) == sorted(storage.glob(prefix + "-*.parquet"))  # the folder holds one table
    count, = _one(f"SELECT count(*) FROM read_parquet('{pattern}')")
    names = [row[0] for row in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{pattern}')").fetchall()]
    frame = pl.read_parquet(pattern)
    assert count == frame.height == expected_rows > 0
    assert names == frame.columns == schema.names
    for field in schema:
        if field.type == schemas.pa.string():
            assert frame.schema[field.name] == pl.String, field.name
        elif schemas.pa.types.is_int64(field.type):
            assert frame.schema[field.name] == pl.Int64, field.name


def test_summary_tables_each_in_a_folder(converted):
    for name, schema in tables.SCHEMAS.items():
        prefix = schemas.table_prefix(converted, name)
        assert prefix == os.path.join(converted, "summary", name, name)
        _check_parquet_folder(prefix, schema, tables.read_table(converted, name).num_rows)
    assert not [f for f in os.listdir(os.path.join(converted, "summary")) if f.endswith(".parquet")]


def test_verify_tables_each_in_a_folder(converted, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(converted, out)
    verify_job.run(["--output", out, "--report_thumbnails", "0", *RUNNER_ARGS])
    prefix = schemas.verify_prefix(out, schemas.VERIFY_PREFIX)
    rows = tables.read_shards(prefix, schemas.VERIFY_SCHEMA).num_rows
    assert rows == len([r for r in tables.read_table(out, "series").to_pylist() if r["status"] == "converted"])
    _check_parquet_folder(prefix, schemas.VERIFY_SCHEMA, rows)


@pytest.fixture(scope="module")
def manifests(corpus, tmp_path_factory):
    outs = [str(tmp_path_factory.mktemp(f"manifest{i}")) for i in range(2)]
    for out in outs:
        manifest_job.run(["--input", corpus.root, "--output", out, "--num_shards", "2", *RUNNER_ARGS])
    return outs


def test_manifest_tables_each_in_a_folder(manifests, corpus):
    out = manifests[0]
    files = len([f for f in all_files(corpus.root)])
    instances = schemas.manifest_prefix(out, schemas.MANIFEST_INSTANCES_PREFIX)
    _check_parquet_folder(instances, schemas.MANIFEST_INSTANCES_SCHEMA, files)
    series = schemas.manifest_prefix(out, schemas.MANIFEST_SERIES_PREFIX)
    _check_parquet_folder(series, schemas.MANIFEST_SERIES_SCHEMA, tables.read_shards(series, schemas.MANIFEST_SERIES_SCHEMA).num_rows)
    unreadable = _glob(schemas.manifest_prefix(out, schemas.UNREADABLE_PREFIX), "csv")
    count, = _one(f"SELECT count(*) FROM read_csv('{unreadable}', header=true)")
    frame = pl.read_csv(unreadable)
    readable, = _one(f"SELECT count(*) FROM read_parquet('{_glob(instances)}') WHERE readable")
    assert count == frame.height == files - readable > 0 and frame.columns == list(schemas.UNREADABLE_COLUMNS)


def test_two_identical_manifest_runs_give_byte_identical_files(manifests):
    first, second = manifests

    def contents(root):
        return {os.path.relpath(f, root): open(f, "rb").read() for f in all_files(root) if "_dicomflow.lock" not in f}

    a, b = contents(first), contents(second)
    assert a.keys() == b.keys() and any(k.startswith("unreadable" + os.sep) for k in a)
    assert a == b


def test_a_rerun_removes_the_contract_1_shards_beside_the_folder(tmp_path):
    prefix = schemas.table_prefix(str(tmp_path), "series")
    os.makedirs(os.path.dirname(prefix))
    legacy = str(tmp_path / "summary" / "series-00000-of-00001.parquet")
    open(legacy, "wb").write(b"old")
    tables.write_shard_file(prefix, "parquet", 0, 1, b"new")
    assert not os.path.exists(legacy) and open(prefix + "-00000-of-00001.parquet", "rb").read() == b"new"


def test_series_table_types_read_by_duckdb_and_polars(converted):
    pattern = os.path.join(converted, "summary", "series", "*.parquet")
    types = {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{pattern}')").fetchall()}
    assert types["study_date"] == "DATE" and types["series_date"] == "DATE"
    # Parquet has no fixed-size list: DuckDB sees lists; the 4 x 4 sizes live in the Arrow schema (pyarrow, polars)
    assert types["affine_lps"] == "DOUBLE[][]" and types["stack_attributes"] == "MAP(VARCHAR, VARCHAR)"
    sizes = _one(f"SELECT min(len(affine_lps)), max(len(affine_lps[4])) FROM read_parquet('{pattern}')")
    assert sizes == (4, 4)
    frame = pl.read_parquet(pattern)
    assert frame.schema["study_date"] == pl.Date
    assert frame.schema["affine_lps"] == pl.Array(pl.Float64, (4, 4))
    rows = {r["series_key"]: r for r in tables.read_table(converted, "series").to_pylist()}
    for key, row in rows.items():
        if row["status"] != "converted":
            continue
        record = json.loads(open(schemas.series_json_uri(converted, key)).read())
        if record["affine_lps"] is None:
            assert np.isnan(row["affine_lps"]).all()  # NaN without geometry (a null fixed-size list does not round-trip)
        else:
            assert row["affine_lps"] == record["affine_lps"]
        assert schemas.stack_attributes_of(row) == record["stack_attributes"]
        assert record["provenance"]["contract_version"] == schemas.CONTRACT_VERSION
        with open(schemas.slices_csv_uri(converted, key)) as fh:
            header, first = fh.readline().strip().split(","), fh.readline().strip().split(",")
        assert header == list(schemas.SLICE_COLUMNS) and first[header.index("series_key")] == key
    dated = [r for r in rows.values() if r["study_date"] is not None]
    assert dated and all(d["study_date"].year > 1900 for d in dated)


def test_stack_attributes_are_a_map_duckdb_and_polars_query(tmp_path):
    rows = [schemas.series_row({"series_key": f"k{i}", "status": "converted", "stack_attributes": attrs})
            for i, attrs in enumerate([{"echo": 2}, {"b_value": 1000.0, "temporal_position": 3}, {}])]
    path = tmp_path / "series-00000-of-00001.parquet"
    path.write_bytes(tables.encode_parquet(rows, schemas.SERIES_SCHEMA, ("series_key",)))
    echo = _one(f"SELECT stack_attributes['echo'] FROM read_parquet('{path}') WHERE series_key = 'k0'")
    assert echo == ("2",)  # DuckDB 2: a map lookup gives the value (JSON text)
    frame = pl.read_parquet(path)
    assert frame.schema["stack_attributes"] == pl.Map(pl.String, pl.String)
    decoded = [schemas.stack_attributes_of(r) for r in tables.read_parquet(str(path)).to_pylist()]
    assert decoded == [{"echo": 2}, {"b_value": 1000.0, "temporal_position": 3}, {}]
