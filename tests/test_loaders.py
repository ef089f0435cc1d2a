"""Training loaders: readers.VolumeDataset through torch's DataLoader (local and gs://), and the MONAI reader
against MONAI's own NIfTI reader on dcm2niix's conversion of the same series."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd
from torch.utils.data import DataLoader

from dicom_io import readers, schemas
from dicom_io.monai_reader import DicomflowReader, volume_uri
from tests.export_corpus import dcm2niix, export_src  # noqa: F401  (session fixture)

PATCH = (2, 8, 8)


def _keys(out: str, grey_3d: bool = False) -> list[str]:
    return [r["series_key"] for r in readers.converted_rows(out) if not grey_3d or len(r["shape"]) == 3]


def _labels_csv(tmp_path, keys: list[str]) -> str:
    path = tmp_path / "labels.csv"
    path.write_text("series_key,label\n" + "".join(f"{k},class{i % 2}\n" for i, k in enumerate(keys[1:])))
    return str(path)


def test_whole_volume_items_are_the_stored_arrays_channel_first(converted):
    data = readers.VolumeDataset(converted, dtype=None)
    assert [r["series_key"] for r in data.rows] == _keys(converted) and len(data) > 3
    for i in range(len(data)):
        item = data[i]
        with readers.open_volume(converted, item["series_key"]) as vol:
            stored, ras = vol.array[:], vol.affine_ras
        expected = stored[np.newaxis] if stored.ndim == 3 else stored
        assert np.array_equal(item["image"], expected) and item["origin"].tolist() == [0, 0, 0]
        if ras is not None:
            np.testing.assert_array_equal(item["affine"], ras)


def test_patches_are_the_sub_array_at_their_origin_with_a_shifted_affine(converted):
    data = readers.VolumeDataset(converted, patch_size=PATCH, seed=3)
    seen = set()
    for i in range(len(data)):
        item = data[i]
        assert item["image"].shape[1:] == PATCH and item["image"].dtype == np.float32
        with readers.open_volume(converted, item["series_key"]) as vol:
            names, ras = vol.array.metadata.dimension_names, vol.affine_ras
            whole = readers.channel_first(vol.array, names, (slice(None),) * 3)  # (channel, z, y, x)
        z, y, x = item["origin"]
        window = whole[:, z:z + PATCH[0], y:y + PATCH[1], x:x + PATCH[2]]
        assert window.size and item["image"].shape[0] == whole.shape[0]
        np.testing.assert_array_equal(item["image"][tuple(slice(0, n) for n in window.shape)], window)
        if ras is not None:  # patch voxel (0, 0, 0) is volume voxel (x, y, z) = origin reversed
            np.testing.assert_allclose(item["affine"] @ [0, 0, 0, 1], ras @ [x, y, z, 1])
        seen.add(tuple(item["origin"]))
    assert len(seen) > 1  # not always the corner
    again = readers.VolumeDataset(converted, patch_size=PATCH, seed=3)
    assert all(np.array_equal(again[i]["origin"], data[i]["origin"]) for i in range(len(data)))
    data.set_epoch(1)
    assert any(not np.array_equal(again[i]["origin"], data[i]["origin"]) for i in range(len(data)))


class CountingStore(zarr.storage.WrapperStore):
    """Records every chunk key a read fetches."""

    fetched: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        CountingStore.fetched.append(key)
        return await self._store.get(key, prototype, byte_range)


def test_a_patch_reads_only_the_chunks_it_touches():
    store = CountingStore(zarr.storage.MemoryStore())
    array = zarr.create_array(store, shape=(64, 64, 64), chunks=(16, 16, 16), dtype="int16",
                              dimension_names=("z", "y", "x"))
    array[:] = np.arange(64 ** 3, dtype=np.int64).reshape(64, 64, 64).astype(np.int16)
    CountingStore.fetched.clear()
    patch = readers.read_patch(array, ("z", "y", "x"), (10, 20, 30), (8, 8, 8))
    chunks = [k for k in CountingStore.fetched if k.startswith("c/")]
    assert patch.shape == (1, 8, 8, 8) and np.array_equal(patch[0], array[10:18, 20:28, 30:38])
    assert 1 <= len(chunks) <= 8 < 64  # at most the 2 x 2 x 2 chunks around the corner, not the 64


def test_patches_past_the_edge_are_padded():
    array = zarr.create_array(zarr.storage.MemoryStore(), shape=(3, 5, 5), chunks=(3, 5, 5), dtype="float32",
                              dimension_names=("z", "y", "x"))
    array[:] = 1.0
    patch = readers.read_patch(array, ("z", "y", "x"), (0, 0, 0), (4, 6, 5), pad_value=-1.0)
    assert patch.shape == (1, 4, 6, 5) and patch[0, :3, :5].min() == 1.0 and patch[0, 3].max() == -1.0


def _batches(loader) -> dict[str, tuple]:
    out = {}
    for batch in loader:
        for j, key in enumerate(batch["series_key"]):
            out[key] = (batch["image"][j].numpy(), batch["label"][j], batch["affine"][j].numpy())
    return out


def test_dataloader_with_two_workers_and_labels(converted, tmp_path):
    keys = _keys(converted, grey_3d=True)  # a batch stacks one channel count: label one kind of series
    data = readers.VolumeDataset(converted, _labels_csv(tmp_path, keys), patch_size=PATCH)
    assert len(data) == len(keys) - 1 >= 2  # the unlabelled series are not items
    loader = DataLoader(data, batch_size=2, num_workers=2, shuffle=False)
    batch = next(iter(loader))
    assert isinstance(batch["image"], torch.Tensor) and batch["image"].shape[0] == 2 and batch["image"].shape[2:] == PATCH
    parallel, serial = _batches(loader), _batches(DataLoader(data, batch_size=3, num_workers=0))
    assert set(parallel) == set(keys[1:]) == set(serial)
    for key, (image, label, _) in parallel.items():
        assert np.array_equal(image, serial[key][0]) and label == f"class{(keys.index(key) - 1) % 2}"


def test_dataloader_reads_gs_volumes(gcs, converted, tmp_path):
    remote = gcs.upload_tree(converted, "loaders-out")
    labels = _labels_csv(tmp_path, _keys(converted, grey_3d=True))
    local = readers.VolumeDataset(converted, labels, patch_size=PATCH, seed=1)
    data = readers.VolumeDataset(remote, labels, patch_size=PATCH, seed=1)
    assert [r["series_key"] for r in data.rows] == [r["series_key"] for r in local.rows]
    seen = 0
    for batch in DataLoader(data, batch_size=2, num_workers=2):
        for j, key in enumerate(batch["series_key"]):
            index = [r["series_key"] for r in local.rows].index(key)
            assert np.array_equal(batch["image"][j].numpy(), local[index]["image"])
            seen += 1
    assert seen == len(local)


# ---- MONAI -----------------------------------------------------------------------------------------

PIPE = [EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS")]


def _monai(path: str, reader, spacing=None):
    steps = [LoadImaged(keys="image", reader=reader, image_only=True, dtype=np.float64), *PIPE]
    if spacing:
        steps.append(Spacingd(keys="image", pixdim=spacing, mode="nearest"))
    return Compose(steps)({"image": path})["image"]


@pytest.mark.parametrize("name", ["axial", "oblique", "mr", "float", "CT_small.dcm", "MR_small.dcm"])
def test_monai_load_matches_dcm2niix_nifti_loaded_by_monai(export_src, tmp_path, name):
    ours_uri = schemas.zarr_uri(export_src.out, export_src.key(name))
    nifti = str(dcm2niix(export_src.folders[name], tmp_path / "dcm2niix"))
    ours, ref = _monai(ours_uri, DicomflowReader()), _monai(nifti, "NibabelReader")
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.affine.numpy(), ref.affine.numpy(), atol=1e-3)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=2.5e-7)
    ours2, ref2 = _monai(ours_uri, DicomflowReader(), (2.0, 2.0, 2.0)), _monai(nifti, "NibabelReader", (2.0, 2.0, 2.0))
    assert ours2.shape == ref2.shape
    np.testing.assert_allclose(ours2.affine.numpy(), ref2.affine.numpy(), atol=1e-3)
    assert np.mean(np.isclose(ours2.numpy(), ref2.numpy(), rtol=1e-6)) > 0.99  # nearest: ties may round apart


def test_monai_metadata_names_the_series(export_src):
    key = export_src.key("axial")
    image = LoadImaged(keys="image", reader=DicomflowReader(), image_only=True)(
        {"image": schemas.zarr_uri(export_src.out, key)})["image"]
    with readers.open_volume(export_src.out, key) as vol:
        spacing = vol.dicom["spacing"]
        np.testing.assert_array_equal(image.affine.numpy(), vol.affine_ras)
    assert image.meta["series_key"] == key and image.meta["modality"] == "CT"
    np.testing.assert_allclose(image.meta["spacing"], spacing[::-1])
    assert tuple(image.shape) == tuple(export_src.rows["axial"]["shape"][::-1])


def test_monai_reader_reads_gs_uris_after_pathlib(gcs, export_src):
    key = export_src.key("axial")
    remote = gcs.upload_tree(schemas.zarr_uri(export_src.out, key), f"monai/volumes/{key}.zarr")
    assert volume_uri(remote.replace("gs://", "gs:/")) == remote
    image = LoadImaged(keys="image", reader=DicomflowReader(), image_only=True)({"image": remote})["image"]
    with readers.open_volume(export_src.out, key) as vol:
        assert np.array_equal(image.numpy(), vol.array[:].transpose(2, 1, 0))


def test_a_volume_without_geometry_is_a_specific_error(export_src):
    with pytest.raises(readers.NoGeometry):
        LoadImaged(keys="image", reader=DicomflowReader())({"image": schemas.zarr_uri(export_src.out, export_src.key("dx"))})
