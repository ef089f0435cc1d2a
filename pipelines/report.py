"""What a job prints at the end: Beam counters and a short table of the summary."""

from __future__ import annotations

from collections import Counter

from apache_beam.metrics.metric import MetricsFilter

from dicom_io import tables
from transforms.headers import NAMESPACE


def print_counters(result) -> dict[str, int]:
    """Print (and return) the dicomflow counters committed by the runner."""
    counters: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + (counter.committed or 0)
    print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return counters


def print_summary(output: str, limit: int = 20) -> None:
    """A few lines a user reads after a local run: statuses and the first series."""
    series = tables.read_table(output, "series")
    instances = tables.read_table(output, "instances")
    print(f"instances: {dict(Counter(instances.column('status').to_pylist()))}")
    reasons = Counter(f"{r['status']}: {r['reason'].split(':')[0].split(' (')[0]}"
                      for r in instances.select(["status", "reason"]).to_pylist() if r["status"] != "converted")
    for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {count:6d}  {reason}")
    print(f"series:    {dict(Counter(series.column('status').to_pylist()))}")
    rows = sorted(series.select(["series_key", "status", "n_slices", "geometry", "dtype"]).to_pylist(),
                  key=lambda r: r["series_key"])
    for row in rows[:limit]:
        print(f"  {row['series_key']:70s} {row['status']:9s} {row['n_slices'] or 0:5d} "
              f"{row['geometry'] or '':18s} {row['dtype'] or ''}")
