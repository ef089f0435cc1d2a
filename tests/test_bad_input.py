"""Hostile inputs (tests/badcorpus.py) mixed with the good synthetic corpus: the job finishes,
accounts for every file with a precise reason, leaves the good series untouched, writes nothing
outside --output, and stays within bounded memory on decompression bombs.

The jobs run as subprocesses: a decoder that aborts the process (SIGABRT from C++) or a bomb
that takes gigabytes must fail a test, not take pytest (or the machine) down with it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import zarr

from dicom_io import schemas
from dicom_io.tables import read_table
from dicom_io.volume import slice_md5
from tests import badcorpus, synthetic
from tests.conftest import REPO, RUNNER_ARGS, all_files

KEY_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.\-]*_[0-9a-f]{12}_s\d{2}$|^series_[0-9a-f]{12}_s\d{2}$")
MEMORY_LIMIT = 1024**3  # peak RSS allowed for a job over the bombs
WATCHDOG = 3 * 1024**3  # the job is killed past this: the machine must survive an unfixed bomb
EXCLUDE_FROM_MIXED: tuple[str, ...] = ()  # name suffixes left out of the mixed run (debugging only)
SNAPSHOT_SKIP = {".git", ".venv", ".venv-airflow", "__pycache__", ".pytest_cache", "dicomflow.egg-info"}


def _env() -> dict:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore"}


def _snapshot(root: str, skip: str | None = None) -> dict[str, int]:
    """Every path below `root` (dirs too) with its size, minus `skip` and caches."""
    found = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in SNAPSHOT_SKIP and os.path.join(d, x) != skip]
        for name in dirs + files:
            path = os.path.join(d, name)
            found[path] = os.lstat(path).st_size if name in files else -1
    return found


def _convert_cmd(src: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.convert", "--input", src, "--output", out, *RUNNER_ARGS, *extra]


@dataclass
class Mixed:
    root: str
    good: synthetic.Corpus
    bad: badcorpus.BadCorpus
    out: str
    run: badcorpus.Watched
    before: dict
    after: dict


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Mixed:
    """One convert run (subprocess, memory-watched) over good + bad corpora in one input folder."""
    base = str(tmp_path_factory.mktemp("mixed"))
    root = os.path.join(base, "input")
    good = synthetic.make_corpus(os.path.join(root, "good"), seed=0)
    bad = badcorpus.make_bad_corpus(os.path.join(root, "bad"), seed=0, tiny_files=10000)
    for path in [p for p in bad.files if p.endswith(EXCLUDE_FROM_MIXED)]:
        os.remove(path), bad.files.pop(path)
    out = os.path.join(base, "out")
    watched = [str(tmp_path_factory.getbasetemp()), REPO]
    before = {w: _snapshot(w, skip=out) for w in watched}
    run = badcorpus.run_watched(_convert_cmd(root, out), cwd=REPO, env=_env(), kill_above=WATCHDOG, timeout=900)
    after = {w: _snapshot(w, skip=out) for w in watched}
    print(f"mixed run: {run.seconds:.1f} s, peak RSS {run.peak_rss >> 20} MB, {len(bad.files)} bad files")
    return Mixed(root, good, bad, out, run, before, after)


def _instances(out: str) -> dict[str, dict]:
    assert os.path.isdir(os.path.join(out, "summary")), f"no summary tables in {out}: the job did not finish"
    return {r["source_uri"]: r for r in read_table(out, "instances").to_pylist()}


def _series_rows(out: str) -> list[dict]:
    assert os.path.isdir(os.path.join(out, "summary")), f"no summary tables in {out}: the job did not finish"
    return read_table(out, "series").to_pylist()


def test_the_job_finishes(mixed):
    run = mixed.run
    assert not run.killed_for_memory, f"killed at {run.peak_rss >> 20} MB RSS"
    assert badcorpus.job_finished(run.returncode, run.stdout), (
        f"exit {run.returncode}; stderr tail:\n{run.stderr[-3000:]}")


def test_every_file_appears_exactly_once(mixed):
    assert os.path.isdir(os.path.join(mixed.out, "summary")), "no summary tables: the job did not finish"
    uris = read_table(mixed.out, "instances").column("source_uri").to_pylist()
    counts = Counter(uris)
    assert not [u for u, n in counts.items() if n > 1]
    assert set(counts) == set(all_files(mixed.root))


def test_every_reason_is_documented_and_matches_the_file(mixed):
    rows = _instances(mixed.out)
    wrong = []
    for uri, row in rows.items():
        status, reason = row["status"], row["reason"] or ""
        if status != "converted" and not reason.startswith(badcorpus.KNOWN_REASON_PREFIXES):
            wrong.append((uri, status, reason, "undocumented reason"))
        expect = mixed.bad.files.get(uri)
        if expect is not None and not expect.accepts(status, reason):
            wrong.append((os.path.relpath(uri, mixed.bad.root), status, reason[:160], expect.category))
    assert not wrong, "\n".join(map(str, wrong))


def test_good_series_are_identical_to_a_good_only_run(mixed, corpus, converted):
    """Every volume byte, slices CSV, series JSON (minus URIs) and instance row of the good corpus."""
    mixed_files = set(all_files(mixed.out))
    for path in all_files(converted):
        rel = os.path.relpath(path, converted)
        other = os.path.join(mixed.out, rel)
        if rel.startswith("summary/"):
            continue
        assert other in mixed_files, rel
        data, got = open(path, "rb").read(), open(other, "rb").read()
        if rel.startswith("series/"):
            a, b = json.loads(data), json.loads(got)
            for record in (a, b):
                record.pop("zarr_uri"), record.pop("slices_uri"), record["provenance"].pop("input_fingerprint")
            assert a == b, rel
        elif rel.startswith("slices/"):
            assert got == data.replace(corpus.root.encode(), mixed.good.root.encode()), rel
        else:
            assert got == data, rel
    good_rows, rows = _instances(converted), _instances(mixed.out)
    for uri, row in good_rows.items():
        moved = rows[uri.replace(corpus.root, mixed.good.root, 1)]
        expected = {k: (v.replace(corpus.root, mixed.good.root) if isinstance(v, str) else v) for k, v in row.items()}
        assert moved == expected


def test_nothing_is_written_outside_the_output(mixed):
    for watched, before in mixed.before.items():
        after = mixed.after[watched]
        assert set(after) - set(before) == set(), f"created under {watched}"
    assert not os.path.exists("/abs") and not [p for p in os.listdir("/tmp") if p.startswith("dicomflow-escape")]
    out = os.path.realpath(mixed.out)
    for d, dirs, files in os.walk(mixed.out):
        for name in dirs + files:
            real = os.path.realpath(os.path.join(d, name))
            assert real.startswith(out + os.sep), real


def test_series_keys_are_safe_and_distinct_for_crafted_uids(mixed):
    rows = _instances(mixed.out)
    crafted = {path: rows[path] for path in mixed.bad.crafted_uids}
    keys = {row["series_key"] for row in crafted.values()}
    assert all(row["status"] == "converted" for row in crafted.values()), crafted
    assert len(keys) == len(crafted), "two crafted UIDs share a series key"
    series = _series_rows(mixed.out)
    for row in series:
        assert KEY_RE.match(row["series_key"]), row["series_key"]
        if row["zarr_uri"]:
            real = os.path.realpath(row["zarr_uri"])
            assert real == os.path.join(os.path.realpath(mixed.out), "volumes", row["series_key"] + ".zarr")


def test_disagreeing_slices_become_separate_stacks(mixed):
    series = _series_rows(mixed.out)
    for uid, n_stacks in mixed.bad.stacks.items():
        stacks = [r for r in series if r["series_instance_uid"] == uid]
        assert len(stacks) == n_stacks and {r["status"] for r in stacks} == {"converted"}, stacks
        if n_stacks == 1 and stacks[0]["n_slices"] == 1:
            assert stacks[0]["geometry"] == "single_slice"
        for row in stacks:  # each stack is one consistent volume whose slices match the CSV
            volume = zarr.open_group(row["zarr_uri"], mode="r")["0"][:]
            with open(schemas.slices_csv_uri(mixed.out, row["series_key"]), newline="") as handle:
                md5s = [r["pixel_md5"] for r in csv.DictReader(handle)]
            assert [slice_md5(plane) for plane in volume] == md5s


def test_ten_thousand_tiny_files_form_one_exact_volume(mixed):
    series = _series_rows(mixed.out)
    row = next(r for r in series if r["series_instance_uid"] == mixed.bad.tiny_series_uid)
    indexes = [int(os.path.basename(p)[1:6]) for p in mixed.bad.tiny_files]
    expected = np.stack([badcorpus.tiny_pixels(i) for i in sorted(indexes)]).astype(np.int16) - 1024
    volume = zarr.open_group(row["zarr_uri"], mode="r")["0"][:]
    assert row["geometry"] == "regular" and volume.shape == expected.shape
    assert np.array_equal(volume, expected)


# ---------------------------------------------------------------------------------- without Beam

_DECODE_EACH = r"""
import os, sys, warnings
warnings.simplefilter("ignore")
from dicom_io.header import read_header
from dicom_io import pixels
from dicom_io.errors import DicomflowError
for path in sys.argv[1:]:
    print("TRY", path, flush=True)
    try:
        with open(path, "rb") as fp:
            h = read_header(fp, path, os.path.getsize(path))
        with open(path, "rb") as fp:
            pixels.decode(fp, h)
        print("OK", flush=True)
    except DicomflowError as exc:
        print("OK", flush=True)
    except BaseException as exc:
        print("ESCAPED", type(exc).__name__, str(exc)[:200].replace("\n", " "), flush=True)
"""


def test_no_bad_file_escapes_dicom_io_errors_or_kills_the_process(tmp_path):
    """read_header + decode of every bad file: a DicomflowError or a result, never another exception
    (it would crash the job) nor a dead process (a decoder's abort takes the whole worker)."""
    corpus = badcorpus.make_bad_corpus(tmp_path / "bad", tiny_files=0)
    pending, problems = list(corpus.files), []
    while pending:
        run = badcorpus.run_watched([sys.executable, "-c", _DECODE_EACH, *pending], cwd=REPO, env=_env(),
                                    kill_above=WATCHDOG, timeout=300)
        lines = run.stdout.splitlines()
        tried = [line[4:] for line in lines if line.startswith("TRY ")]
        problems += [f"{tried[i]}: {line}" for i, line in enumerate(x for x in lines if not x.startswith("TRY "))
                     if line.startswith("ESCAPED")]
        if run.returncode == 0:
            break
        dead = tried[-1] if tried else pending[0]
        problems.append(f"{dead}: process died with exit {run.returncode} ({run.stderr.strip().splitlines()[-1:]})")
        pending = pending[pending.index(dead) + 1:]
    assert not problems, "\n".join(os.path.relpath(p, corpus.root) for p in problems)


@pytest.mark.parametrize("name", sorted(badcorpus.ABSURD_VALUES))
def test_absurd_header_values_end_in_a_recorded_outcome(tmp_path, name):
    """Header, plan and convert of one absurd-valued slice: a result or a DicomflowError, nothing else
    (an OverflowError in planning or rescaling would fail the whole series' DoFn, so the job)."""
    from dicom_io.convert import ConvertSettings, convert_stack
    from dicom_io.errors import DicomflowError
    from dicom_io.header import read_header
    from dicom_io.plan import plan_series

    corpus = badcorpus.BadCorpus(root=str(tmp_path))
    badcorpus._absurd(corpus, str(tmp_path))
    path = next(p for p in corpus.files if os.path.basename(p) == f"{name}.dcm")
    try:
        with open(path, "rb") as fp:
            h = read_header(fp, path, os.path.getsize(path))
        for stack in plan_series(h.series_instance_uid, [h]).stacks:
            result = convert_stack(stack, ConvertSettings(output=str(tmp_path / "out")))
            assert all(row["status"] == "converted" or row["reason"] for row in result.instances)
    except DicomflowError:
        pass


# ---------------------------------------------------------------------------------- bombs and memory


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> badcorpus.BadCorpus:
    return badcorpus.make_bombs(tmp_path_factory.mktemp("bombs"), deflate_bomb_bytes=1024**3, dangerous=True)


_ONE_BOMB = r"""
import os, sys, warnings
warnings.simplefilter("ignore")
from dicom_io.header import read_header
from dicom_io import pixels
from dicom_io.errors import DicomflowError
path = sys.argv[1]
try:
    with open(path, "rb") as fp:
        h = read_header(fp, path, os.path.getsize(path))
    with open(path, "rb") as fp:
        pixels.decode(fp, h)
    print("converted")
except DicomflowError as exc:
    print(str(exc))
"""


@pytest.mark.parametrize("name", ["j2k-65535x65535x1000.dcm", "native-65535x65535.dcm", "native-30000x30000.dcm",
                                  "rle-65535x65535x1000.dcm", "j2k-30000x30000.dcm", "j2k-siz-60000x60000.dcm",
                                  "deflate-1024MiB-65535x65535.dcm"])
def test_each_bomb_is_refused_in_bounded_memory(bombs, name):
    path = next(p for p in bombs.files if os.path.basename(p) == name)
    run = badcorpus.run_watched([sys.executable, "-c", _ONE_BOMB, path], cwd=REPO, env=_env(), kill_above=WATCHDOG,
                                timeout=120)
    assert not run.killed_for_memory and not run.timed_out, f"{name}: killed at {run.peak_rss >> 20} MB / {run.seconds:.0f} s"
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.peak_rss < MEMORY_LIMIT, f"{name}: peak RSS {run.peak_rss >> 20} MB"
    reason = run.stdout.strip().splitlines()[-1]
    assert bombs.files[path].accepts("converted" if reason == "converted" else "failed", reason), reason
    assert run.seconds < 60, f"{name}: {run.seconds:.0f} s of CPU for a {os.path.getsize(path)} byte file"


def test_convert_job_over_the_bombs_stays_under_1_gb(bombs, tmp_path):
    manifest = tmp_path / "bombs.csv"
    manifest.write_text("uri\n" + "".join(f"{p}\n" for p in bombs.files))
    out = str(tmp_path / "out")
    run = badcorpus.run_watched(_convert_cmd(str(manifest), out), cwd=REPO, env=_env(), kill_above=WATCHDOG,
                                timeout=300)
    assert not run.killed_for_memory, f"killed at {run.peak_rss >> 20} MB RSS"
    assert badcorpus.job_finished(run.returncode, run.stdout), run.stderr[-2000:]
    assert run.peak_rss < MEMORY_LIMIT, f"peak RSS {run.peak_rss >> 20} MB"
    rows = _instances(out)
    assert set(rows) == set(bombs.files)
    for path, expect in bombs.files.items():
        assert expect.accepts(rows[path]["status"], rows[path]["reason"]), (path, rows[path])


# ---------------------------------------------------------------------------------- the other pipelines


def test_manifest_job_lists_every_bad_file_once(mixed, tmp_path):
    out = str(tmp_path / "manifest")
    cmd = [sys.executable, "-m", "pipelines.manifest", "--input", mixed.bad.root, "--output", out, *RUNNER_ARGS]
    run = badcorpus.run_watched(cmd, cwd=REPO, env=_env(), kill_above=WATCHDOG, timeout=600)
    assert badcorpus.job_finished(run.returncode, run.stdout), run.stderr[-3000:]
    from pipelines.manifest import read_table as read_manifest_table

    table = read_manifest_table(out, schemas.MANIFEST_INSTANCES_PREFIX).to_pylist()
    counts = Counter(r["uri"] for r in table)
    assert not [u for u, n in counts.items() if n > 1]
    assert set(counts) == set(mixed.bad.files)
    unreadable = [r for r in table if not r["readable"]]
    assert all(r["reason"] for r in unreadable)


def test_verify_job_accepts_the_convert_output(mixed):
    run = badcorpus.run_watched([sys.executable, "-m", "pipelines.verify", "--output", mixed.out, *RUNNER_ARGS],
                                cwd=REPO, env=_env(), kill_above=WATCHDOG, timeout=600)
    assert badcorpus.job_finished(run.returncode, run.stdout), run.stderr[-3000:]
