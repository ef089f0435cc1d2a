import dataclasses

from dicom_io import geometry
from dicom_io.attributes import VOLUME_ATTRIBUTES
from dicom_io.header import InstanceHeader
from dicom_io.plan import choose_dtype as _choose_dtype, drop_duplicates, plan_series, slices_of

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
BASE = InstanceHeader(
    source_uri="", size_bytes=1000, sop_instance_uid="", series_instance_uid="1.2.3", study_instance_uid="1.2",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"), instance_number=None, image_position=None,
    image_orientation=AXIAL, pixel_spacing=(0.5, 0.5), rows=8, columns=8, number_of_frames=1,
    samples_per_pixel=1, photometric="MONOCHROME2", bits_allocated=16, bits_stored=12, pixel_representation=1,
    rescale_slope=1.0, rescale_intercept=-1024.0, pixel_element="PixelData",
)


def volume(**values):
    """A record's volume attributes, in the table's order (absent ones None)."""
    return tuple((a.name, values.get(a.name)) for a in VOLUME_ATTRIBUTES)


def header(i, z, volume_values=None, **changes):
    fields = {"source_uri": f"/d/{i:03d}", "sop_instance_uid": f"1.2.3.{i}", "instance_number": i,
              "image_position": (0.0, 0.0, float(z)), "volume": volume(**(volume_values or {})), **changes}
    return dataclasses.replace(BASE, **fields)


def choose_dtype(headers):
    return _choose_dtype([s for h in headers for s in slices_of(h)])


def test_duplicate_sop_uid_keeps_first_uri_and_records_the_other():
    a, b = header(1, 0), dataclasses.replace(header(1, 0), source_uri="/d/zzz")
    kept, excluded = drop_duplicates([b, a])
    assert [h.source_uri for h in kept] == ["/d/001"]
    assert excluded[0].header.source_uri == "/d/zzz" and excluded[0].status == "skipped"
    assert excluded[0].reason.startswith("duplicate")


def test_duplicate_resolution_prefers_a_lossless_encoding():
    lossy = dataclasses.replace(header(1, 0), source_uri="/d/a_j2k_lossy", transfer_syntax_uid="1.2.840.10008.1.2.4.91")
    plain = dataclasses.replace(header(1, 0), source_uri="/d/b_uncompressed")
    kept, excluded = drop_duplicates([lossy, plain])
    assert kept == [plain] and excluded[0].header == lossy


def test_shared_sop_uid_with_other_pixel_format_is_not_a_duplicate():
    eight = header(1, 0)
    sixteen_frames = dataclasses.replace(header(1, 0), source_uri="/d/2frame", number_of_frames=2)
    kept, excluded = drop_duplicates([eight, sixteen_frames])
    assert len(kept) == 2 and not excluded


def test_single_regular_stack_in_position_order():
    headers = [header(i, z) for i, z in enumerate([5, 0, 10, 2.5, 7.5])]
    plan = plan_series("1.2.3", headers)
    assert len(plan.stacks) == 1
    stack = plan.stacks[0]
    assert [h.image_position[2] for h in stack.instances] == [0, 2.5, 5, 7.5, 10]
    assert stack.ordering.geometry == geometry.REGULAR and stack.split_by == ()
    assert stack.series_key.endswith("_s00") and stack.dtype == "int16"


def test_echoes_split_into_stacks_named_by_echo():
    headers = [header(i, i % 4, {"echo": 1 + i // 4, "echo_time": 10.0 + 70 * (i // 4)}) for i in range(8)]
    plan = plan_series("1.2.3", headers, four_d=False)
    assert [s.stack_attributes for s in plan.stacks] == [{"echo": 1}, {"echo": 2}]
    assert all(s.split_by == ("echo",) and s.ordering.geometry == geometry.REGULAR for s in plan.stacks)
    assert len({s.series_key for s in plan.stacks}) == 2


def test_orientations_split_and_repeats_split_by_acquisition():
    axial = [header(i, i, {"acquisition_number": 1 + i // 3}) for i in range(3)]
    again = [header(10 + i, i, {"acquisition_number": 2}) for i in range(3)]
    coronal = [header(20 + i, 0, image_orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
                      image_position=(0.0, float(i), 0.0)) for i in range(3)]
    plan = plan_series("1.2.3", axial + again + coronal, four_d=False)
    assert len(plan.stacks) == 3
    assert set(plan.stacks[0].split_by) == {"orientation", "acquisition_number"}
    assert all(len(s.instances) == 3 for s in plan.stacks)


def test_dtype_starts_int16_whenever_the_rescale_keeps_integers():
    assert choose_dtype([header(1, 0)]) == "int16"
    assert choose_dtype([header(1, 0, rescale_slope=0.5)]) == "float32"
    # the header allows 0..65535, but the values decide (convert widens when one does not fit)
    assert choose_dtype([header(1, 0, bits_stored=16, pixel_representation=0, rescale_intercept=0.0)]) == "int16"
    assert choose_dtype([header(1, 0, bits_stored=16, pixel_representation=1, rescale_intercept=-1024.0)]) == "int16"
    assert choose_dtype([header(1, 0, bits_stored=12, pixel_representation=0, rescale_intercept=0.0)]) == "int16"
    assert choose_dtype([header(1, 0, samples_per_pixel=3, photometric="RGB", bits_allocated=8)]) == "uint8"
    assert choose_dtype([header(1, 0, samples_per_pixel=3, photometric="RGB", bits_allocated=16)]) == "uint16"
    assert choose_dtype([header(1, 0, photometric="PALETTE COLOR")]) == "uint8"
    # PET: per-slice slopes, one non-integer slope makes the whole stack float32
    assert choose_dtype([header(1, 0), header(2, 1, rescale_slope=1.7)]) == "float32"


def test_plan_is_deterministic_whatever_the_input_order():
    headers = [header(i, z) for i, z in enumerate([3, 1, 2, 0])]
    a = plan_series("1.2.3", headers)
    b = plan_series("1.2.3", list(reversed(headers)))
    assert a.stacks[0].instances == b.stacks[0].instances
    assert a.stacks[0].fingerprint() == b.stacks[0].fingerprint()


def test_echoes_on_one_grid_are_one_4d_stack_in_acquisition_order():
    headers = [header(i, i % 4, {"echo": 1 + i // 4, "echo_time": 10.0 + 70 * (i // 4)}) for i in range(8)]
    [stack] = plan_series("1.2.3", headers).stacks
    assert stack.n_volumes == 2 and stack.n_slices == 4 and stack.split_by == ("echo",)
    assert [v["echo_time"] for v in stack.volumes] == [10.0, 80.0] and stack.stack_attributes == {}
    assert [s.header.instance_number for s in stack.slices] == [0, 1, 2, 3, 4, 5, 6, 7]  # t-major, z inside
    assert stack.ordering.geometry == geometry.REGULAR and stack.series_key.endswith("_s00")


def test_volumes_are_ordered_by_acquisition_not_by_attribute_value():
    # b=1000 acquired first (instance numbers 1..3), then b=0: dcm2niix keeps that order
    late = [header(10 + i, i, {"b_value": 0}) for i in range(3)]
    early = [header(1 + i, i, {"b_value": 1000, "diffusion_direction": (1.0, 0.0, 0.0)}) for i in range(3)]
    [stack] = plan_series("1.2.3", late + early).stacks
    assert [v["b_value"] for v in stack.volumes] == [1000, 0]
    assert stack.volumes[0]["diffusion_direction"] == [1.0, 0.0, 0.0]
    assert stack.volumes[0]["diffusion_direction_image"] == [1.0, 0.0, 0.0]  # axial: LPS x is the column axis
    assert stack.volumes[1]["diffusion_direction_image"] is None


def test_diffusion_direction_in_image_axes_follows_orientation_and_step():
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # rows along L, columns toward feet; normal = -P... = (0, 1, 0)
    headers = [header(i, 0, {"b_value": 1000, "diffusion_direction": (0.0, 0.6, 0.8)}, image_orientation=coronal,
                      image_position=(0.0, float(i), 0.0)) for i in range(3)]
    [stack] = plan_series("1.2.3", headers).stacks
    assert stack.volumes[0]["diffusion_direction_image"] == [0.0, -0.8, 0.6]


def test_other_grids_stay_3d_and_no_geometry_is_never_merged():
    a = [header(i, i, {"acquisition_number": 1}) for i in range(3)]
    b = [header(10 + i, i, {"acquisition_number": 2}, rows=16) for i in range(3)]  # other slice shape
    plan = plan_series("1.2.3", a + b)
    assert [s.n_volumes for s in plan.stacks] == [1, 1]
    lone = [header(i, 0, image_position=None, image_orientation=None) for i in range(2)]
    assert all(s.n_volumes == 1 for s in plan_series("1.2.3", lone).stacks)


def test_volumes_that_differ_by_nothing_stay_3d():
    # the same image twice (other pixels, so not a duplicate), told apart only by occurrence
    a = [header(i, i) for i in range(3)]
    b = [dataclasses.replace(header(i, i), source_uri=f"/e/{i:03d}", sop_instance_uid=f"9.{i}") for i in range(3)]
    plan = plan_series("1.2.3", a + b)
    assert [s.n_volumes for s in plan.stacks] == [1, 1] and plan.stacks[0].split_by == ("repeated_position",)


def test_magnitude_and_phase_at_the_same_positions_are_two_3d_stacks_not_one_4d():
    """Other image types of one series (magnitude and phase; magnitude and a field map, as Philips
    enhanced files mix) are other images, as dcm2niix writes them: never volumes of one 4D array."""
    mag = [header(i, i, {"image_type": "ORIGINAL\\PRIMARY\\M\\ND"}) for i in range(3)]
    phase = [header(10 + i, i, {"image_type": "ORIGINAL\\PRIMARY\\P\\ND"}) for i in range(3)]
    stacks = plan_series("1.2.3", mag + phase).stacks
    assert [s.n_volumes for s in stacks] == [1, 1] and [s.n_slices for s in stacks] == [3, 3]
    assert all(s.split_by == ("image_type",) for s in stacks)
    assert sorted(s.stack_attributes["image_type"] for s in stacks) == ["ORIGINAL\\PRIMARY\\M\\ND",
                                                                        "ORIGINAL\\PRIMARY\\P\\ND"]
    echoes = [header(20 + i, i % 3, {"image_type": "ORIGINAL\\PRIMARY\\M\\ND", "echo": 1 + i // 3}) for i in range(6)]
    [four_d] = plan_series("1.2.3", echoes).stacks  # the same image type: echoes still join
    assert four_d.n_volumes == 2
