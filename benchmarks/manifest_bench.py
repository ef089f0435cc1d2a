"""Files per second of the manifest crawl vs a plain single-process pydicom header loop.

    python -m benchmarks.manifest_bench --workdir DIR [--bytes 300000000] [--rows 256 --cols 256]
        [--slices-per-series 100] [--workers 2] [--skip-generate]

Writes a seeded corpus of many small CT files to DIR/corpus (tests.synthetic.make_bench_corpus),
then times, each as its own subprocess (wall clock, interpreter and Beam start-up included):

* `loop`: `pydicom.dcmread(path, stop_before_pixels=True)` over every file, one process;
* `manifest, 1 file`: the job on one file, i.e. its fixed start-up cost, subtracted for "marginal";
* `manifest`: `python -m pipelines.manifest` as a user runs it (in-process runner, headers parsed on a
  pool of `--workers` forked processes), writing instances, series and unreadable tables;
* `manifest --all_tags`: the same plus the wide and long tag tables;
* `manifest --previous`: a re-run over the unchanged corpus reusing the first run (reads no header).

The corpus is written just before the runs, so every run reads from a warm page cache. Results go
to DIR/results.json and DIR/results.md; logs to DIR/logs/<run>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000

# The baseline, run as `python -c`: the loop a user would write without this job.
LOOP = """
import os, sys, pydicom
n = 0
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        pydicom.dcmread(os.path.join(d, f), stop_before_pixels=True)
        n += 1
print(n)
"""


def corpus_files(root: Path) -> tuple[int, int]:
    """(file count, total bytes) below `root`."""
    paths = [Path(d) / f for d, _, files in os.walk(root) for f in files]
    return len(paths), sum(p.stat().st_size for p in paths)


def timed(name: str, command: Sequence[str], logs: Path) -> tuple[float, int]:
    """Run `command` from the repository root; return (wall seconds, exit code).

    A job that printed its counters and then died at interpreter exit (an intermittent abort of
    the multi_processing DirectRunner, seen with pipelines.convert too) did its work: its time is
    kept and its exit code reported. Anything else that fails raises.
    """
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name.replace(' ', '_')}.log"
    with open(log_path, "w") as log:
        start = time.perf_counter()
        code = subprocess.run(list(command), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
    if code != 0 and (name == "loop" or "counters:" not in log_path.read_text()):
        raise RuntimeError(f"{name} failed with exit code {code}, see {log_path}")
    return seconds, code


def runs(workdir: Path, workers: int) -> dict[str, list[str]]:
    corpus, py = str(workdir / "corpus"), sys.executable
    beam = ["--processes", str(workers), "--progress", "none"]  # the default invocation: one fork pool
    crawl = [py, "-W", "ignore", "-m", "pipelines.manifest", "--input", corpus]
    first = str(workdir / "out" / "manifest")
    one_file = min(str(Path(d) / f) for d, _, files in os.walk(corpus) for f in files)
    return {
        "loop": [py, "-c", LOOP, corpus],
        "manifest, 1 file": [py, "-W", "ignore", "-m", "pipelines.manifest", "--input", one_file,
                             "--output", str(workdir / "out" / "one_file"), *beam],
        "manifest": [*crawl, "--output", first, *beam],
        "manifest --all_tags": [*crawl, "--output", str(workdir / "out" / "all_tags"), "--all_tags", *beam],
        "manifest --previous": [*crawl, "--output", str(workdir / "out" / "previous"), "--previous", first, *beam],
    }


def report(results: dict[str, tuple[float, int]], n_files: int, n_bytes: int, workers: int) -> str:
    """Markdown table; 'marginal' subtracts the 1-file run (interpreter, Beam and worker start-up)."""
    startup = results["manifest, 1 file"][0]
    lines = [f"corpus: {n_files} files, {n_bytes / MB:.0f} MB; default invocation, {workers} processes; "
             f"start-up (1-file run) {startup:.1f} s",
             "", "| run | wall s | files/s | MB/s | marginal files/s | exit |", "|---|---:|---:|---:|---:|---:|"]
    for name, (seconds, code) in results.items():
        if name == "manifest, 1 file":
            continue
        marginal = f"{n_files / (seconds - startup):.0f}" if name != "loop" and seconds > startup else ""
        lines.append(f"| {name} | {seconds:.1f} | {n_files / seconds:.0f} | {n_bytes / MB / seconds:.0f} | "
                     f"{marginal} | {code} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.manifest_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--bytes", type=int, default=300_000_000)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument("--slices-per-series", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-generate", action="store_true")
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve()
    if not args.skip_generate:
        from tests.synthetic import make_bench_corpus

        make_bench_corpus(workdir / "corpus", args.bytes, rows=args.rows, cols=args.cols,
                          slices_per_series=args.slices_per_series)
    n_files, n_bytes = corpus_files(workdir / "corpus")
    results = {name: timed(name, command, workdir / "logs") for name, command in runs(workdir, args.workers).items()}
    text = report(results, n_files, n_bytes, args.workers)
    (workdir / "results.md").write_text(text + "\n")
    (workdir / "results.json").write_text(json.dumps(
        {"files": n_files, "bytes": n_bytes, "workers": args.workers,
         "seconds": {k: v[0] for k, v in results.items()}, "exit_codes": {k: v[1] for k, v in results.items()}},
        indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
