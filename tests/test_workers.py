"""dicom_io.workers: the fork pool a local run uses for every core, and what it must never do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from dicom_io.tables import read_parquet
from dicom_io.workers import Pool, default_processes
from tests.conftest import REPO, RUNNER_ARGS, all_files


def _square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_every_item_comes_back_once_on_other_processes():
    pool = Pool(2)
    try:
        got = list(pool.map_unordered(_square, range(40)))
    finally:
        pool.close()
    assert sorted(item for item, _ in got) == list(range(40))
    assert all(result[0] == item * item for item, result in got)
    assert os.getpid() not in {pid for _, (_, pid) in got}, "with 2 processes the work runs in the workers"


def test_one_process_runs_inline():
    pool = Pool(1)
    assert [(i, r[0]) for i, r in pool.map_unordered(_square, range(3))] == [(0, 0), (1, 1), (2, 4)]
    assert {r[1] for _, r in pool.map_unordered(_square, range(3))} == {os.getpid()}
    assert default_processes() >= 1


def _fail(x: int) -> int:
    raise ValueError(f"bad item {x}")


def test_a_workers_exception_reaches_the_caller():
    pool = Pool(2)
    try:
        try:
            list(pool.map_unordered(_fail, [7]))
        except ValueError as exc:
            assert "bad item 7" in str(exc)
        else:
            raise AssertionError("the worker's exception was lost")
    finally:
        pool.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_die_with_a_killed_parent():
    """kill -9 of a local run must not leave its pool's processes behind (PR_SET_PDEATHSIG)."""
    script = textwrap.dedent("""
        import os, sys, time
        from dicom_io.workers import Pool
        pool = Pool(2)
        list(pool.submit(time.sleep, 30))
        list(pool.submit(time.sleep, 30))
        time.sleep(0.5)
        print(" ".join(str(p) for p in pool._executor._processes), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    children = [int(p) for p in proc.stdout.readline().split()]
    assert len(children) == 2 and all(_alive(p) for p in children)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in children), "pool workers outlived their killed parent"


def _normalized(path: str, out: str):
    """A file's bytes with OUT's own path replaced (tables: their rows, as OUT sits inside compressed pages)."""
    if path.endswith(".parquet"):
        return [{k: str(v).replace(out, "OUT") for k, v in row.items()} for row in read_parquet(path).to_pylist()]
    return open(path, "rb").read().replace(out.encode(), b"OUT")


def test_the_pool_writes_the_same_bytes_as_one_process(corpus, tmp_path):
    """Series and headers converted on 2 forked processes: the same files, byte for byte (tables row for row,
    since each OUT path sits inside compressed pages)."""
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        result = subprocess.run([sys.executable, "-m", "pipelines.convert", "--input", corpus.root, "--output",
                                 str(out), *RUNNER_ARGS, "--processes", str(n)], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        outs[n] = {os.path.relpath(p, out): _normalized(p, str(out)) for p in all_files(str(out))}
    assert sorted(outs[1]) == sorted(outs[2])
    assert [k for k in outs[1] if outs[1][k] != outs[2][k]] == []


def _frozen_objects(_item):
    import gc

    return gc.get_freeze_count()


def test_workers_leave_what_they_inherited_to_the_permanent_generation():
    """A forked worker's collections must not traverse (and so copy the pages of) the launcher's
    objects: every object it inherited is frozen, the caller's own generations are not."""
    import gc

    inherited = [{"header": i} for i in range(20_000)]  # a launcher holding grouped records
    pool = Pool(2)
    try:
        counts = [count for _, count in pool.map_unordered(_frozen_objects, range(4))]
    finally:
        pool.close()
    assert len(counts) == 4 and min(counts) > len(inherited)
    assert gc.get_freeze_count() == 0
