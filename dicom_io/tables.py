"""Read the summary tables back (tests, reports, later pipelines) through the storage helper."""

from __future__ import annotations

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from dicom_io import schemas


def read_table(output: str, name: str) -> pa.Table:
    """All shards of OUT/summary/{name}-*.parquet as one table with the contract's schema."""
    pattern = schemas.table_prefix(output, name) + "-*.parquet"
    fs, path = fsspec.core.url_to_fs(pattern)
    files = sorted(fs.glob(path))
    schema = schemas.SERIES_SCHEMA if name == schemas.SUMMARY_SERIES_PREFIX else schemas.INSTANCES_SCHEMA
    if not files:
        return schema.empty_table()
    return pa.concat_tables(pq.read_table(f, filesystem=fs, schema=schema) for f in files)
