import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_io.inputs import (ManifestError, expand_manifests, first_listed, iter_manifest_entries, manifest_pieces,
                             read_manifest, read_manifest_entries, resolve_input, split_pattern)


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


# ---- listing spread over workers --------------------------------------------------------------------

TREE = ["top.dcm", ".hidden", "a/b.dcm", "a/.h", "a/c/d.dcm", "e[1]/f", "g h/i", "j*k/l", "m/n/o/p"]


def _tree(root) -> set[str]:
    for name in TREE:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * len(name))
    (root / "empty").mkdir()
    return {str(root / name) for name in TREE}


def _matched(patterns: list[str]) -> list[str]:
    from apache_beam.io.filesystems import FileSystems
    return [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]


def test_a_folder_splits_into_parts_that_match_every_file_exactly_once(tmp_path):
    files = _tree(tmp_path)
    pattern = resolve_input(str(tmp_path)).pattern
    parts = split_pattern(pattern)
    assert len(parts) == 1 + 6  # the top's files, then a, e[1], empty, g h, j*k, m
    found = _matched(parts)
    assert sorted(found) == sorted(files) == sorted(_matched([pattern]))  # what one MatchFiles lists
    assert split_pattern(str(tmp_path / "*.dcm")) == [str(tmp_path / "*.dcm")]  # a glob stays whole
    assert split_pattern(str(tmp_path / "gone") + "/**") == [str(tmp_path / "gone") + "/**"]


def test_list_inputs_spreads_folders_and_manifests_and_lists_each_file_once(tmp_path, pipeline):
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.inputs import ListInputs

    files = _tree(tmp_path / "tree")
    (tmp_path / "m-1.csv").write_text("uri,label\n/x/a.dcm,2\n/x/b.dcm,1\n")
    (tmp_path / "m-2.csv").write_text("uri,label\n/x/a.dcm,1\n/x/c.dcm,3\n")  # a.dcm in both manifests
    with pipeline as p:
        listed = p | "Folder" >> ListInputs(str(tmp_path / "tree"))
        manifests = p | "Manifests" >> ListInputs(str(tmp_path / "m-*.csv"), label_column="label")
        root = len(str(tmp_path / "tree")) + 1  # each file holds as many bytes as its relative name has chars
        assert_that(listed, equal_to([(f, len(f) - root, None) for f in files]), label="EachFileOnce")
        assert_that(manifests, equal_to([("/x/a.dcm", None, "2"), ("/x/b.dcm", None, "1"),  # a: its first listing
                                         ("/x/c.dcm", None, "3")]), label="EachUriOnce")


def test_a_parquet_manifest_is_read_by_row_group_and_first_listings_win(tmp_path):
    path = tmp_path / "instances.parquet"
    uris = [f"/d/{i % 250}.dcm" for i in range(1000)]  # every URI four times
    pq.write_table(pa.table({"uri": uris, "n": [str(i) for i in range(1000)]}), path, row_group_size=100)
    pieces = manifest_pieces(str(path))
    assert [p.row_group for p in pieces] == list(range(10))
    listings: dict[str, list] = {}
    for piece in reversed(pieces):  # in any order, as workers finish
        for uri, entry in iter_manifest_entries(piece, "uri", "n"):
            listings.setdefault(uri, []).append(entry)
    assert len(listings) == 250 and all(len(v) == 4 for v in listings.values())
    assert {u: first_listed(v) for u, v in listings.items()} == {f"/d/{i}.dcm": str(i) for i in range(250)}
    assert read_manifest_entries(str(path), "uri", "n") == [(f"/d/{i}.dcm", str(i)) for i in range(250)]
    with pytest.raises(ManifestError, match="no column 'path'"):
        list(iter_manifest_entries(pieces[0], "path"))
