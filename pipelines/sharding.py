"""--table_shards / --rows_per_shard (pipelines.common.JobOptions) as the TableSharding every table writer takes."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from dicom_io.tables import TableSharding
from pipelines.common import JobOptions


def table_sharding(opts: PipelineOptions) -> TableSharding:
    """Forced with --table_shards N (N > 0), else planned from the rows with at most --rows_per_shard per file."""
    shared = opts.view_as(JobOptions)
    return TableSharding(num_shards=shared.table_shards or None, rows_per_shard=shared.rows_per_shard)
