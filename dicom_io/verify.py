"""Verification of a converted OUT, Beam-free: each check re-derives a fact and compares it.

Per series (one DoFn call each): the commit record exists; every slice read back from Zarr has the
MD5 that slices/{key}.csv records; every source file decodes (header.read_header + pixels.decode +
pixels.to_stored, as convert does) to the same MD5; the affine places every slice at its
(0020,0032) ImagePositionPatient; the instances table accounts for every source of the slices.
Per file: a source_uri appears once in the instances table and still exists.
A check never raises for bad data: it returns failures ("check: detail") with what differed.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dicom_io import geometry, pixels, readers, render, schemas, storage, tables
from dicom_io.errors import DicomflowError
from dicom_io.header import read_header
from dicom_io.volume import slice_md5

MAX_LISTED = 20  # failures listed per check and series; the rest are counted
POSITION_TOLERANCE_MM = 1e-3
COMMIT, VOLUME, SOURCE, GEOMETRY, INSTANCES, RENDER = "commit", "volume", "source", "geometry", "instances", "render"
EXACT_GEOMETRIES = (geometry.REGULAR, geometry.TILTED, geometry.SINGLE_SLICE)
DUPLICATE, MISSING = "duplicate", "missing"


@dataclass
class CheckResult:
    """Outcome of one check over one series: how many facts held, and what differed for the others."""

    check: str
    passed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def ok(self, n: int = 1) -> None:
        self.passed += n

    def fail(self, detail: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_LISTED:
            self.failures.append(f"{self.check}: {detail}")

    def lines(self) -> list[str]:
        hidden = self.failed - len(self.failures)
        return self.failures + ([f"{self.check}: ... and {hidden} more"] if hidden > 0 else [])


@dataclass(frozen=True)
class VerifySettings:
    """What verify_series needs from the job's options."""

    output: str
    max_pixel_bytes: int = pixels.DEFAULT_MAX_PIXEL_BYTES
    position_tolerance_mm: float = POSITION_TOLERANCE_MM
    thumbnails: bool = True


# ---- sampling -----------------------------------------------------------------------------------

def sample_rank(series_key: str, seed: int) -> str:
    """Deterministic pseudo-random rank: the N smallest ranks are the sample for `seed`."""
    return hashlib.sha256(f"{seed}:{series_key}".encode("utf-8", "surrogatepass")).hexdigest()


# ---- the checks ---------------------------------------------------------------------------------

def open_volume(output: str, key: str) -> Any:
    """Array "0" of the volume of `key` (directory or zip store, dicom_io.readers), read only."""
    return readers.open_volume(output, key).array


def _slabs(array: Any, record: dict[str, Any]) -> Iterable[tuple[int, np.ndarray]]:
    """(plane index, slab) over the array in storage order, one shard (else chunk) deep: each
    stored chunk decoded once; a 4D array volume after volume."""
    four_d = (record.get("n_volumes") or 1) > 1
    depth = (getattr(array, "shards", None) or array.chunks)[1 if four_d else 0]
    n_z = array.shape[1] if four_d else array.shape[0]
    for t in range(array.shape[0] if four_d else 1):
        for z0 in range(0, n_z, depth):
            yield t * n_z + z0, np.asarray(array[t, z0:z0 + depth] if four_d else array[z0:z0 + depth])


def check_volume(array: Any, record: dict[str, Any], slices: list[dict[str, Any]]) -> CheckResult:
    """Shape as committed, (t_index, z_index) in storage order, and each stored slice's MD5 equal
    to the CSV's pixel_md5."""
    result = CheckResult(VOLUME)
    shape, expected = tuple(array.shape), tuple(record.get("shape") or ())
    n_volumes = record.get("n_volumes") or 1
    n_z = shape[1] if n_volumes > 1 else (shape[0] if shape else 0)
    if shape != expected or len(slices) != n_volumes * n_z:
        result.fail(f"Zarr shape {list(shape)}, series JSON shape {list(expected)}, slices CSV {len(slices)} rows")
        return result
    result.ok()
    if [(r.get("t_index") or 0, r["z_index"]) for r in slices] != [divmod(i, n_z) for i in range(len(slices))]:
        result.fail("slices CSV (t_index, z_index) is not volume after volume, 0..n-1 in order")
        return result
    for i0, slab in _slabs(array, record):
        for offset, plane in enumerate(slab):
            i = i0 + offset
            digest = slice_md5(plane)
            if digest == slices[i]["pixel_md5"]:
                result.ok()
            else:
                t, z = divmod(i, n_z)
                where = f"t={t} z={z}" if n_volumes > 1 else f"z={z}"
                result.fail(f"{where}: stored slice MD5 {digest} != slices CSV {slices[i]['pixel_md5']}")
    return result


def source_md5s(uri: str, frames: Sequence[int] | None, dtype: str, max_bytes: int,
                scaling: str = "dv") -> list[str] | str:
    """MD5 of `frames` of one source decoded as convert does (every frame when None), or why it could not be read."""
    try:
        size = storage.size_of(uri)
        with storage.open_source(uri, block_size=8 * 1024 * 1024) as fp:
            header = read_header(fp, uri, size)
            fp.seek(0)
            decoded = pixels.scaled(pixels.decode(fp, header, max_bytes), header, scaling)
        frames = range(len(decoded)) if frames is None else frames
        if max(frames) >= len(decoded):
            return f"source has {len(decoded)} frames, slices CSV names frame {max(frames)}"
        return [slice_md5(pixels.to_stored(decoded[f], dtype)) for f in frames]
    except FileNotFoundError as exc:
        return f"source missing: {exc}"
    except (DicomflowError, OSError) as exc:
        return str(exc)


def check_sources(slices: list[dict[str, Any]], dtype: str, max_bytes: int,
                  executor: Executor | None = None, scaling: str = "dv") -> CheckResult:
    """Every source re-decoded (on `executor` when given) to the MD5 the slices CSV recorded."""
    result = CheckResult(SOURCE)
    by_uri: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in slices:
        by_uri[row["source_uri"]].append(row)
    uris = list(by_uri)
    frames = [[r["frame_index"] or 0 for r in by_uri[u]] for u in uris]
    mapper: Callable = executor.map if executor is not None else map
    n = len(uris)
    for uri, outcome in zip(uris, mapper(source_md5s, uris, frames, [dtype] * n, [max_bytes] * n, [scaling] * n)):
        rows = by_uri[uri]
        if isinstance(outcome, str):
            for row in rows:
                result.fail(f"z={row['z_index']}: {uri}: {outcome}")
            continue
        for row, digest in zip(rows, outcome):
            if digest == row["pixel_md5"]:
                result.ok()
            else:
                result.fail(f"z={row['z_index']}: {uri} frame {row['frame_index']} decodes to MD5 {digest} "
                            f"!= slices CSV {row['pixel_md5']}")
    return result


def check_sources_decode(uris: Sequence[str], dtype: str, max_bytes: int,
                         executor: Executor | None = None, scaling: str = "dv") -> CheckResult:
    """A resampled volume's planes are interpolated, not any source's pixels: each source must still
    decode and fit the volume dtype (one check per file), nothing more can be compared."""
    result = CheckResult(SOURCE)
    mapper: Callable = executor.map if executor is not None else map
    n = len(uris)
    for uri, outcome in zip(uris, mapper(source_md5s, uris, [None] * n, [dtype] * n, [max_bytes] * n, [scaling] * n)):
        if isinstance(outcome, str):
            result.fail(f"{uri}: {outcome}")
        else:
            result.ok()
    return result


def _position(row: dict[str, Any]) -> np.ndarray | None:
    values = (row["ipp_x"], row["ipp_y"], row["ipp_z"])
    return None if any(v is None for v in values) else np.asarray(values, dtype=np.float64)


def _place(affine: np.ndarray, z: int, ipp: np.ndarray, tol: float, result: CheckResult) -> None:
    expected = (affine @ np.array([0.0, 0.0, float(z), 1.0]))[:3]
    off = float(np.linalg.norm(expected - ipp))
    if off <= tol:
        result.ok()
    else:
        result.fail(f"z={z}: affine places the slice at {np.round(expected, 4).tolist()}, "
                    f"ImagePositionPatient is {ipp.tolist()} ({off:.4g} mm off)")


def check_geometry(record: dict[str, Any], slices: list[dict[str, Any]],
                   tol_mm: float = POSITION_TOLERANCE_MM) -> CheckResult:
    """affine_lps @ (0, 0, z, 1) = (0020,0032) of slice z (regular, tilted, single_slice); for
    irregular_spacing the first and last slice, and positions strictly increasing along the normal."""
    result = CheckResult(GEOMETRY)
    kind = record.get("geometry")
    positions = [_position(r) for r in slices]
    if kind == geometry.NO_GEOMETRY or (kind == geometry.SINGLE_SLICE and not record.get("affine_lps")):
        # nothing to place: stacked by InstanceNumber, or one image without a usable (0020,0032) /
        # (0020,0037) / (0028,0030) (projection radiographs, degenerate orientation)
        return result
    if not record.get("affine_lps"):
        result.fail(f"geometry {kind} but no affine_lps")
        return result
    affine = np.asarray(record["affine_lps"], dtype=np.float64)
    if not positions or any(p is None for p in positions):
        result.fail(f"geometry {kind} but the slices CSV lacks positions")
        return result
    if kind in EXACT_GEOMETRIES:  # every volume of a 4D array on the same grid
        for row, ipp in zip(slices, positions):
            _place(affine, row["z_index"], ipp, tol_mm, result)
    elif kind == geometry.IRREGULAR_SPACING:
        positions = [p for row, p in zip(slices, positions) if not row.get("t_index")]
        for z in sorted({0, len(positions) - 1}):
            _place(affine, z, positions[z], tol_mm, result)
        normal = geometry.slice_normal(np.concatenate([affine[:3, 0], affine[:3, 1]]))
        depth = np.asarray(positions) @ normal
        for z in range(1, len(depth)):
            if depth[z] > depth[z - 1]:
                result.ok()
            else:
                result.fail(f"z={z}: position along the normal {depth[z]:.4f} mm is not above z={z - 1} "
                            f"({depth[z - 1]:.4f} mm)")
    else:
        result.fail(f"unknown geometry class {kind!r}")
    return result


def check_instances(key: str, slices: list[dict[str, Any]], instances: list[dict[str, Any]],
                    resampled: bool = False) -> CheckResult:
    """Each source of the slices is one instances row, converted into this series; and (unless the volume
    was resampled: its CSV names one source per plane) no converted row of this series lacks a slice."""
    result = CheckResult(INSTANCES)
    by_uri: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in instances:
        by_uri[row["source_uri"]].append(row)
    sources = list(dict.fromkeys(r["source_uri"] for r in slices))
    for uri in sources:
        rows = by_uri.get(uri, [])
        if not rows:
            result.fail(f"{uri}: a slice source with no instances row for this series")
        elif len(rows) > 1:
            result.fail(f"{uri}: {len(rows)} instances rows")
        elif rows[0]["status"] != schemas.CONVERTED:
            result.fail(f"{uri}: instances row says {rows[0]['status']} ({rows[0].get('reason') or ''})")
        else:
            result.ok()
    unused = [] if resampled else sorted(set(by_uri) - set(sources))
    for uri in unused:
        if any(r["status"] == schemas.CONVERTED for r in by_uri[uri]):
            result.fail(f"{uri}: instances row says converted into {key}, but no slice comes from it")
    return result


# ---- one series ---------------------------------------------------------------------------------

def thumbnail_names(key: str) -> tuple[str, str]:
    """File names under OUT/verify/thumbnails/: middle slice, montage."""
    return f"{key}_middle.jpg", f"{key}_montage.jpg"


def write_thumbnails(output: str, key: str, array: Any, record: dict[str, Any]) -> list[str]:
    """Middle slice and montage as JPEG under OUT/verify/thumbnails/; returns their names."""
    display = render.display_of(record)
    spacing = record.get("spacing") or [None, None, None]
    array = render.first_volume(array, record)
    middle = render.slice_image(np.asarray(array[array.shape[0] // 2]), spacing[1:], display)
    grid = render.montage(array, spacing, z_step=render.z_step_from_affine(record.get("affine_lps")), display=display)
    names = thumbnail_names(key)
    for name, image in zip(names, (middle, grid)):
        storage.write_bytes(schemas.thumbnail_uri(output, name), render.encode(image, "jpeg"))
    return list(names)


def _load_record(output: str, key: str, commit: CheckResult) -> dict[str, Any] | None:
    uri = schemas.series_json_uri(output, key)
    if not storage.exists(uri):
        commit.fail(f"no commit record {uri}")
        return None
    record = json.loads(storage.read_bytes(uri))
    if record.get("status") != schemas.CONVERTED:
        commit.fail(f"commit record status is {record.get('status')!r}")
        return None
    commit.ok()
    return record


def check_links(output: str, key: str, linked: dict[str, Any], commit: CheckResult) -> None:
    """Contract 3: the `*_path` links of a series JSON or table row name this series' files under OUT
    (where OUT is now: the links are relative). Contract-2 records have none to check."""
    expected = {"zarr_path": schemas.committed_volume_uri(output, key),
                "slices_path": schemas.slices_csv_uri(output, key)}
    for name, uri in expected.items():
        if linked.get(name) and schemas.resolve_output_path(output, linked[name]) != uri:
            commit.fail(f"{name} {linked[name]!r} does not name {uri}")


def verify_row(series: dict[str, Any], results: list[CheckResult], record: dict[str, Any] | None,
               thumbnails: list[str]) -> dict[str, Any]:
    """One row of OUT/verify/verify-*.parquet."""
    failed = sum(r.failed for r in results)
    source = record or series
    return {
        "series_key": series["series_key"], "series_instance_uid": series.get("series_instance_uid"),
        "status": schemas.OK if failed == 0 else schemas.FAILED,
        "checks_passed": sum(r.passed for r in results), "checks_failed": failed,
        "failures": [line for r in results for line in r.lines()],
        "n_slices": source.get("n_slices"), "geometry": source.get("geometry"),
        "shape": list(source.get("shape") or []) or None, "dtype": source.get("dtype"),
        "thumbnails": thumbnails,
    }


def verify_series(series: dict[str, Any], instances: list[dict[str, Any]], settings: VerifySettings,
                  executor: Executor | None = None) -> dict[str, Any]:
    """Every check of one converted series (a summary series row) and its instances rows -> verify row."""
    key, out = series["series_key"], settings.output
    commit = CheckResult(COMMIT)
    results = [commit]
    record = _load_record(out, key, commit)
    if record is None:
        return verify_row(series, results, None, [])
    for linked in (record, series):
        check_links(out, key, linked, commit)
    try:
        slices = tables.parse_slices_csv(storage.read_bytes(schemas.slices_csv_uri(out, key)))
        array = open_volume(out, key)
    except (FileNotFoundError, OSError, KeyError, ValueError) as exc:
        commit.fail(f"cannot read the slices CSV or volume: {type(exc).__name__}: {exc}")
        return verify_row(series, results, record, [])
    resampled = bool(record.get("resampled_from"))
    results.append(check_volume(array, record, slices))
    if resampled:
        uris = sorted({r["source_uri"] for r in instances if r["status"] == schemas.CONVERTED}
                      | {r["source_uri"] for r in slices})
        results.append(check_sources_decode(uris, record["dtype"], settings.max_pixel_bytes, executor,
                                            record.get("philips_scaling") or "dv"))
    else:
        results.append(check_sources(slices, record["dtype"], settings.max_pixel_bytes, executor,
                                     record.get("philips_scaling") or "dv"))
    results.append(check_geometry(record, slices, settings.position_tolerance_mm))
    results.append(check_instances(key, slices, instances, resampled))
    thumbnails: list[str] = []
    if settings.thumbnails:
        rendering = CheckResult(RENDER)
        try:
            thumbnails = write_thumbnails(out, key, array, record)
            rendering.ok()
        except (ValueError, TypeError, OSError) as exc:
            rendering.fail(f"{type(exc).__name__}: {exc}")
        results.append(rendering)
    return verify_row(series, results, record, thumbnails)


def error_row(series: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The dead-letter verify row of a series whose checks raised unexpectedly."""
    crash = CheckResult("error")
    crash.fail(f"{type(exc).__name__}: {exc}")
    return verify_row(series, [crash], None, [])


# ---- per file -----------------------------------------------------------------------------------

def file_row(source_uri: str, series_key: str | None, check: str, detail: str) -> dict[str, Any]:
    """One row of OUT/verify/files-*.parquet."""
    return {"source_uri": source_uri, "series_key": series_key, "check": check, "detail": detail}


def duplicate_rows(source_uri: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A source_uri listed more than once in the instances table (each file must appear exactly once)."""
    if len(rows) <= 1:
        return []
    statuses = ", ".join(sorted(f"{r['status']}:{r.get('series_key') or '-'}" for r in rows))
    return [file_row(source_uri, rows[0].get("series_key"), DUPLICATE, f"{len(rows)} instances rows ({statuses})")]


def missing_rows(row: dict[str, Any], exists: Callable[[str], bool] = storage.exists) -> list[dict[str, Any]]:
    """An instances row whose file is gone (rows convert already recorded as disappeared excepted)."""
    if (row.get("reason") or "").startswith("source disappeared") or exists(row["source_uri"]):
        return []
    return [file_row(row["source_uri"], row.get("series_key"), MISSING, f"no longer exists (status {row['status']})")]
