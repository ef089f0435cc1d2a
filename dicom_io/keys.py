"""The series key: deterministic, file-name safe whatever the UID holds, distinct per stack."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^0-9A-Za-z.\-]+")
MAX_READABLE = 48


def uid_digest(uid: str, length: int = 12) -> str:
    """Hex SHA-1 prefix of a UID (UTF-8, surrogates escaped) for collision-proof names."""
    return hashlib.sha1(uid.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def series_key(series_instance_uid: str, stack_index: int) -> str:
    """`{readable UID prefix}_{sha1[:12]}_s{stack:02d}`: no separators, no leading dots."""
    readable = _UNSAFE.sub("-", series_instance_uid).strip(".-")[:MAX_READABLE].rstrip(".-")
    return f"{readable or 'series'}_{uid_digest(series_instance_uid)}_s{stack_index:02d}"
