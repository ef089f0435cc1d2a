"""Tests of the synthetic DICOM generator (no Beam)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, MRImageStorage

from tests.synthetic import (
    AXIAL_IOP,
    Corpus,
    SeriesSpec,
    axial_positions,
    make_bench_corpus,
    make_corpus,
    slice_normal,
    slice_pixels,
    write_instance,
    write_series,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """One corpus shared by the read-only tests."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), seed=0)


def _good_files(c: Corpus) -> list[str]:
    """Every file expected to parse."""
    bad = set(c.broken) | set(c.not_dicom)
    return [p for p in c.files if p not in bad]


def _tree(root: str) -> dict[str, bytes]:
    """Relative path -> bytes of every file under root."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()
    }


def test_deterministic(tmp_path: Path) -> None:
    a = make_corpus(tmp_path / "a", seed=7)
    b = make_corpus(tmp_path / "b", seed=7)
    ta, tb = _tree(a.root), _tree(b.root)
    assert ta.keys() == tb.keys()
    assert len(ta) == len(a.files)
    for name in ta:
        assert ta[name] == tb[name], name
    c = make_corpus(tmp_path / "c", seed=8)
    assert set(c.expected).isdisjoint(a.expected)


def test_layout(corpus: Corpus) -> None:
    root = Path(corpus.root)
    on_disk = {str(p) for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(corpus.files)
    assert len(set(corpus.files)) == len(corpus.files)
    assert any(Path(p).parent == root / "sub" for p in corpus.files)
    names = [Path(p).name for p in corpus.files]
    assert sum(n.endswith(".dcm") for n in names) < len(names) / 2
    assert any(n.endswith(".dcm") for n in names if n != "notes.dcm")
    assert len(corpus.duplicates) == 1 and len(corpus.localizers) == 1
    assert len(corpus.broken) == 2 and len(corpus.not_dicom) == 1


def test_good_files_parse(corpus: Corpus) -> None:
    sop_uids = Counter()
    for path in _good_files(corpus):
        assert _readable_image(path), path
        ds = pydicom.dcmread(path)
        entry = corpus.expected[ds.SeriesInstanceUID]
        spec = entry["spec"][0] if isinstance(entry["spec"], list) else entry["spec"]
        assert ds.pixel_array.shape == (spec.rows, spec.cols)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.preamble == b"\x00" * 128
        if ds.Modality == "CT":
            assert ds.SOPClassUID == CTImageStorage and ds.PixelRepresentation == 1
            assert ds.pixel_array.dtype == np.int16
        else:
            assert ds.SOPClassUID == MRImageStorage and ds.PixelRepresentation == 0
            assert ds.pixel_array.dtype == np.uint16
        assert ds.BitsStored == 12 and ds.pixel_array.min() >= 0
        assert ds.pixel_array.max() <= (2047 if ds.PixelRepresentation else 4095)
        sop_uids[ds.SOPInstanceUID] += 1
    dup_counts = [n for n in sop_uids.values() if n > 1]
    assert dup_counts == [2]  # only the byte-copy duplicate shares a SOPInstanceUID


def _readable_image(path: str) -> bool:
    """True if dcmread gives a dataset with a SeriesInstanceUID and decodable pixels."""
    try:
        ds = pydicom.dcmread(path)
        return "SeriesInstanceUID" in ds and ds.pixel_array.size > 0
    except Exception:  # noqa: BLE001 - any failure counts as unreadable
        return False


def test_broken_files_fail(corpus: Corpus) -> None:
    # pydicom 3 does NOT raise on a file truncated after the 'DICM' prefix: it
    # returns a dataset holding only (part of) the file meta, so "fails" here
    # means: raises, or yields no SeriesInstanceUID / no pixels.
    truncated = [p for p in corpus.broken if os.path.getsize(p) > 0]
    empty = [p for p in corpus.broken if os.path.getsize(p) == 0]
    assert len(truncated) == 1 and len(empty) == 1
    assert os.path.getsize(truncated[0]) == 300
    ds = pydicom.dcmread(truncated[0])
    assert "SeriesInstanceUID" not in ds and "PixelData" not in ds
    for path in empty + corpus.not_dicom:
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(path)
    for path in corpus.broken + corpus.not_dicom:
        assert not _readable_image(path), path


def test_series_match_expected(corpus: Corpus) -> None:
    seen: dict[str, set[str]] = {}
    echoes: dict[str, set[int]] = {}
    positions: dict[str, set[tuple[float, ...]]] = {}
    for path in _good_files(corpus):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = ds.SeriesInstanceUID
        seen.setdefault(uid, set()).add(ds.SOPInstanceUID)
        positions.setdefault(uid, set()).add(tuple(float(v) for v in ds.ImagePositionPatient))
        if "EchoNumbers" in ds:
            echoes.setdefault(uid, set()).add(int(ds.EchoNumbers))
    assert set(seen) == set(corpus.expected)
    for uid, entry in corpus.expected.items():
        assert len(seen[uid]) == entry["n_files"] == len(entry["files"]), entry["kind"]
        assert len(positions[uid]) == entry["n_slices"]
    kinds = Counter(e["kind"] for e in corpus.expected.values())
    assert kinds == {"regular": 2, "localizer": 1, "irregular": 1, "multi_echo": 1}
    by_kind = {e["kind"]: uid for uid, e in corpus.expected.items()}
    assert echoes[by_kind["multi_echo"]] == {1, 2}
    assert corpus.expected[by_kind["multi_echo"]]["n_files"] == 20
    assert corpus.expected[by_kind["irregular"]]["n_files"] == 14


def test_geometry_consistent(corpus: Corpus) -> None:
    for entry in corpus.expected.values():
        if entry["kind"] != "regular":
            continue
        spec = entry["spec"]
        normal = slice_normal(spec.iop)
        d = np.diff([np.dot(p, normal) for p in spec.positions])
        np.testing.assert_allclose(d, entry["spacing"])
        # no in-plane drift: consecutive positions differ only along the normal
        steps = np.diff(np.asarray(spec.positions), axis=0)
        np.testing.assert_allclose(np.cross(steps, normal), 0, atol=1e-9)
    irregular = next(e for e in corpus.expected.values() if e["kind"] == "irregular")
    z = [p[2] for p in irregular["spec"].positions]
    assert sorted(set(np.round(np.diff(z), 6))) == [1.25, 2.5]


def test_pixels_encode_z(corpus: Corpus) -> None:
    entry = next(e for e in corpus.expected.values() if e["kind"] == "regular")
    spec = entry["spec"]
    means = [slice_pixels(spec, i, 0).astype(float).mean() for i in range(len(spec.positions))]
    assert np.all(np.diff(means) > 0)  # distinct and monotone in z: ordering errors are visible
    by_z = {}
    for path in entry["files"]:
        ds = pydicom.dcmread(path)
        by_z[float(ds.ImagePositionPatient[2])] = ds.pixel_array
    for i, pos in enumerate(spec.positions):
        np.testing.assert_array_equal(by_z[pos[2]], slice_pixels(spec, i, 0))


def test_transfer_syntaxes_and_shuffle(tmp_path: Path) -> None:
    spec = SeriesSpec(
        series_uid="1.2.3.4", study_uid="1.2.3", patient_id="P", modality="CT",
        positions=axial_positions(4, 2.0, skip=(2,)), iop=AXIAL_IOP, pixel_spacing=(4.0, 4.0),
        rows=32, cols=48,
    )
    for ts in (pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian, pydicom.uid.RLELossless):
        path = tmp_path / f"{ts.name}.dcm"
        write_instance(path, spec, 1, seed=3, transfer_syntax=ts)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ts
        np.testing.assert_array_equal(ds.pixel_array, slice_pixels(spec, 1, 3))
    paths = write_series(tmp_path / "s", spec, seed=3, shuffle_instance_numbers=True)
    assert len(paths) == 3 and all(len(Path(p).name) == 16 for p in paths)
    numbers = sorted(int(pydicom.dcmread(p).InstanceNumber) for p in paths)
    assert numbers == [1, 2, 3]


def test_bench_corpus_small(tmp_path: Path) -> None:
    c = make_bench_corpus(tmp_path, 100_000, rows=64, cols=64, slices_per_series=5)
    total = sum(os.path.getsize(p) for p in c.files)
    assert total >= 100_000
    assert len(c.expected) == -(-len(c.files) // 5)
    ds = pydicom.dcmread(c.files[0])
    assert ds.pixel_array.shape == (64, 64)
