"""Does every job exit 0 every time? N consecutive runs of each job in each local mode, counting exits.

    python -m benchmarks.exit_loop [--runs 50] [--workdir DIR] [--modes in_memory,multi_processing]
        [--jobs convert,manifest,verify,dataset]

A small seeded corpus (tests.synthetic.make_corpus: regular, coronal, irregular, multi-echo, localizer
and broken files) is written once; each job then runs --runs times as its own process, exactly as a
user or scheduler starts it (`python -m pipelines.NAME ...`). Prints, per job and mode, the count of
runs by exit status (0 is the only success; 134 or -6 is SIGABRT) and writes DIR/exit_loop.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODES = {"in_memory": ["--direct_num_workers", "1", "--direct_running_mode", "in_memory"],
         "multi_processing": ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]}


def _job_args(job: str, corpus: Path, work: Path) -> list[str]:
    converted = work / "converted"
    return {"convert": ["--input", str(corpus), "--output", str(work / "out-convert"), "--overwrite"],
            "manifest": ["--input", str(corpus), "--output", str(work / "out-manifest")],
            "verify": ["--output", str(converted)],
            "dataset": ["--output", str(converted), "--format", "vlm", "--report_table", str(work / "reports.csv")],
            }[job]


def _prepare(work: Path) -> Path:
    """The corpus, one converted OUT (verify and dataset read it) and a report table joined on study UID."""
    from tests import synthetic

    corpus = work / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    synthetic.make_corpus(corpus, seed=0)
    _run("convert", ["--input", str(corpus), "--output", str(work / "converted"), *MODES["in_memory"]], check=True)
    import pyarrow.parquet as pq

    series = pq.read_table(sorted((work / "converted" / "summary" / "series").glob("series-*.parquet"))[0]).to_pylist()
    with open(work / "reports.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_id", "report_value"])
        for uid in sorted({s["study_instance_uid"] for s in series if s["study_instance_uid"]}):
            writer.writerow([uid, f"report of {uid}"])
    return corpus


def _run(job: str, args: list[str], check: bool = False) -> int:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", f"pipelines.{job}", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"{job} failed while preparing: {result.stderr[-2000:]}")
    return result.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--workdir", default="exit-loop")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--jobs", default="convert,manifest,verify,dataset")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus = _prepare(work)
    results = {}
    for mode in args.modes.split(","):
        for job in args.jobs.split(","):
            started, codes = time.monotonic(), Counter()
            for _ in range(args.runs):
                codes[_run(job, [*_job_args(job, corpus, work), *MODES[mode]])] += 1
            bad = sum(n for code, n in codes.items() if code != 0)
            results[f"{job}/{mode}"] = {"runs": args.runs, "non_zero": bad, "exit_codes": dict(codes),
                                        "seconds_per_run": round((time.monotonic() - started) / args.runs, 2)}
            print(f"{job:9s} {mode:17s} {args.runs} runs, {bad} non-zero exits {dict(codes)}, "
                  f"{results[f'{job}/{mode}']['seconds_per_run']} s per run", flush=True)
    (work / "exit_loop.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    total = sum(r["non_zero"] for r in results.values())
    print(f"total: {sum(r['runs'] for r in results.values())} runs, {total} non-zero exits")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
