"""Decode one DICOM file with GDCM in a throw-away process.

GDCM is the fallback for what the pylibjpeg plugins cannot decode, but on some corrupt data it
throws a C++ exception through std::terminate and aborts its process. So it never runs inside
a worker: dicom_io.pixels starts this module, hands it the file on stdin, limits its memory,
and reads a .npy from stdout.

    python -m dicom_io.gdcm_fallback MAX_BYTES < file.dcm > pixels.npy
"""

from __future__ import annotations

import io
import resource
import sys


def main() -> None:
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(sys.stdin.buffer.read()), force=True)
    ds.pixel_array_options(decoding_plugin="gdcm", allow_excess_frames=False)
    np.save(sys.stdout.buffer, ds.pixel_array, allow_pickle=False)


if __name__ == "__main__":
    main()
