"""gcp-storage-emulator on loopback, with suffix byte ranges (`Range: bytes=-N`) supported.

The emulator answers a suffix range with the whole object, which breaks reading sharded
Zarr (the shard index sits in the last bytes). This launcher rewrites a suffix range into
the equivalent absolute range before the emulator's own download handler sees it.

    python -m tests.gcs_emulator --port 9023 [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import re
import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_SUFFIX = re.compile(r"\s*bytes=-(\d+)\s*")
_download = objects.download


def download_with_suffix_ranges(request, response, storage, *args, **kwargs):
    """objects.download, after turning `bytes=-N` into `bytes=START-`."""
    match = _SUFFIX.fullmatch(request.get_header("range", "") or "")
    if match:
        try:
            size = len(storage.get_file(request.params["bucket_name"], request.params["object_id"]))
        except Exception:  # missing object: the original handler answers 404
            size = None
        if size is not None:
            start = max(0, size - int(match.group(1)))
            request._request_handler.headers.replace_header("Range", f"bytes={start}-")
    return _download(request, response, storage, *args, **kwargs)


def patch_handlers() -> None:
    """Route every download through the suffix-range aware handler."""
    server.HANDLERS = tuple(
        (pattern, {method: (download_with_suffix_ranges if fn is _download else fn) for method, fn in table.items()})
        for pattern, table in server.HANDLERS
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    patch_handlers()
    emulator = server.create_server(args.host, args.port, in_memory=True)
    print(f"gcs emulator on {args.host}:{args.port}", flush=True)
    emulator.run()


if __name__ == "__main__":
    main(sys.argv[1:])
