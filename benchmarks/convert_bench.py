"""Throughput and peak-memory benchmark: dicomflow vs dcm2niix vs a naive pydicom + zarr loop.

    python -m benchmarks.convert_bench --workdir DIR [--bytes 1100000000]
        [--slices-per-series 250] [--big-series-slices 1000] [--skip-generate] [--repeat 3]

Run from the repository root (Linux only: memory is sampled from /proc).  Writes the corpora
to DIR/corpus and DIR/big, outputs to DIR/out/<run>, logs to DIR/logs/<run>.log, and the
results to DIR/results.md and DIR/results.json.

Every run is a separate subprocess.  While it runs, its process tree (the parent plus every
descendant found through the ppid links of /proc/*/stat) is sampled every 0.2 s:

* peak RSS of one process: the largest VmHWM (kernel high-water mark) of any process in the
  tree, cross-checked with the ``ru_maxrss`` that ``wait4`` reports for the tree;
* peak RSS sum of tree: the largest sum of VmRSS across the tree seen at one sample.

MB is 10**6 bytes throughout; MB/s is input DICOM bytes / wall seconds.  The corpora are
written just before the runs, so every run reads from a warm page cache.  Rows run in --repeat
interleaved rounds and each reports its median round (this 2-core VM moves 10-20 % run to run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_INTERVAL_S = 0.2
MB = 1_000_000
DEFAULT_BYTES = 1_100_000_000
BIG_RSS_TARGET_MB = 600


# --------------------------------------------------------------------------- /proc sampling


def _ppid_map() -> dict[int, int]:
    """pid -> ppid of every live process, from /proc/*/stat."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ..." -- comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def read_memory_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of ``pid`` in kB, or None if it is gone (or a zombie)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
    except OSError:
        return None
    if "VmRSS" not in values or "VmHWM" not in values:
        return None
    return values["VmRSS"], values["VmHWM"]


@dataclass
class TreeSampler:
    """Samples a process tree's memory every ``interval`` seconds in a background thread."""

    root: int
    interval: float = SAMPLE_INTERVAL_S
    peak_hwm_kb: int = 0  # largest VmHWM of any single process
    peak_sum_rss_kb: int = 0  # largest sum of VmRSS across the tree at one sample
    max_processes: int = 0
    pids_seen: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample of the whole tree."""
        total_rss, alive = 0, 0
        for pid in process_tree(self.root):
            mem = read_memory_kb(pid)
            if mem is None:
                continue
            rss, hwm = mem
            alive += 1
            total_rss += rss
            self.peak_hwm_kb = max(self.peak_hwm_kb, hwm)
            self.pids_seen.add(pid)
        self.peak_sum_rss_kb = max(self.peak_sum_rss_kb, total_rss)
        self.max_processes = max(self.max_processes, alive)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# --------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    """Measurements of one benchmark run."""

    name: str
    command: list[str]
    input_bytes: int
    wall_s: float
    returncode: int
    peak_rss_one_mb: float  # largest single process (VmHWM / ru_maxrss)
    peak_rss_tree_mb: float  # largest sum of VmRSS across the tree
    processes: int  # distinct processes seen in the tree
    cpu_s: float  # user + system CPU of the tree (reaped descendants included)
    load_avg_before: float  # 1-minute load average at start: other work on the machine skews wall time
    output_bytes: int
    log: str

    @property
    def input_mb(self) -> float:
        return self.input_bytes / MB

    @property
    def mb_per_s(self) -> float:
        return self.input_mb / self.wall_s if self.wall_s > 0 else float("nan")

    def to_json(self) -> dict:
        """JSON-ready dict including the derived columns."""
        return {**asdict(self), "input_mb": round(self.input_mb, 1), "mb_per_s": round(self.mb_per_s, 2)}


def dir_bytes(path: str | os.PathLike) -> int:
    """Total size of the regular files under ``path`` (0 if missing)."""
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def measure(name: str, command: Sequence[str], input_bytes: int, output_dir: Path, log_path: Path) -> RunResult:
    """Run ``command`` from the repository root, sampling its process tree until it exits."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {' '.join(command)}", flush=True)
    load_before = os.getloadavg()[0]
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(list(command), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _pid, status, rusage = os.wait4(proc.pid, 0)  # rusage covers the child and its reaped descendants
        wall = time.perf_counter() - start
        sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_one_kb = max(sampler.peak_hwm_kb, rusage.ru_maxrss)  # ru_maxrss is in kB on Linux
    result = RunResult(
        name=name,
        command=list(command),
        input_bytes=input_bytes,
        wall_s=wall,
        returncode=proc.returncode,
        peak_rss_one_mb=peak_one_kb * 1024 / MB,
        peak_rss_tree_mb=sampler.peak_sum_rss_kb * 1024 / MB,
        processes=len(sampler.pids_seen),
        cpu_s=rusage.ru_utime + rusage.ru_stime,
        load_avg_before=load_before,
        output_bytes=dir_bytes(output_dir),
        log=str(log_path),
    )
    status_text = "ok" if result.returncode == 0 else f"FAILED rc={result.returncode}, see {log_path}"
    print(f"[{name}] {wall:.1f} s wall, {result.cpu_s:.1f} s CPU, {result.mb_per_s:.1f} MB/s, "
          f"peak {result.peak_rss_one_mb:.0f} MB: {status_text}",
          flush=True)
    return result


def fresh_dir(path: Path) -> Path:
    """Empty (create or wipe) ``path``."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def dicomflow_command(input_dir: Path, output_dir: Path, runner_flags: Sequence[str]) -> list[str]:
    """``python -m pipelines.convert`` on the DirectRunner with extra runner flags."""
    return [sys.executable, "-m", "pipelines.convert", "--input", str(input_dir), "--output", str(output_dir),
            "--runner", "DirectRunner", *runner_flags]


def find_dcm2niix() -> str:
    """dcm2niix next to the interpreter (the venv) or on PATH."""
    local = Path(sys.executable).parent / "dcm2niix"
    found = str(local) if local.exists() else shutil.which("dcm2niix")
    if not found:
        raise SystemExit("dcm2niix not found (next to the interpreter or on PATH)")
    return found


def default_command(input_dir: Path, output_dir: Path) -> list[str]:
    """The default local invocation a user types: no runner flags at all."""
    return [sys.executable, "-m", "pipelines.convert", "--input", str(input_dir), "--output", str(output_dir),
            "--progress", "none"]


def run_all(workdir: Path, corpus: Path, big: Path, small: Path, large: Path | None, repeat: int = 1) -> list[RunResult]:
    """Every row, in one run: dicomflow default and Beam multi-process, dcm2niix, the naive loop,
    start-up on 3 files, one 1000-slice series, and (if generated) the 4 GB linearity corpus.

    `repeat` > 1: that many rounds of every row, interleaved (so a slow minute of the machine hits
    every row alike), and per row the round with the median wall time (the 4 GB row runs once)."""
    out, logs = workdir / "out", workdir / "logs"
    corpus_bytes = dir_bytes(corpus)
    runs = [
        ("dicomflow, default invocation (every core)", corpus_bytes, "dicomflow_default",
         lambda o: default_command(corpus, o)),
        ("dicomflow, Beam multi_processing x2", corpus_bytes, "dicomflow_mp2",
         lambda o: dicomflow_command(corpus, o, ["--direct_running_mode=multi_processing", "--direct_num_workers=2",
                                                 "--progress", "none"])),
        ("dcm2niix -z n", corpus_bytes, "dcm2niix",
         lambda o: [find_dcm2niix(), "-z", "n", "-o", str(o), str(corpus)]),
        ("naive loop (header pass, sort, np.stack, zarr, zstd 3)", corpus_bytes, "naive",
         lambda o: [sys.executable, "-m", "benchmarks.naive_convert", "--input", str(corpus), "--output", str(o)]),
        ("dicomflow start-up, 3 files", dir_bytes(small), "dicomflow_startup", lambda o: default_command(small, o)),
        (f"dicomflow, 1 series x {count_files(big)} slices", dir_bytes(big), "dicomflow_big",
         lambda o: default_command(big, o)),
    ]
    if large is not None:  # once each: the linearity check, and the ratios where start-up is amortised
        gb = f"{dir_bytes(large) / 1e9:.1f} GB"
        runs += [(f"dicomflow, default, {gb}", dir_bytes(large), "dicomflow_large", lambda o: default_command(large, o)),
                 (f"dcm2niix -z n, {gb}", dir_bytes(large), "dcm2niix_large",
                  lambda o: [find_dcm2niix(), "-z", "n", "-o", str(o), str(large)]),
                 (f"naive loop, {gb}", dir_bytes(large), "naive_large",
                  lambda o: [sys.executable, "-m", "benchmarks.naive_convert", "--input", str(large), "--output", str(o)])]
    rounds: dict[str, list[RunResult]] = {}
    for round_index in range(max(1, repeat)):
        for name, nbytes, slug, make_command in runs:
            if round_index and slug.endswith("_large"):
                continue
            output_dir = fresh_dir(out / slug)
            rounds.setdefault(slug, []).append(
                measure(name, make_command(output_dir), nbytes, output_dir, logs / f"{slug}.log"))
    return [median_run(rounds[slug]) for _, _, slug, _ in runs]


def median_run(results: list[RunResult]) -> RunResult:
    """The run with the median wall time, named with the spread of all rounds when there are several."""
    ordered = sorted(results, key=lambda r: r.wall_s)
    middle = ordered[(len(ordered) - 1) // 2]
    if len(results) == 1:
        return middle
    walls = ", ".join(f"{r.wall_s:.1f}" for r in results)
    return dataclasses.replace(middle, name=f"{middle.name} (median of {len(results)}: {walls} s)")


def small_input(corpus: Path, small: Path) -> Path:
    """Three files of the main corpus (one series' worth of start-up), copied once."""
    if not small.is_dir() or count_files(small) != 3:
        shutil.rmtree(small, ignore_errors=True)
        small.mkdir(parents=True)
        for path in sorted(p for p in corpus.rglob("*") if p.is_file())[:3]:
            shutil.copy(path, small / path.name)
    return small


# --------------------------------------------------------------------------- corpora


def count_files(path: Path) -> int:
    """Number of regular files under ``path``."""
    return sum(len(names) for _dirpath, _dirs, names in os.walk(path))


def ensure_corpus(path: Path, target_bytes: int, slices_per_series: int, skip_generate: bool) -> None:
    """Write a bench corpus to ``path`` unless a complete one with the same parameters is there.

    A ``<path>.json`` stamp next to the folder (not inside: the runs read the whole folder)
    records the parameters of a finished generation; a partial or different corpus is rewritten.
    """
    stamp = path.with_suffix(".json")
    wanted = {"target_bytes": target_bytes, "slices_per_series": slices_per_series, "rows": 512, "cols": 512}
    if skip_generate:
        if not path.is_dir() or count_files(path) == 0:
            raise SystemExit(f"--skip-generate given but {path} holds no corpus")
        return
    if stamp.exists() and path.is_dir() and json.loads(stamp.read_text()) == wanted:
        print(f"corpus {path}: present, not regenerated", flush=True)
        return
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.synthetic import make_bench_corpus  # imported late: generation is optional

    shutil.rmtree(path, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    corpus = make_bench_corpus(path, target_bytes, rows=512, cols=512, slices_per_series=slices_per_series)
    print(f"corpus {path}: wrote {len(corpus.files)} files, {len(corpus.expected)} series, "
          f"{dir_bytes(path) / MB:.0f} MB in {time.perf_counter() - start:.1f} s", flush=True)
    stamp.write_text(json.dumps(wanted))


# --------------------------------------------------------------------------- report


COLUMNS = ("run", "input MB", "wall s", "CPU s", "MB/s", "wall / naive", "CPU / naive", "wall / dcm2niix",
           "peak RSS MB (one process)", "peak RSS sum of tree MB")


def markdown_table(results: Sequence[RunResult]) -> str:
    """The results as a Markdown table with the ratios to the naive loop and dcm2niix (same corpus only)."""
    def reference(kind: str, r: RunResult) -> RunResult | None:  # the `kind` row over the same corpus
        return next((x for x in results if Path(x.log).stem.startswith(kind) and x.input_bytes == r.input_bytes), None)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    for r in results:
        naive, ref = reference("naive", r), reference("dcm2niix", r)
        same = naive is not None
        ratio = (lambda a, b: f"{a / b:.2f}") if same else (lambda a, b: "")
        name = r.name if r.returncode == 0 else f"{r.name} (FAILED rc={r.returncode})"
        cells = [name, f"{r.input_mb:.0f}", f"{r.wall_s:.1f}", f"{r.cpu_s:.1f}", f"{r.mb_per_s:.0f}",
                 ratio(r.wall_s, naive.wall_s) if naive else "", ratio(r.cpu_s, naive.cpu_s) if naive else "",
                 ratio(r.wall_s, ref.wall_s) if ref and same else "",
                 f"{r.peak_rss_one_mb:.0f}", f"{r.peak_rss_tree_mb:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(results: Sequence[RunResult]) -> list[str]:
    """Each target of issue 12, met or missed, with the figures."""
    by = {Path(r.log).stem: r for r in results}
    d, naive, ref = by.get("dicomflow_default"), by.get("naive"), by.get("dcm2niix")
    lines = []
    if d and naive:
        lines.append(f"default invocation: wall {d.wall_s / naive.wall_s:.2f}x the naive loop (target <= 0.5), "
                     f"CPU {d.cpu_s / naive.cpu_s:.2f}x (target <= 0.8)")
    if d and ref:
        lines.append(f"default invocation: wall {d.wall_s / ref.wall_s:.2f}x dcm2niix -z n (target <= 2)")
    if by.get("dicomflow_startup"):
        lines.append(f"start-up on 3 files: {by['dicomflow_startup'].wall_s:.1f} s wall (target <= 3)")
    if by.get("dicomflow_big"):
        big = by["dicomflow_big"]
        verdict = "meets" if big.peak_rss_one_mb < BIG_RSS_TARGET_MB else "MISSES"
        lines.append(f"1000-slice series: peak RSS {big.peak_rss_one_mb:.0f} MB per process, {verdict} the "
                     f"{BIG_RSS_TARGET_MB} MB target")
    large, naive_large, ref_large = by.get("dicomflow_large"), by.get("naive_large"), by.get("dcm2niix_large")
    if large and naive_large:
        lines.append(f"4.5 GB: wall {large.wall_s / naive_large.wall_s:.2f}x the naive loop, CPU "
                     f"{large.cpu_s / naive_large.cpu_s:.2f}x" + (f", {large.wall_s / ref_large.wall_s:.2f}x dcm2niix"
                                                                   if ref_large else "") + " (start-up amortised)")
    if d and by.get("dicomflow_large"):
        large = by["dicomflow_large"]
        scale = large.input_bytes / d.input_bytes
        lines.append(f"{scale:.2f}x the bytes took {large.wall_s / d.wall_s:.2f}x the wall time "
                     f"(target <= {4.2 * scale / 4:.2f}x)")
    return lines


def environment() -> dict:
    """Machine facts recorded with the results."""
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "mem_total_mb": round(mem_kb * 1024 / MB), "sample_interval_s": SAMPLE_INTERVAL_S,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_reports(workdir: Path, results: Sequence[RunResult], table: str, observations: Sequence[str]) -> None:
    """DIR/results.md (table + notes) and DIR/results.json."""
    md = table + "\n\n" + "".join(f"- {line}\n" for line in observations)
    md += "\nMB = 10^6 bytes; MB/s = input DICOM bytes / wall s; warm page cache.\n"
    (workdir / "results.md").write_text(md)
    payload = {"environment": environment(), "runs": [r.to_json() for r in results], "notes": list(observations)}
    (workdir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.convert_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path, help="corpora, outputs and results go here")
    parser.add_argument("--bytes", type=int, default=DEFAULT_BYTES, help="minimum size of the main corpus")
    parser.add_argument("--slices-per-series", type=int, default=250, help="slices per series of the main corpus")
    parser.add_argument("--big-series-slices", type=int, default=1000, help="slices of the single big series")
    parser.add_argument("--skip-generate", action="store_true", help="use the corpora already in --workdir")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of every row, interleaved; each row reports its median round (default 3)")
    parser.add_argument("--large-bytes", type=int, default=4_400_000_000,
                        help="size of the linearity corpus (0: no linearity run)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the corpora, run every measurement, print and write the results."""
    args = parse_args(argv)
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    corpus, big = workdir / "corpus", workdir / "big"
    ensure_corpus(corpus, args.bytes, args.slices_per_series, args.skip_generate)
    # target 1 byte: make_bench_corpus stops after the first series, so exactly one is written
    ensure_corpus(big, 1, args.big_series_slices, args.skip_generate)
    large = workdir / "large" if args.large_bytes else None
    if large is not None:
        ensure_corpus(large, args.large_bytes, args.slices_per_series, args.skip_generate)
    results = run_all(workdir, corpus, big, small_input(corpus, workdir / "small"), large, args.repeat)
    table, observations = markdown_table(results), notes(results)
    print("\n" + table + "\n")
    for line in observations:
        print(line)
    write_reports(workdir, results, table, observations)
    print(f"\nwrote {workdir / 'results.md'} and {workdir / 'results.json'}")
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
