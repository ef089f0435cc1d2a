"""A MONAI `ImageReader` for dicomflow volumes: `LoadImage(reader=DicomflowReader())` on a `.zarr` or `.zarr.zip`.

Data come as MONAI's NIfTI reader gives them: spatial axes (x, y, z) (the stored (z, y, x) reversed), channel
last for 4D (t) and colour (c), `affine` in RAS (`affine_ras`), so `Orientationd` and `Spacingd` work as on
NIfTI. Importing this module imports MONAI (an optional extra: `pip install dicomflow[ml]`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from dicom_io import readers, schemas

SUFFIXES = (".zarr", ".zarr.zip")
META_FIELDS = ("series_key", "series_instance_uid", "study_instance_uid", "modality", "geometry", "dtype",
               "n_volumes", "frame_of_reference_uid")


def volume_uri(name: Any) -> str:
    """The URI LoadImage handed over: it passes names through pathlib, which folds `gs://b` into `gs:/b`."""
    text = str(name).rstrip("/")
    for scheme in ("gs", "gcs", "s3", "memory"):
        if text.startswith(f"{scheme}:/") and not text.startswith(f"{scheme}://"):
            return f"{scheme}://{text[len(scheme) + 2:]}"
    return text


def xyz_data(vol: readers.Volume) -> tuple[np.ndarray, float]:
    """The whole array with spatial axes reversed to (x, y, z); channel (t or c) last, and its MONAI channel dim."""
    names = tuple(vol.array.metadata.dimension_names or ())
    data = np.asarray(vol.array[...])
    if names and names[0] == "t":
        return data.transpose(3, 2, 1, 0), -1
    if names and names[-1] == "c":
        return data.transpose(2, 1, 0, 3), -1
    return data.transpose(2, 1, 0), float("nan")


def volume_meta(vol: readers.Volume, shape_xyz: tuple[int, ...], channel_dim: float) -> dict[str, Any]:
    """MONAI metadata of one volume: affines in RAS, spatial shape, spacing (x, y, z) and a few dicom fields."""
    if vol.affine_ras is None:
        raise readers.NoGeometry(f"{vol.uri}: no affine (no geometry); MONAI needs one")
    affine = vol.affine_ras
    meta = {MetaKeys.AFFINE: affine, MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(shape_xyz[:3]), MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: channel_dim,
            "spacing": np.linalg.norm(affine[:3, :3], axis=0)}
    tags = vol.dicom.get("tags") or {}
    for name in META_FIELDS:
        value = vol.dicom.get(name, tags.get(name))
        meta[name] = "none" if value is None else value  # None does not collate
    return meta


class DicomflowReader(ImageReader):
    """Reads dicomflow volumes (directory or zip store, local or gs://) through `readers.open_volume_uri`.

    With `output` (OUT, wherever it is now), a relative name is a `*_path` of the tables (`volumes/KEY.zarr`)
    and is resolved against it; absolute names and URIs are read as they are.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__()
        self.output = output

    def _uri(self, name: Any) -> str:
        uri = volume_uri(name)
        return uri if self.output is None else schemas.resolve_output_path(self.output, uri)

    def verify_suffix(self, filename: Sequence[Any] | Any) -> bool:
        return all(volume_uri(f).endswith(SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> Any:
        volumes = [readers.open_volume_uri(self._uri(f)) for f in ensure_tuple(data)]
        return volumes if len(volumes) > 1 else volumes[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        arrays, metas = [], []
        for vol in ensure_tuple(img):
            with vol:
                data, channel_dim = xyz_data(vol)
            arrays.append(data)
            metas.append(volume_meta(vol, data.shape, channel_dim))
        if len(arrays) == 1:
            return arrays[0], metas[0]
        return np.stack(arrays, axis=0), {**metas[0], MetaKeys.ORIGINAL_CHANNEL_DIM: 0}
