import re

import pytest

from dicom_io.keys import series_key

SAFE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.\-]*_[0-9a-f]{12}_s\d{2}$")


@pytest.mark.parametrize("uid", [
    "1.2.840.113619.2.55.3.604688119.969.1268071029.320",
    "../../x", "/etc/passwd", "a" * 200, "1.2.\u00e9\u4e2d", "1.2\x00.3", "", "..", "C:\\temp\\x",
])
def test_keys_are_safe_file_names(uid):
    key = series_key(uid, 0)
    assert SAFE.match(key), key
    assert "/" not in key and "\\" not in key and ".." not in key.split("_")[0][:2]
    assert len(key) <= 48 + 1 + 12 + 4


def test_keys_are_deterministic_and_distinct():
    assert series_key("1.2.3", 0) == series_key("1.2.3", 0)
    assert series_key("1.2.3", 0) != series_key("1.2.3", 1)
    # sanitising maps both to the same readable part; the digest keeps them apart
    assert series_key("1.2/3", 0) != series_key("1.2-3", 0)
