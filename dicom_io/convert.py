"""Convert one planned stack into its outputs, with the commit protocol.

Protocol (README: "Commit protocol"): delete any partial volume, write the Zarr volume,
then the slices CSV, then the series JSON last. The JSON is the commit record: a series
is complete iff its JSON exists and its input fingerprint matches. Every write is
deterministic, so a retried or duplicated attempt writes the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np

from dicom_io import geometry, ome, pixels, previews, resample, schemas, storage, zipstore
from dicom_io.errors import DicomflowError, StorageError, ValuesDoNotFitError
from dicom_io.header import InstanceHeader
from dicom_io.plan import SeriesPlan, SliceRef, StackPlan
from dicom_io.volume import ARRAY_NAME, COMPRESSION_LEVEL, VolumeWriter, choose_layout, slice_md5

PIPELINE_VERSION = "dicomflow-0.1.0"
TILT_MODES = ("keep", "resample")
IRREGULAR_MODES = ("keep", "resample", "fail")
READ_AHEAD = 8  # instances decoded ahead of the writer: bounds memory, hides storage latency


@dataclass(frozen=True)
class ConvertSettings:
    """What convert_stack needs from the job's options."""

    output: str
    overwrite: bool = False
    max_pixel_bytes: int = pixels.DEFAULT_MAX_PIXEL_BYTES
    compression_level: int = COMPRESSION_LEVEL  # Blosc zstd level, 1 (fastest) to 9
    previews: previews.PreviewSettings = previews.PreviewSettings()
    tilt: str = "keep"  # TILT_MODES
    irregular: str = "keep"  # IRREGULAR_MODES
    store: str = schemas.STORE_DIRECTORY  # schemas.VOLUME_STORES: volumes/{key}.zarr or volumes/{key}.zarr.zip
    four_d: bool = True  # volumes of one grid as one (t, z, y, x) array; False: a 3D stack each
    philips_scaling: str = "dv"  # pixels.PHILIPS_SCALINGS
    pyramid_levels: int = 1  # OME-Zarr multiscale levels: 1 = array "0" only


@dataclass
class StackResult:
    """Rows for the two tables plus counters for metrics."""

    series: dict[str, Any]
    instances: list[dict[str, Any]]
    bytes_written: int = 0
    reused: bool = False
    slices: list[dict[str, Any]] = field(default_factory=list)


class StackFailed(DicomflowError):
    """One instance of a stack could not become a slice; the whole stack is not written."""

    def __init__(self, header: InstanceHeader | None, reason: str):
        super().__init__(f"{header.source_uri}: {reason}" if header else reason)
        self.header, self.reason = header, reason  # header None: the stack as a whole


def spacing_zyx(plan: StackPlan) -> list[float | None]:
    """(z, y, x) mm; z only when the positions show a uniform step, y/x from (0028,0030)."""
    ps = plan.first.pixel_spacing
    row, col = (ps[0], ps[1]) if ps else (None, None)
    return [plan.ordering.spacing_z, row, col]


def output_grid(plan: StackPlan, settings: ConvertSettings) -> resample.Grid | None:
    """The resampling grid when --tilt / --irregular ask for one and the stack needs it (3D stacks only)."""
    ordering, orientation = plan.ordering, plan.slices[0].orientation
    if plan.n_volumes > 1:
        return None
    positions = [s.position for s in plan.slices]
    if ordering.geometry == geometry.TILTED and settings.tilt == "resample":
        return resample.tilt_grid(positions, orientation, plan.first.pixel_spacing or (1.0, 1.0))
    if ordering.geometry == geometry.IRREGULAR_SPACING and settings.irregular == "resample":
        return resample.uniform_grid(positions, orientation, ordering.spacing_min)
    return None


def dicom_attributes(plan: StackPlan, grid: resample.Grid | None = None) -> dict[str, Any]:
    """The `dicom` block of the Zarr group attributes and the series JSON."""
    first, ordering = plan.first, plan.ordering
    affine = None
    origin, orientation = plan.slices[0].position, plan.slices[0].orientation
    if orientation and origin and first.pixel_spacing and ordering.step_vector:
        affine = geometry.affine_lps(orientation, origin, first.pixel_spacing, ordering.step_vector)
    if grid is not None:
        return _resampled_attributes(plan, grid, orientation)
    return {
        "series_key": plan.series_key,
        "series_instance_uid": first.series_instance_uid or None,
        "study_instance_uid": first.study_instance_uid,
        "stack_index": plan.stack_index,
        "split_by": list(plan.split_by),
        "stack_attributes": plan.stack_attributes,
        "modality": first.modality,
        "n_slices": plan.n_slices,
        "n_volumes": plan.n_volumes,
        "volumes": list(plan.volumes),
        "shape": ([plan.n_volumes] if plan.n_volumes > 1 else []) + [plan.n_slices, first.plane_rows,
                                                                       first.plane_columns] + ([3] if plan.colour else []),
        "dtype": plan.dtype,
        "spacing": spacing_zyx(plan),
        "affine_lps": affine,
        "geometry": ordering.geometry,
        "order_by": ordering.order_by,
        "spacing_min": ordering.spacing_min,
        "spacing_max": ordering.spacing_max,
        "max_gap": ordering.max_gap,
        "tilt_degrees": ordering.tilt_degrees,
        "monochrome1": first.photometric == "MONOCHROME1",
        "resampled_from": None,
        "philips_scaling": plan.philips_scaling,
        "tags": first.series_tags,
    }


def _resampled_attributes(plan: StackPlan, grid: resample.Grid, orientation) -> dict[str, Any]:
    """Attributes of the resampled volume: a regular grid, and what it was made from."""
    attrs = dicom_attributes(plan)
    step = float(sum(v * v for v in grid.step_vector) ** 0.5)
    n = len(grid.positions)
    attrs.update({
        "n_slices": n, "shape": [n] + attrs["shape"][1:], "dtype": "float32",
        "spacing": [step] + attrs["spacing"][1:], "geometry": geometry.REGULAR,
        "affine_lps": geometry.affine_lps(orientation, grid.positions[0], plan.first.pixel_spacing or (1.0, 1.0),
                                          grid.step_vector),
        "resampled_from": plan.ordering.geometry,
    })
    return attrs


def ome_attributes(plan: StackPlan, dicom: dict[str, Any], levels: int = 1) -> dict[str, Any]:
    """OME-Zarr 0.5 `ome` (dicom_io/ome.py). Omitted for colour: NGFF forbids a trailing c axis."""
    if plan.colour:
        return {}
    z, y, x = dicom["spacing"]
    if z is None and dicom["resampled_from"] is None and plan.ordering.step_vector:  # mean step for viewers; `dicom.spacing` stays null
        z = abs(sum(v * v for v in plan.ordering.step_vector) ** 0.5)
    scale = [float(v) if v else 1.0 for v in (z, y, x)]
    return ome.ome_attributes(plan.series_key, dicom, scale, plan.n_volumes, levels)


def _slices_csv(rows: list[dict[str, Any]], key: str) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=schemas.SLICE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "series_key": key} for row in rows)
    return buffer.getvalue().encode("utf-8", "surrogateescape")


def _load(h: InstanceHeader, frames: list[int], dtype: str, max_bytes: int, scaling: str = "dv"
          ) -> tuple[InstanceHeader, list, list[str]]:
    """Read and decode one instance (Philips values scaled as asked), keep `frames` (in that order)
    cast to `dtype`, with their MD5s."""
    try:
        with storage.open_source(h.source_uri, block_size=8 * 1024 * 1024) as fp:
            size = fp.seek(0, 2) if storage.compression_of(h.source_uri) is None else storage.size_of(h.source_uri)
            if size != h.size_bytes:  # the header pass described another file
                raise StackFailed(h, f"source changed since its header was read ({h.size_bytes} -> {size} bytes)")
            fp.seek(0)
            decoded = pixels.scaled(pixels.decode(fp, h, max_bytes), h, scaling)
        planes = [pixels.to_stored(decoded[f], dtype) for f in frames]
    except FileNotFoundError as exc:
        raise StackFailed(h, f"source disappeared: {exc}") from exc
    except (StorageError, StackFailed, ValuesDoNotFitError):
        raise
    except (EOFError, zlib.error) as exc:  # a truncated or corrupt .gz source
        raise StackFailed(h, f"decode error: compressed file unreadable: {type(exc).__name__}: {exc}") from exc
    except DicomflowError as exc:
        raise StackFailed(h, str(exc)) from exc
    except ArithmeticError as exc:  # absurd rescale values
        raise StackFailed(h, f"invalid image: {type(exc).__name__}: {exc}") from exc
    return h, planes, [slice_md5(plane) for plane in planes]


def _runs(plan: StackPlan) -> list[tuple[InstanceHeader, list[SliceRef]]]:
    """Consecutive slices from one instance: each run is one decode (an enhanced file once)."""
    runs: list[tuple[InstanceHeader, list[SliceRef]]] = []
    for s in plan.slices:
        if runs and runs[-1][0] is s.header:
            runs[-1][1].append(s)
        else:
            runs.append((s.header, [s]))
    return runs


def _loaded(plan: StackPlan, max_bytes: int, executor: Executor | None, scaling: str = "dv") -> Iterator[tuple]:
    """(slices, planes, md5s) per run in z order, decoded up to READ_AHEAD runs ahead on `executor`."""
    runs = _runs(plan)
    if executor is None:
        for h, refs in runs:
            yield refs, *_load(h, [r.frame for r in refs], plan.dtype, max_bytes, scaling)[1:]
        return
    pending: deque = deque()
    try:
        for h, refs in runs:
            pending.append((refs, executor.submit(_load, h, [r.frame for r in refs], plan.dtype, max_bytes, scaling)))
            if len(pending) >= READ_AHEAD:
                refs_done, future = pending.popleft()
                yield refs_done, *future.result()[1:]
        while pending:
            refs_done, future = pending.popleft()
            yield refs_done, *future.result()[1:]
    finally:
        for _, future in pending:
            future.cancel()


def _slice_row(i: int, plan: StackPlan | None, ref: SliceRef, position, digest: str) -> dict[str, Any]:
    """Row of plane `i` (in storage order: volume after volume) of the slices CSV; `plan` None for a
    resampled (3D) output, whose planes are not the plan's slices."""
    ipp = position or (None, None, None)
    t, z = divmod(i, plan.n_slices) if plan is not None else (0, i)
    return {"z_index": z, "t_index": t, "sop_instance_uid": ref.header.sop_instance_uid, "instance_number": ref.header.instance_number,
            "ipp_x": ipp[0], "ipp_y": ipp[1], "ipp_z": ipp[2], "source_uri": ref.header.source_uri,
            "pixel_md5": digest, "frame_index": ref.frame, "preview_uri": None, "preview_path": None}


class _SlicePreviews:
    """--previews=all: each plane encoded and written on the executor while the volume streams."""

    def __init__(self, plan: StackPlan, dicom: dict[str, Any], settings: ConvertSettings, executor: Executor | None):
        self._plan, self._dicom, self._settings, self._executor = plan, dicom, settings, executor
        self._futures: list = []
        self.enabled = settings.previews.mode == "all"

    def add(self, row: dict[str, Any], ref: SliceRef, plane: Any) -> None:
        if not self.enabled:
            return
        p = self._settings.previews
        plane_index = row["t_index"] * self._plan.n_slices + row["z_index"]  # volume after volume for 4D
        uri = previews.slice_preview_uri(self._settings.output, p, self._plan.series_key, plane_index,
                                         ref.header.sop_instance_uid, ref.header.label, ref.frame,
                                         ref.header.n_planes)
        row["preview_uri"], row["preview_path"] = uri, schemas.relative_to_output(self._settings.output, uri)
        if self._executor is None:
            previews.write_slice(uri, plane, self._dicom, p)
        else:
            self._futures.append(self._executor.submit(previews.write_slice, uri, plane, self._dicom, p))

    def wait(self) -> None:
        for future in self._futures:
            future.result()


def _write_volume(plan: StackPlan, uri: str, attributes: dict[str, Any], settings: ConvertSettings,
                  executor: Executor | None = None, grid: resample.Grid | None = None) -> list[dict[str, Any]]:
    """Stream the stack into Zarr (through `grid` when resampling); rows for the slices CSV."""
    first, max_bytes = plan.first, settings.max_pixel_bytes
    for h in plan.instances:  # header-only size checks before the shard buffer is allocated
        try:
            pixels.check_size(h, max_bytes)
        except DicomflowError as exc:
            raise StackFailed(h, str(exc)) from exc
    dicom = attributes["dicom"]
    layout = choose_layout(dicom["n_slices"], first.plane_rows, first.plane_columns, dicom["dtype"],
                           3 if plan.colour else 1, dicom["n_volumes"])
    writer = VolumeWriter(uri, layout, attributes, settings.compression_level)
    slice_previews = _SlicePreviews(plan, dicom, settings, executor)
    try:
        rows = _stream(plan, writer, slice_previews, _loaded(plan, max_bytes, executor, settings.philips_scaling),
                       grid)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    if "ome" in attributes:  # the smaller levels, from the written array: part of the volume, before CSV and JSON
        ome.write_pyramid(uri, attributes["ome"], settings.compression_level)
    slice_previews.wait()
    if settings.previews.mode == "middle":
        _series_previews(uri, dicom, settings, plan.series_key, rows)
    return rows


def _stream(plan: StackPlan, writer: VolumeWriter, slice_previews: _SlicePreviews, loaded: Iterator[tuple],
            grid: resample.Grid | None) -> list[dict[str, Any]]:
    """Append every decoded plane (resampled through `grid` when given); the slices CSV rows."""
    rows: list[dict[str, Any]] = []
    if grid is None:
        for refs, planes, digests in loaded:
            for ref, plane, digest in zip(refs, planes, digests):
                writer.append(plane)
                rows.append(_slice_row(len(rows), plan, ref, ref.position, digest))
                slice_previews.add(rows[-1], ref, plane)
    else:  # each output plane is recorded with the lower of the input slices it was made from
        inputs = (plane for _, planes, _ in loaded for plane in planes)
        for z, plane in enumerate(resample.resample(inputs, grid)):
            writer.append(plane)
            ref = plan.slices[grid.sources[z][0]]
            rows.append(_slice_row(z, None, ref, grid.positions[z], slice_md5(plane)))
            slice_previews.add(rows[-1], ref, plane)
    return rows


def _write_to_store(plan: StackPlan, uri: str, attributes: dict[str, Any], settings: ConvertSettings,
                    executor: Executor | None, grid: resample.Grid | None) -> list[dict[str, Any]]:
    """_write_volume into the volume's directory, or (--store zip) into a scratch tree put at `uri` as one object."""
    if settings.store != schemas.STORE_ZIP:
        return _write_volume(plan, uri, attributes, settings, executor, grid)
    with zipstore.staged_zip(uri) as tree:
        return _write_volume(plan, tree, attributes, settings, executor, grid)


def _remove_volumes(output: str, key: str) -> None:
    """Delete the volume of `key` in every store layout (a re-run may have changed --store)."""
    for store in schemas.VOLUME_STORES:
        storage.remove_tree(schemas.volume_uri(output, key, store))


def _series_previews(uri: str, dicom: dict[str, Any], settings: ConvertSettings, key: str,
                     rows: list[dict[str, Any]]) -> None:
    """--previews=middle: the middle slice and a three-plane montage, from the written volume."""
    import zarr

    volume = zarr.open_group(storage.zarr_store(uri), mode="r")[ARRAY_NAME]
    uris = previews.series_preview_uris(settings.output, settings.previews, key)
    previews.write_series(volume, dicom, settings.previews, uris)
    middle = rows[dicom["n_slices"] // 2]  # the middle slice of the first volume
    middle["preview_uri"], middle["preview_path"] = uris[0], schemas.relative_to_output(settings.output, uris[0])


def _fingerprint(plan: StackPlan, settings: ConvertSettings) -> str:
    """The plan's fingerprint, plus what else shapes the outputs (resampling, compression, previews)."""
    grid = output_grid(plan, settings)
    resampled = "" if grid is None else f"+resampled:{plan.ordering.geometry}"
    p = settings.previews
    shown = "" if p.mode == "none" else f"+previews:{p.mode}:{p.fmt}:{p.naming}"
    stored = "" if settings.store == schemas.STORE_DIRECTORY else f"+store:{settings.store}"
    stored += f"+pyramid:{settings.pyramid_levels}" if settings.pyramid_levels > 1 else ""
    return f"{plan.fingerprint()}{resampled}+zstd{settings.compression_level}{shown}{stored}"  # plan: philips_scaling


def _locations(plan: StackPlan, settings: ConvertSettings) -> dict[str, str]:
    """Where the stack's volume and slices CSV are: URIs under this run's OUT, and (contract 3) relative to it."""
    out = settings.output
    uris = {"zarr": schemas.volume_uri(out, plan.series_key, settings.store),
            "slices": schemas.slices_csv_uri(out, plan.series_key)}
    return {**{f"{name}_uri": uri for name, uri in uris.items()},
            **{f"{name}_path": schemas.relative_to_output(out, uri) for name, uri in uris.items()}}


def _record(plan: StackPlan, settings: ConvertSettings, dicom: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    return {**dicom, "status": schemas.CONVERTED, "reason": "", **_locations(plan, settings),
            "n_source_files": len(plan.instances),
            "provenance": {"pipeline_version": PIPELINE_VERSION, "contract_version": schemas.CONTRACT_VERSION,
                           "input_fingerprint": fingerprint,
                           "source_count": len(plan.instances)}}


def _converted_rows(plan: StackPlan) -> list[dict[str, Any]]:
    """One row per instance of the stack, with the z index of its first slice."""
    first_z: dict[str, int] = {}
    for i, s in enumerate(plan.slices):
        first_z.setdefault(s.header.source_uri, i % plan.n_slices)
    return [schemas.instance_row(h.source_uri, schemas.CONVERTED, "", h.sop_instance_uid, h.series_instance_uid,
                                 plan.series_key, first_z[h.source_uri]) for h in plan.instances]


def _load_committed(plan: StackPlan, settings: ConvertSettings) -> dict[str, Any] | None:
    uri = schemas.series_json_uri(settings.output, plan.series_key)
    if settings.overwrite or not storage.exists(uri):
        return None
    record = json.loads(storage.read_bytes(uri))
    if record.get("provenance", {}).get("input_fingerprint") != _fingerprint(plan, settings):
        return None
    return record


def _failed(plan: StackPlan, failure: StackFailed, settings: ConvertSettings) -> StackResult:
    _remove_volumes(settings.output, plan.series_key)
    storage.remove(schemas.slices_csv_uri(settings.output, plan.series_key))  # of an earlier, good run
    dicom = dicom_attributes(plan)
    culprit = failure.header
    summary = f"{failure.reason} ({culprit.source_uri})" if culprit else failure.reason
    record = {**dicom, "status": schemas.FAILED, "reason": summary, "zarr_uri": None, "zarr_path": None,
              "n_source_files": len(plan.instances)}
    instances = [
        schemas.instance_row(h.source_uri, schemas.FAILED,
                             failure.reason if culprit is None or h is culprit
                             else f"stack not converted: {culprit.source_uri} failed",
                             h.sop_instance_uid, h.series_instance_uid, plan.series_key)
        for h in plan.instances
    ]
    return StackResult(schemas.series_row(record), instances)


def _write_widening(plan: StackPlan, zarr_uri: str, settings: ConvertSettings, executor: Executor | None
                    ) -> tuple[StackPlan, dict[str, Any], list[dict[str, Any]]]:
    """Write the volume in the plan's dtype; when a decoded value does not fit, redo it one type wider."""
    grid = output_grid(plan, settings)
    while True:
        dicom = dicom_attributes(plan, grid)
        try:
            attributes = {**ome_attributes(plan, dicom, settings.pyramid_levels), "dicom": dicom}
            return plan, dicom, _write_to_store(plan, zarr_uri, attributes, settings, executor, grid)
        except ValuesDoNotFitError as exc:
            wider = pixels.wider_dtype(plan.dtype)
            if wider is None:
                raise StackFailed(None, f"invalid image: {exc}") from exc
            storage.remove_tree(zarr_uri)
            plan = replace(plan, dtype=wider)


def convert_stack(plan: StackPlan, settings: ConvertSettings, executor: Executor | None = None) -> StackResult:
    """Write (or reuse, when committed with the same inputs) one stack's volume, CSV and JSON.

    `executor` (a thread pool owned by the caller) decodes instances ahead of the writer.
    """
    committed = _load_committed(plan, settings)
    if committed is not None:  # its row links to this OUT (the JSON may come from a moved OUT or contract 2)
        return StackResult(schemas.series_row({**committed, **_locations(plan, settings)}), _converted_rows(plan),
                           reused=True)
    out = settings.output
    zarr_uri = schemas.volume_uri(out, plan.series_key, settings.store)
    json_uri = schemas.series_json_uri(out, plan.series_key)
    if storage.exists(json_uri):  # stale commit: un-commit first so a crash cannot leave it valid
        storage.remove_tree(json_uri)
    _remove_volumes(out, plan.series_key)
    storage.remove(json_uri)  # revoke a commit another writer made during that cleanup: we redo it
    if plan.ordering.geometry == geometry.IRREGULAR_SPACING and settings.irregular == "fail":
        reason = f"irregular spacing (largest step {plan.ordering.max_gap:.3f} mm) and --irregular=fail"
        return _failed(plan, StackFailed(None, reason), settings)
    fingerprint = _fingerprint(plan, settings)  # of the plan as planned, whatever dtype it ends in
    try:
        plan, dicom, slices = _write_widening(plan, zarr_uri, settings, executor)
    except StackFailed as failure:
        return _failed(plan, failure, settings)
    except OSError as exc:  # full disk, read-only store: the job fails, naming where
        raise StorageError(f"cannot write {zarr_uri}: {exc}") from exc
    written = storage.write_bytes(schemas.slices_csv_uri(out, plan.series_key), _slices_csv(slices, plan.series_key))
    record = _record(plan, settings, dicom, fingerprint)
    written += storage.write_bytes(json_uri, json.dumps(record, indent=1, sort_keys=True).encode())
    written += storage.tree_size(zarr_uri)
    return StackResult(schemas.series_row(record), _converted_rows(plan), written, slices=slices)


def pixel_digest(h: InstanceHeader, max_bytes: int = pixels.DEFAULT_MAX_PIXEL_BYTES) -> str:
    """MD5 of an instance's decoded values (duplicate rules); undecodable: unique.

    Values, not their dtype: a native read gives uint16 where pydicom's modality LUT gives float64
    for the same image in another encoding. Integral values hash as int64, others as float64.
    """
    try:
        with storage.open_source(h.source_uri, block_size=8 * 1024 * 1024) as fp:
            values = pixels.decode(fp, h, max_bytes)
    except (DicomflowError, FileNotFoundError, EOFError, zlib.error):
        return f"undecodable:{h.source_uri}"
    integral = values.dtype.kind in "iub" or bool(np.all(np.isfinite(values)) and np.all(values == np.rint(values)))
    canonical = values.astype(np.int64 if integral else np.float64)
    return hashlib.md5(f"{values.shape}".encode() + np.ascontiguousarray(canonical).tobytes()).hexdigest()


STATUS_RANK = {schemas.CONVERTED: 0, schemas.SKIPPED: 1, schemas.FAILED: 2}


def merge_instance_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per file: a multi-frame file split into several stacks is listed once, under its
    first stack, with the worst status among them (the slices CSVs of every stack list it)."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        kept = merged.get(row["source_uri"])
        if kept is None or STATUS_RANK[row["status"]] > STATUS_RANK[kept["status"]]:
            merged[row["source_uri"]] = row if kept is None else {**row, "series_key": kept["series_key"],
                                                                   "z_index": kept["z_index"]}
    return list(merged.values())


def exclusion_rows(plan: SeriesPlan) -> list[dict[str, Any]]:
    """Instance rows for duplicates and other exclusions of a series plan."""
    return [schemas.instance_row(e.header.source_uri, e.status, e.reason, e.header.sop_instance_uid,
                                 e.header.series_instance_uid) for e in plan.exclusions]
