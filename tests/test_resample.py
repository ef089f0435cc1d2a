import numpy as np
import pytest

from dicom_io import resample

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_whole_pixel_shift_is_exact_and_fills_the_edge():
    plane = np.arange(20, dtype=np.int16).reshape(4, 5)
    out = resample.shift_plane(plane, 1.0, -2.0, fill=-1)
    assert out[0, 2] == plane[1, 0] and out[2, 4] == plane[3, 2]
    assert (out[:, :2] == -1).all() and (out[3] == -1).all()


def test_half_pixel_shift_interpolates():
    plane = np.array([[0.0, 10.0, 20.0]])
    assert resample.shift_plane(plane, 0.0, 0.5, fill=0.0)[0, :2].tolist() == [5.0, 15.0]


def test_tilt_grid_moves_each_slice_back_onto_the_normal():
    positions = [(0.0, 0.8 * k, 2.0 * k) for k in range(4)]  # one 0.8 mm pixel of drift per slice
    grid = resample.tilt_grid(positions, AXIAL, (0.8, 0.8))
    # output row r of slice k sees input row r - k: the input image sits k rows further along +y
    assert [s for shift in grid.shifts for s in shift] == pytest.approx([v for k in range(4) for v in (-k, 0.0)])
    assert grid.step_vector == pytest.approx((0.0, 0.0, 2.0))
    assert grid.positions[3] == pytest.approx((0.0, 0.0, 6.0))


def test_uniform_grid_fills_a_gap_by_interpolation():
    positions = [(0.0, 0.0, z) for z in (0.0, 1.0, 3.0, 4.0)]  # 2.0 missing
    grid = resample.uniform_grid(positions, AXIAL, 1.0)
    assert [p[2] for p in grid.positions] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert grid.sources == ((0, 0, 0.0), (1, 1, 0.0), (1, 2, 0.5), (2, 2, 0.0), (3, 3, 0.0))
    planes = [np.full((2, 2), v, dtype=np.int16) for v in (0, 10, 30, 40)]
    out = list(resample.resample(iter(planes), grid))
    assert [float(p[0, 0]) for p in out] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert all(p.dtype == np.float32 for p in out)
