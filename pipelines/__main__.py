"""`dicomflow JOB ...` (and `python -m pipelines JOB ...`): one command for every job, same flags and help.

    dicomflow convert --input IN --output OUT
    dicomflow manifest --help
"""

from __future__ import annotations

import difflib
import importlib
import sys

JOBS = {
    "convert": "DICOM files -> Zarr volumes, slice CSVs, series JSON and summary tables",
    "manifest": "header-only crawl: one row per file, per series, optional every tag and convert shards",
    "verify": "re-check a converted OUT against its sources; HTML report; exit 1 on any failure",
    "dataset": "join a converted OUT with reports or labels into ML datasets, split by patient",
    "export": "converted volumes back to DICOM (and SEG), or to NIfTI or HDF5",
    "aggregate": "summary tables of an OUT rebuilt from the parts of by-hand shard runs",
}


def usage() -> str:
    lines = ["usage: dicomflow JOB [--flag value ...]   (dicomflow JOB --help for a job's flags)", "", "jobs:"]
    return "\n".join(lines + [f"  {name:10s} {text}" for name, text in JOBS.items()])


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        close = difflib.get_close_matches(job, list(JOBS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"dicomflow: unknown job {job!r}{hint}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    sys.argv = ["dicomflow", *rest]  # the job's own main reads sys.argv; its help says `dicomflow JOB`
    importlib.import_module(f"pipelines.{job}").main()


if __name__ == "__main__":
    main()
