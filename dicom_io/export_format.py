"""One entry point per series for the per-series formats (nifti, dicom[+SEG]); hdf5 is per file."""

from __future__ import annotations

from typing import Any

from dicom_io.exports import ExportError, ExportSettings, SeriesData, axis_names


def export_series(data: SeriesData, settings: ExportSettings) -> dict[str, Any]:
    """Write `data` in `settings.fmt` under `settings.to`; the exports row (closes the volume)."""
    with data.volume:
        if settings.fmt == "nifti":
            from dicom_io.export_nifti import export_nifti

            return export_nifti(data, settings.to)
        if settings.fmt == "dicom":
            from dicom_io.export_dicom import export_dicom

            if settings.labels and axis_names(data.volume)[0] == "t":
                raise ExportError("DICOM SEG takes labels on a (z, y, x) grid: this is a 4D (t, z, y, x) array")
            row, headers = export_dicom(data, settings.to, settings.keep_uids)
            if settings.labels:
                from dicom_io.export_seg import export_seg

                row["outputs"].append(export_seg(data, headers, settings.labels, settings.to))
            return row
    raise ExportError(f"format {settings.fmt!r} is not written one series at a time")
