"""Shared fixtures: one Beam `pipeline`, one generated corpus, one converted output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

# Before anything imports gcsfs: its bucket-type probe over gRPC hangs against the emulator.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline

from tests import synthetic

# In-process local runs (the jobs map DirectRunner to the FnApiRunner: pipelines/localrun.py).
RUNNER_ARGS = ["--runner", "DirectRunner", "--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


@pytest.fixture
def pipeline():
    """A TestPipeline on the in-process FnApiRunner, as the jobs run locally; `with pipeline as p:` runs it.

    Not runner="DirectRunner": Beam's DirectRunner first tries Prism, whose failed start leaves a gRPC
    server running in this process (see pipelines/localrun.py).
    """
    return TestPipeline(runner=FnApiRunner(), options=PipelineOptions(["--direct_running_mode", "in_memory"]),
                        argv=[], blocking=True)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> synthetic.Corpus:
    """The seeded mixed corpus (regular, coronal, irregular, multi-echo, localizer, broken)."""
    return synthetic.make_corpus(tmp_path_factory.mktemp("corpus"), seed=0)


@pytest.fixture(scope="session")
def converted(corpus, tmp_path_factory) -> str:
    """OUT of one `pipelines.convert` run over the corpus."""
    from pipelines.convert import run

    out = str(tmp_path_factory.mktemp("out"))
    run(["--input", corpus.root, "--output", out, *RUNNER_ARGS])
    return out


def all_files(root: str) -> list[str]:
    """Every regular file below `root`, absolute."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "dicomflow-test"


@dataclass
class Gcs:
    """A running emulator: its endpoint, one bucket, and a client for uploads and listings."""

    endpoint: str
    bucket: str
    client: object
    env: dict

    def upload_tree(self, root: str, prefix: str) -> str:
        """Copy every file below `root` to gs://bucket/prefix/..., keeping relative paths."""
        bucket = self.client.bucket(self.bucket)
        for path in all_files(root):
            bucket.blob(f"{prefix}/{os.path.relpath(path, root)}").upload_from_filename(path)
        return f"gs://{self.bucket}/{prefix}"

    def names(self, prefix: str) -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(self.bucket, prefix=prefix))

    def read(self, name: str) -> bytes:
        return self.client.bucket(self.bucket).blob(name).download_as_bytes()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(endpoint: str, proc: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"GCS emulator exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(endpoint + "/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("GCS emulator did not start")


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """gcp-storage-emulator on 127.0.0.1 (suffix ranges fixed), env set for Beam, gcsfs and clients."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    creds = tmp_path_factory.mktemp("gcs-auth") / "credentials.json"
    # A valid-looking token that never expires: no worker ever asks a metadata server.
    creds.write_text(json.dumps({"type": "authorized_user", "client_id": "dicomflow-test", "client_secret": "x",
                                 "refresh_token": "x", "token": "fake-token", "expiry": "2999-01-01T00:00:00Z"}))
    env = {"STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_APPLICATION_CREDENTIALS": str(creds),
           "GOOGLE_CLOUD_PROJECT": "dicomflow-test", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    os.environ.update(env)
    proc = subprocess.Popen([sys.executable, "-m", "tests.gcs_emulator", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_up(endpoint, proc)
        from google.cloud import storage

        client = storage.Client(project="dicomflow-test")
        client.create_bucket(BUCKET)
        yield Gcs(endpoint, BUCKET, client, env)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
