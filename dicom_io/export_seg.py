"""DICOM SEG of a label volume on a series' grid, referencing the exported images (highdicom).

Labels come as a Zarr array (a group's array "0", or an array; directory or .zarr.zip) with axes
(z, y, x), or as a NIfTI file whose voxels and affine match the series' (x, y, z) grid. Each label
value 1..max becomes one segment (label-map style); 0 is background.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_io import schemas, storage
from dicom_io.exports import ExportError, SeriesData

AFFINE_ATOL_MM = 1e-3
MAX_SEGMENTS = 255


def _zarr_labels(uri: str) -> np.ndarray:
    import zarr

    from dicom_io import readers

    if uri.endswith(schemas.ZIP_SUFFIX):
        return np.asarray(readers.open_volume_uri(uri).array[...])
    node = zarr.open(storage.zarr_store(uri), mode="r")
    return np.asarray((node["0"] if isinstance(node, zarr.Group) else node)[...])


def _nifti_labels(uri: str, data: SeriesData) -> np.ndarray:
    import nibabel as nib

    with tempfile.TemporaryDirectory(prefix="dicomflow-labels-") as scratch:
        local = os.path.join(scratch, os.path.basename(uri))
        with open(local, "wb") as handle:
            handle.write(storage.read_bytes(uri))
        image = nib.load(local)
        voxels, affine = np.asanyarray(image.dataobj), image.affine
    expected = data.volume.affine_ras
    if expected is None or not np.allclose(affine, expected, atol=AFFINE_ATOL_MM):
        raise ExportError(f"labels {uri}: NIfTI affine is not the series' grid")
    return np.ascontiguousarray(np.asarray(voxels).transpose(2, 1, 0))


def read_labels(uri: str, data: SeriesData) -> np.ndarray:
    """The label volume (z, y, x) as unsigned integers, checked against the series' shape."""
    labels = _nifti_labels(uri, data) if uri.endswith((".nii", ".nii.gz")) else _zarr_labels(uri)
    if labels.shape != data.volume.shape[:3]:
        raise ExportError(f"labels {uri}: shape {list(labels.shape)}, series {list(data.volume.shape[:3])}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_SEGMENTS or not np.all(np.mod(labels, 1) == 0)):
        raise ExportError(f"labels {uri}: values must be integers 0..{MAX_SEGMENTS}")
    return labels.astype(np.uint8)


def _descriptions(n: int) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return [hd.seg.SegmentDescription(segment_number=i, segment_label=f"label {i}",
                                      segmented_property_category=codes.SCT.Tissue,
                                      segmented_property_type=codes.SCT.Tissue,
                                      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
            for i in range(1, n + 1)]


def _content_date(image: Dataset) -> str:
    """The series' (0008,0021) SeriesDate, else its study's: the SEG's content date, the same on every run."""
    return str(getattr(image, "SeriesDate", "") or getattr(image, "StudyDate", "") or "19000101")


def _without_clock(seg: Dataset, dimension_uid: str) -> None:
    """What highdicom stamps from the clock or a random UID, made a function of the inputs: same bytes per run."""
    del seg.InstanceCreationDate, seg.InstanceCreationTime  # Type 3 in SOP Common
    for item in list(seg.DimensionOrganizationSequence) + list(seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{seg.ContentDate}{seg.ContentTime}"


def export_seg(data: SeriesData, images: Sequence[Dataset], labels_uri: str, to: str) -> str:
    """Write DIR/{key}/seg.dcm for `labels_uri` over the exported `images` (headers, in z order)."""
    import highdicom as hd

    from dicom_io.export_dicom import derived_uid, encode

    labels = read_labels(labels_uri, data)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        raise ExportError(f"labels {labels_uri}: no label (every voxel is 0)")
    series = images[0].SeriesInstanceUID
    seg = hd.seg.Segmentation(
        source_images=list(images), pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(n), series_instance_uid=derived_uid("seg-series", series),
        series_number=int(getattr(images[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=derived_uid("seg", series), instance_number=1, manufacturer="dicomflow",
        manufacturer_model_name="dicomflow export", software_versions="0.1.0", device_serial_number="0",
        content_date=_content_date(images[0]), content_time="000000")
    _without_clock(seg, derived_uid("seg-dimensions", series))
    uri = schemas.dicom_seg_uri(to, data.key)
    storage.write_bytes(uri, encode(seg))
    return uri
