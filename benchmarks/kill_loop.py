"""Kill the convert job at random moments, re-run it, and count what survives: the crash-safety loop.

    python -m benchmarks.kill_loop [--kills 30] [--seed 0] [--workdir DIR] [--workers 1]

A seeded corpus of 12 CT series is converted once cleanly (the reference). Then, --kills times: the
job starts into an empty OUT, is SIGKILLed (its whole process group) after a random delay between
0.2 s and the clean run's wall time, and is run again to the end. Each re-run's OUT must equal the
reference byte for byte (volumes, CSVs, JSONs, tables); any temporary name or partial series left
after the re-run is debris. Prints kills tried, kills that landed mid-run, re-runs byte-identical,
and debris left, and writes DIR/kill_loop.json (the numbers in RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _command(corpus: Path, out: Path, workers: int) -> list[str]:
    mode = "multi_processing" if workers > 1 else "in_memory"
    return [sys.executable, "-m", "pipelines.convert", "--input", str(corpus), "--output", str(out),
            "--direct_num_workers", str(workers), "--direct_running_mode", mode, "--progress", "none"]


def _corpus(root: Path) -> None:
    from tests import synthetic

    for i in range(12):
        spec = synthetic.SeriesSpec(
            series_uid=synthetic.uid_from("kill-loop", i), study_uid=synthetic.uid_from("kill-loop-study"),
            patient_id="KILL", modality="CT", positions=synthetic.axial_positions(24, 2.0), iop=synthetic.AXIAL_IOP,
            pixel_spacing=(1.0, 1.0), rows=128, cols=128, slice_thickness=2.0)
        synthetic.write_series(str(root), spec, seed=i)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workdir", default="kill-loop")
    args = parser.parse_args(argv)
    from dicom_io.debris import TEMPORARY

    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    corpus, out = work / "corpus", work / "out"
    _corpus(corpus)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.monotonic()
    subprocess.run(_command(corpus, out, args.workers), cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    clean_s = time.monotonic() - started
    reference = _tree(out)
    rng = random.Random(args.seed)
    landed = identical = debris = 0
    for k in range(args.kills):
        shutil.rmtree(out, ignore_errors=True)
        delay = rng.uniform(0.2, clean_s)
        proc = subprocess.Popen(_command(corpus, out, args.workers), cwd=REPO_ROOT, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            landed += 1
        proc.wait()
        rerun = subprocess.run(_command(corpus, out, args.workers), cwd=REPO_ROOT, env=env, capture_output=True)
        got = _tree(out) if rerun.returncode == 0 else {}
        left = [name for name in got if TEMPORARY.search(name)]
        debris += len(left)
        same = got == reference
        identical += same
        print(f"kill {k + 1:3d} after {delay:5.2f} s: re-run exit {rerun.returncode}, "
              f"{'byte-identical' if same else 'DIFFERENT'}, debris {len(left)}", flush=True)
    summary = {"kills_tried": args.kills, "kills_mid_run": landed, "reruns_byte_identical": identical,
               "debris_files_left": debris, "clean_run_s": round(clean_s, 2), "workers": args.workers}
    (work / "kill_loop.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    sys.exit(0 if identical == args.kills and debris == 0 else 1)


if __name__ == "__main__":
    main()
