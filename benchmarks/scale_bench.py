"""Scale benchmark: many tiny files and many series through the manifest crawl and convert.

    python -m benchmarks.scale_bench --workdir DIR [--sizes 10000,40000,160000] [--workers 2]
        [--slices-per-series 10] [--folders 64] [--rows_per_shard 500000] [--skip-generate]
        [--mode beam|pool]

For each size N, writes DIR/corpus-N (tests.synthetic.make_scale_corpus: 8x8-pixel CT slices,
N / slices-per-series series over `folders` sub-folders), then runs, each as its own subprocess on
the DirectRunner (`--mode beam`: `--direct_running_mode=multi_processing --direct_num_workers=W`;
`--mode pool`: the default invocation, header parsing and series assembly on W forked processes):

* `manifest`: python -m pipelines.manifest over the folder;
* `convert`: python -m pipelines.convert over the folder.

Measured per run: wall seconds and wall per file (interpreter and Beam start-up included, and the
same with the 1-file start-up run subtracted: "marginal"), CPU seconds of the whole process tree,
the peak RSS (VmHWM) and the peak private memory (smaps_rollup: what a forked worker holds beyond
the pages it shares with its launcher) of every process of the tree, the table files
written and their largest row count (the largest shard group), and the largest series (files of
the largest GroupBySeries key). Results: DIR/results.json and DIR/results.md; logs in DIR/logs/.

What does not carry over to Dataflow: see the "Scale" section of README.md (the DirectRunner keeps
shuffles in one process's memory, runs every stage in a few processes on one machine, and lists
local disk, not GCS).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq

from benchmarks.convert_bench import process_tree, read_memory_kb

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
SAMPLE_INTERVAL_S = 0.2


def private_kb(pid: int) -> int | None:
    """Memory only this process holds (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup), kB.

    A forked pool worker's VmRSS also counts every page it shares with the launcher it was forked
    from (the launcher's listing and shuffles included), so its own share is the private part."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return None
    return total


@dataclass
class PeakPerProcess:
    """Samples a process tree every 0.2 s: the peak VmHWM and the peak private memory of each process."""

    root: int
    peaks_kb: dict[int, int] = field(default_factory=dict)
    private_peaks_kb: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        for pid in process_tree(self.root):
            memory, private = read_memory_kb(pid), private_kb(pid)
            if memory is not None:
                self.peaks_kb[pid] = max(self.peaks_kb.get(pid, 0), memory[1])
                self.names.setdefault(pid, "launcher" if pid == self.root else _short_command(pid))
            if private is not None:
                self.private_peaks_kb[pid] = max(self.private_peaks_kb.get(pid, 0), private)

    def run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_INTERVAL_S)


def _short_command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            parts = fh.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(p.decode(errors="replace") for p in parts if p)
    return text if len(text) < 90 else text[:87] + "..."


@dataclass
class Run:
    name: str
    files: int
    wall_s: float
    cpu_s: float
    returncode: int
    process_peaks_mb: list[tuple[str, float]]  # (command, peak RSS MB) per process, largest first
    private_peaks_mb: list[tuple[str, float]] = field(default_factory=list)  # (command, peak private MB)
    table_files: int = 0
    largest_shard_rows: int = 0
    largest_series_files: int = 0


def measure(name: str, command: Sequence[str], files: int, log_path: Path) -> Run:
    """Run `command` from the repository root, sampling every process of its tree until it exits."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {' '.join(command)}", flush=True)
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(list(command), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        sampler = PeakPerProcess(proc.pid)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        sampler._stop.set()
        thread.join()
    peaks = sorted(((sampler.names[p], kb * 1024 / MB) for p, kb in sampler.peaks_kb.items()), key=lambda x: -x[1])
    private = sorted(((sampler.names.get(p, "?"), kb * 1024 / MB) for p, kb in sampler.private_peaks_kb.items()),
                     key=lambda x: -x[1])
    run = Run(name, files, wall, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status), peaks, private)
    print(f"[{name}] {wall:.1f} s wall, {run.cpu_s:.1f} s CPU, rc {run.returncode}", flush=True)
    return run


def table_sizes(patterns: Sequence[str]) -> tuple[int, int]:
    """(table files, rows of the largest one) of the Parquet and CSV files matching `patterns`."""
    files = [f for pattern in patterns for f in glob.glob(pattern)]
    return len(files), max((_rows_of(f) for f in files), default=0)


def _rows_of(path: str) -> int:
    if path.endswith(".csv"):
        with open(path, "rb") as fh:
            return max(0, sum(1 for _ in fh) - 1)  # header line (no field of these tables holds a newline)
    return pq.read_metadata(path).num_rows


def largest_series(pattern: str, column: str) -> int:
    files = glob.glob(pattern)
    return max((max(pq.read_table(f, columns=[column]).column(column).to_pylist() or [0]) for f in files), default=0)


def runs_for(corpus: Path, out: Path, workers: int, rows_per_shard: int, mode: str = "beam") -> dict[str, list[str]]:
    """beam: Beam's multi-process DirectRunner with `workers` SDK workers; pool: the default local
    invocation (in-process runner, header parsing and series assembly on `workers` forked processes)."""
    if mode == "pool":
        beam = ["--processes", str(workers), "--progress", "none", "--rows_per_shard", str(rows_per_shard)]
    else:
        beam = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing",
                "--direct_num_workers", str(workers), "--rows_per_shard", str(rows_per_shard)]
    py = [sys.executable, "-W", "ignore", "-m"]
    return {"manifest": [*py, "pipelines.manifest", "--input", str(corpus), "--output", str(out / "manifest"), *beam],
            "convert": [*py, "pipelines.convert", "--input", str(corpus), "--output", str(out / "convert"), *beam]}


def outputs_of(run: Run, out: Path) -> None:
    """Fill the table and group sizes of `run` from what it wrote."""
    if run.name.startswith("manifest"):
        root = out / "manifest"
        run.table_files, run.largest_shard_rows = table_sizes([str(root / "*" / "*.parquet"), str(root / "unreadable" / "*.csv")])
        run.largest_series_files = largest_series(str(root / "series" / "series-*.parquet"), "n_instances")
    else:
        root = out / "convert" / "summary"
        run.table_files, run.largest_shard_rows = table_sizes([str(root / "*" / "*.parquet")])
        run.largest_series_files = largest_series(str(root / "series" / "series-*.parquet"), "n_source_files")


def bench_size(workdir: Path, n: int, args) -> list[Run]:
    from tests.synthetic import make_scale_corpus

    corpus, out = workdir / f"corpus-{n}", workdir / f"out-{n}"
    if not args.skip_generate or not corpus.exists():
        subprocess.run(["rm", "-rf", str(corpus), str(out)], check=True)
        make_scale_corpus(corpus, n, slices_per_series=args.slices_per_series, folders=args.folders)
    results = []
    one = min(str(Path(d) / f) for d, _, files in os.walk(corpus) for f in files)
    for name, command in runs_for(corpus, out, args.workers, args.rows_per_shard, args.mode).items():
        subprocess.run(["rm", "-rf", str(out / name)], check=True)
        startup = measure(f"{name}, 1 file", [c if c != str(corpus) else one for c in command], 1,
                          workdir / "logs" / f"{name}-1-file.log")
        subprocess.run(["rm", "-rf", str(out / name)], check=True)
        run = measure(name, command, n, workdir / "logs" / f"{name}-{n}.log")
        outputs_of(run, out)
        results += [startup, run]
    return results


def report(results: list[Run], workers: int, mode: str = "beam") -> str:
    how = (f"default invocation, {workers} forked pool workers" if mode == "pool"
           else f"DirectRunner multi_processing, {workers} workers")
    lines = [f"{how}; tiny 8x8 CT files", "",
             "| run | files | wall s | ms/file | marginal ms/file | CPU s | peak RSS MB per process (largest 3) "
             "| peak private MB: launcher; others | table files | largest shard rows | largest series files | rc |",
             "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    startup = {}
    for run in results:
        if run.files == 1:
            startup[run.name.split(",")[0]] = run.wall_s
            continue
        base = startup.get(run.name, 0.0)
        marginal = 1000 * (run.wall_s - base) / max(1, run.files - 1)
        peaks = ", ".join(f"{mb:.0f}" for _, mb in run.process_peaks_mb[:3])
        launcher = next((f"{mb:.0f}" for name, mb in run.private_peaks_mb if name == "launcher"), "?")
        others = ", ".join(f"{mb:.0f}" for name, mb in run.private_peaks_mb if name != "launcher" and mb > 10)
        lines.append(f"| {run.name} | {run.files} | {run.wall_s:.1f} | {1000 * run.wall_s / run.files:.2f} | "
                     f"{marginal:.2f} | {run.cpu_s:.1f} | {peaks} | {launcher}; {others} | {run.table_files} | "
                     f"{run.largest_shard_rows} | "
                     f"{run.largest_series_files} | {run.returncode} |")
    lines.append("")
    lines.append("start-up (1-file runs): " + ", ".join(f"{k} {v:.1f} s" for k, v in startup.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--sizes", default="10000,40000,160000", help="Comma-separated file counts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slices-per-series", type=int, default=10)
    parser.add_argument("--folders", type=int, default=64)
    parser.add_argument("--rows_per_shard", type=int, default=500_000)
    parser.add_argument("--mode", choices=("beam", "pool"), default="beam",
                        help="beam: Beam's multi-process DirectRunner; pool: the default invocation (fork pool)")
    parser.add_argument("--skip-generate", action="store_true", help="Reuse DIR/corpus-N when it exists")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    results = [run for n in (int(s) for s in args.sizes.split(",")) for run in bench_size(workdir, n, args)]
    text = report(results, args.workers, args.mode)
    (workdir / "results.md").write_text(text + "\n")
    (workdir / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
