import numpy as np
import pytest

from dicom_io import geometry

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _positions(zs, x=0.0, y=0.0):
    return [(x, y, z) for z in zs]


def test_normal_is_row_cross_column():
    assert np.allclose(geometry.slice_normal(AXIAL), [0, 0, 1])
    assert np.allclose(geometry.slice_normal((1, 0, 0, 0, 0, -1)), [0, 1, 0])  # coronal
    with pytest.raises(ValueError):
        geometry.slice_normal((1, 0, 0, 1, 0, 0))


def test_orders_shuffled_slices_by_position_not_instance_number():
    zs = [10.0, 0.0, 5.0, 2.5, 7.5]
    ordering = geometry.order_slices(_positions(zs), AXIAL, [1, 2, 3, 4, 5])
    assert [zs[i] for i in ordering.order] == sorted(zs)
    assert ordering.geometry == geometry.REGULAR
    assert ordering.order_by == "position"
    assert ordering.spacing_z == pytest.approx(2.5)


def test_gap_is_irregular_and_no_uniform_spacing_is_claimed():
    zs = [0.0, 1.25, 2.5, 5.0, 6.25]  # 3.75 missing
    ordering = geometry.order_slices(_positions(zs), AXIAL, [None] * 5)
    assert ordering.geometry == geometry.IRREGULAR_SPACING
    assert ordering.spacing_z is None
    assert ordering.max_gap == pytest.approx(2.5)
    assert ordering.spacing_min == pytest.approx(1.25)


def test_rounding_jitter_stays_regular():
    zs = [0.0, 2.5001, 4.9999, 7.5002]
    assert geometry.order_slices(_positions(zs), AXIAL, [None] * 4).geometry == geometry.REGULAR


def test_gantry_tilt_is_detected_and_affine_is_sheared():
    tilt = np.radians(15.0)
    positions = [(0.0, k * 2.0 * np.tan(tilt), k * 2.0) for k in range(6)]  # y drifts with z
    ordering = geometry.order_slices(positions, AXIAL, list(range(6)))
    assert ordering.geometry == geometry.TILTED
    assert ordering.tilt_degrees == pytest.approx(15.0, abs=0.01)
    affine = np.array(geometry.affine_lps(AXIAL, positions[0], (0.5, 0.7), ordering.step_vector))
    for k, p in enumerate(positions):  # the affine reproduces every slice origin exactly
        assert np.allclose(affine @ [0, 0, k, 1], [*p, 1])


def test_single_slice_and_missing_geometry():
    one = geometry.order_slices([(1.0, 2.0, 3.0)], AXIAL, [7], slice_thickness=3.0)
    assert one.geometry == geometry.SINGLE_SLICE and one.spacing_z == 3.0
    none = geometry.order_slices([None, (0, 0, 1)], AXIAL, [2, 1])
    assert none.geometry == geometry.NO_GEOMETRY
    assert none.order_by == "instance_number" and none.order == (1, 0)


def test_affine_maps_column_row_slice_to_lps():
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal: columns along +y (A->P), rows along -z
    affine = np.array(geometry.affine_lps(iop, (10.0, -5.0, 20.0), (0.8, 0.6), (1.5, 0.0, 0.0)))
    assert np.allclose(affine @ [1, 0, 0, 1], [10.0, -5.0 + 0.6, 20.0, 1])  # one column = column spacing
    assert np.allclose(affine @ [0, 1, 0, 1], [10.0, -5.0, 20.0 - 0.8, 1])  # one row = row spacing
    assert np.allclose(affine @ [0, 0, 2, 1], [13.0, -5.0, 20.0, 1])
