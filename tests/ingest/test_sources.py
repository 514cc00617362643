"""Cohort sources: a directory, manifests (Parquet, CSV), and S3 on a local moto server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipeline.index import OK, build_index, iter_studies
from pipeline.select import DEFAULT_SCREENING_RULES, RuleSet, select_series
from pipeline.sources import ManifestSource, TreeSource, open_source
from pipeline.volume import load_volume

ANY_COVERAGE = RuleSet("tiny", DEFAULT_SCREENING_RULES.rules[:-1])


def _names(source) -> list[str]:
    return [Path(e.url).name for e in source.list_files()]


def test_directory_lists_files_with_versions(tmp_path: Path, write_series) -> None:
    write_series(tmp_path / "x", count=2)
    source = open_source(str(tmp_path / "x" / ".."))
    assert isinstance(source, TreeSource)
    entries = list(source.list_files())
    assert [Path(e.url).name for e in entries] == ["s002_0000.dcm", "s002_0001.dcm"]
    assert all(e.version.startswith("mtime:") and e.size > 0 and ".." not in e.url for e in entries)
    with source.open(entries[0].url) as fh:
        assert fh.read(132)[128:] == b"DICM"


def test_directory_lists_folder_by_folder_in_name_order(tmp_path: Path) -> None:
    for rel in ("c/y.bin", "b.bin", "a/z/w.bin", "a/x.bin", "a.txt", ".hidden"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    urls = [e.url for e in open_source(str(tmp_path)).list_files()]
    assert [Path(u).relative_to(tmp_path).as_posix() for u in urls] == [
        ".hidden",
        "a.txt",
        "b.bin",
        "a/x.bin",
        "a/z/w.bin",
        "c/y.bin",
    ]


MANIFEST_WRITERS = [
    ("index.parquet", pq.write_table),
    ("index.csv", pacsv.write_csv),
]


@pytest.mark.parametrize(("name", "writer"), MANIFEST_WRITERS)
def test_manifest_with_relative_and_absolute_paths(tmp_path: Path, write_series, name, writer) -> None:
    files = write_series(tmp_path / "cohort", count=3)
    writer(pa.table({"path": ["cohort/s002_0000.dcm", files[2]]}), str(tmp_path / name))
    source = open_source(str(tmp_path / name))
    assert isinstance(source, ManifestSource)
    assert _names(source) == ["s002_0000.dcm", "s002_0002.dcm"]


def test_manifest_without_path_column_is_explained(tmp_path: Path) -> None:
    pq.write_table(pa.table({"file": ["a.dcm"]}), str(tmp_path / "m.parquet"))
    with pytest.raises(ValueError, match="no 'path' column"):
        open_source(str(tmp_path / "m.parquet"))


def test_missing_folder_is_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        open_source(str(tmp_path / "nowhere"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback, with fake credentials only this test uses."""
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.mark.slow
def test_s3_source_index_select_load(s3_endpoint: str, tmp_path: Path, write_series, monkeypatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    options = {"endpoint_url": s3_endpoint, "key": "test", "secret": "test"}
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("cohort")
    local = write_series(tmp_path, count=4, spacing=2.0)
    for path in local:
        fs.put(path, f"cohort/study/{Path(path).name}")
    fs.pipe("cohort/study/notes.txt", b"hello")
    source = open_source("s3://cohort", storage_options=options)
    entries = list(source.list_files())
    assert all(e.url.startswith("s3://cohort/study/") and e.version.startswith("etag:") for e in entries)
    index = build_index(source)
    assert sorted(index["status"].to_pylist()) == ["NOT_DICOM", OK, OK, OK, OK]
    (group,) = list(iter_studies(index))
    selection = select_series(group.rows, ANY_COVERAGE)
    volume = load_volume(selection.files, fs=source.fs)
    np.testing.assert_array_equal(volume.array, load_volume(local).array)
