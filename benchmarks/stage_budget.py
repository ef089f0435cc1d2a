"""Per-stage budget of the convert job: CPU time of each stage per file and per slice, measured alone.

    python -m benchmarks.stage_budget --corpus DIR [--files 300]

Each stage runs over the same --files files of a bench corpus (512x512 int16 CT), one process, warm
page cache, and reports CPU ms per file (process_time, so other load on the machine does not count):
open + read, header parse (dicomflow's bounded parse + record), bare `dcmread(stop_before_pixels)`
for comparison, native pixel read, rescale to int16, MD5 of the stored slice, Blosc zstd-3 +
bitshuffle encode of one slice, the streaming Zarr writer per slice (encode + sharding + write),
Beam's per-element cost in the in-process runner, the interpreter's imports, and a fork of a worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable


def _cpu_ms(label: str, n: int, fn: Callable[[], None], rows: list) -> float:
    start = time.process_time()
    fn()
    ms = (time.process_time() - start) * 1000 / n
    rows.append((label, ms))
    print(f"{label:58s} {ms:8.3f} ms", flush=True)
    return ms


def _imports_s() -> tuple[float, float]:
    """(wall s, CPU s) of `import pipelines.convert` in a fresh interpreter."""
    code = "import time, os; import pipelines.convert; t = os.times(); print(t.user + t.system)"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return time.perf_counter() - start, float(out.stdout.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--files", type=int, default=300)
    args = parser.parse_args(argv)

    import apache_beam as beam
    import pydicom
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from numcodecs import Blosc

    from dicom_io import pixels, storage
    from dicom_io.header import read_header
    from dicom_io.volume import VolumeWriter, choose_layout, slice_md5

    files = sorted(str(p) for p in args.corpus.rglob("*") if p.is_file())[: args.files]
    n, rows = len(files), []
    sizes = {p: os.path.getsize(p) for p in files}
    _cpu_ms("open + read whole file (storage.open_source)", n,
            lambda: [storage.open_source(p, block_size=8 << 20).read() for p in files], rows)
    headers = []
    _cpu_ms("header: dicomflow read_header (bounded parse + record)", n,
            lambda: headers.extend(read_header(storage.open_source(p), p, sizes[p]) for p in files), rows)
    _cpu_ms("header: bare pydicom dcmread(stop_before_pixels)", n,
            lambda: [pydicom.dcmread(p, stop_before_pixels=True) for p in files], rows)
    stored = []
    _cpu_ms("pixels: native read from the recorded offset", n,
            lambda: stored.extend(pixels.read_native(storage.open_source(h.source_uri, 8 << 20), h) for h in headers),
            rows)
    planes = []
    _cpu_ms("pixels: rescale to int16 (slope/intercept, in place as decode does)", n,
            lambda: planes.extend(pixels.to_stored(pixels.rescale(s, h, owned=True), "int16").reshape(h.rows, h.columns)
                                  for s, h in zip(stored, headers)),
            rows)
    _cpu_ms("MD5 of the stored slice (pixel_md5)", n, lambda: [slice_md5(p) for p in planes], rows)
    blosc = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)
    _cpu_ms("Blosc zstd 3 + bitshuffle, one slice (numcodecs)", n, lambda: [blosc.encode(p) for p in planes], rows)
    with tempfile.TemporaryDirectory() as tmp:
        layout = choose_layout(n, planes[0].shape[0], planes[0].shape[1], "int16")

        def write() -> None:
            writer = VolumeWriter(os.path.join(tmp, "v.zarr"), layout, {}, 3)
            for plane in planes:
                writer.append(plane)
            writer.close()

        _cpu_ms("Zarr VolumeWriter per slice (encode + shard + write)", n, write, rows)
    elements = list(range(20_000))

    def beam_map() -> None:
        with beam.Pipeline(runner=FnApiRunner()) as p:
            _ = p | beam.Create(elements) | "Reshuffle" >> beam.Reshuffle() | beam.Map(lambda x: x)

    _cpu_ms("Beam in-process runner, per element (Create|Reshuffle|Map)", len(elements), beam_map, rows)
    wall, cpu = _imports_s()
    print(f"{'imports of pipelines.convert (fresh interpreter)':58s} {cpu * 1000:8.0f} ms CPU, {wall:.2f} s wall")
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print(f"{'fork + exit of a worker process':58s} {(time.perf_counter() - start) * 1000:8.1f} ms wall")


if __name__ == "__main__":
    main()
