import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_io.inputs import ManifestError, expand_manifests, read_manifest, resolve_input


def test_input_kinds(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"x")
    assert resolve_input(str(tmp_path)).pattern == str(tmp_path) + "/**"
    assert resolve_input(str(tmp_path / "a.dcm")).kind == "files"
    assert resolve_input(str(tmp_path / "*.dcm")).kind == "files"
    assert resolve_input("gs://bucket/prefix/").pattern == "gs://bucket/prefix/**"
    assert resolve_input("gs://b/m/instances-*.parquet").kind == "manifest"
    assert os.path.isabs(resolve_input("relative/dir").pattern)


def test_csv_manifest_named_column_relative_paths_and_duplicates(tmp_path):
    (tmp_path / "m.csv").write_text("instance_id,local_file_path\n1,files/a.dcm\n2,/abs/b\n3,files/a.dcm\n4,\n")
    uris = read_manifest(str(tmp_path / "m.csv"), "local_file_path")
    assert uris == [str(tmp_path / "files" / "a.dcm"), "/abs/b"]
    with pytest.raises(ManifestError, match="no column 'uri'"):
        read_manifest(str(tmp_path / "m.csv"))


def test_parquet_manifests_by_glob(tmp_path):
    for i in range(2):
        pq.write_table(pa.table({"uri": [f"/data/{i}.dcm"]}), tmp_path / f"instances-{i}.parquet")
    manifests = expand_manifests(str(tmp_path / "instances-*.parquet"))
    assert [os.path.basename(m) for m in manifests] == ["instances-0.parquet", "instances-1.parquet"]
    assert [u for m in manifests for u in read_manifest(m)] == ["/data/0.dcm", "/data/1.dcm"]
