"""Cohort sources: where the DICOM files of a cohort live, behind one small interface.

A source is a directory tree, any fsspec URL (``s3://bucket/prefix`` through s3fs, ``memory://``,
``file://``), or a manifest file (``.parquet`` or ``.csv`` with a ``path`` column, relative paths
resolved against the manifest's folder). Every source lists :class:`FileEntry` rows and opens a file
by its URL, so the index and the screening job never care where the files are.

Sources hold only an fsspec filesystem and a root, so they pickle to Dask workers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import fsspec
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

MANIFEST_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a cohort: its URL, size in bytes and a version token.

    ``version`` changes whenever the content may have changed: ``etag:<ETag>`` on object stores,
    ``mtime:<seconds>`` on file systems. Re-indexing skips files whose size and version are unchanged.
    """

    url: str
    size: int
    version: str


class CohortSource(Protocol):
    """Lists and opens the files of a cohort."""

    fs: fsspec.AbstractFileSystem

    def list_files(self) -> Iterator[FileEntry]:
        """Yield every file of the cohort once, in a stable order."""
        ...

    def open(self, url: str) -> BinaryIO:
        """Open one listed file for binary reading (a seekable file object; close it after use)."""
        ...


def _version(info: Mapping[str, Any]) -> str:
    """The change token of an fsspec ``info`` dict: ETag when the store has one, else the mtime."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    mtime = info.get("mtime", info.get("LastModified", info.get("last_modified", info.get("created"))))
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"mtime:{float(mtime or 0.0):.6f}"


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path as a full URL: plain absolute paths stay plain on the local disk."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


@dataclass(frozen=True)
class TreeSource:
    """Every file below a folder or prefix of any fsspec filesystem (local directory, s3://, ...)."""

    fs: fsspec.AbstractFileSystem
    root: str

    def list_files(self) -> Iterator[FileEntry]:
        """Yield the files below ``root`` folder by folder (hidden ones included).

        Names are sorted within a folder; a folder's files come before its subfolders. Listing
        one folder at a time keeps memory at the size of the largest folder, not of the cohort.
        """
        for _, folders, files in self.fs.walk(self.root, detail=True):
            ordered = sorted(folders.items())  # walk descends in the order left in ``folders``
            folders.clear()
            folders.update(ordered)
            for name in sorted(files):
                info = files[name]
                if info.get("type", "file") == "file":
                    yield FileEntry(_url(self.fs, info["name"]), int(info.get("size") or 0), _version(info))

    def open(self, url: str) -> BinaryIO:
        """Open ``url`` (as listed) for binary reading."""
        return self.fs.open(url, "rb")


@dataclass(frozen=True)
class ManifestSource:
    """The files named in the ``path`` column of a Parquet or CSV manifest, in manifest order."""

    fs: fsspec.AbstractFileSystem
    paths: tuple[str, ...]

    def list_files(self) -> Iterator[FileEntry]:
        """Yield one entry per manifest path; a path that does not exist is an error (fix the manifest)."""
        for path in self.paths:
            info = self.fs.info(path)
            yield FileEntry(_url(self.fs, path), int(info.get("size") or 0), _version(info))

    def open(self, url: str) -> BinaryIO:
        """Open ``url`` (as listed) for binary reading."""
        return self.fs.open(url, "rb")


def read_manifest_paths(fs: fsspec.AbstractFileSystem, manifest: str) -> tuple[str, ...]:
    """The ``path`` column of a manifest, relative entries resolved against the manifest's folder."""
    with fs.open(manifest, "rb") as fh:
        table = pq.read_table(fh) if manifest.endswith(".parquet") else pacsv.read_csv(fh)
    if "path" not in table.column_names:
        raise ValueError(f"manifest {manifest} has no 'path' column (columns: {table.column_names})")
    base = posixpath.dirname(fs._strip_protocol(manifest))
    resolved = []
    for raw in map(str, table.column("path").to_pylist()):
        absolute = "://" in raw or posixpath.isabs(raw)
        resolved.append(fs._strip_protocol(raw) if absolute else posixpath.join(base, raw))
    return tuple(resolved)


def open_source(spec: str, *, storage_options: Mapping[str, Any] | None = None) -> CohortSource:
    """Open a cohort source from a path or URL.

    ``spec`` is a local directory, an fsspec URL of a folder/prefix (``s3://bucket/cohort``), or a
    manifest file ending in ``.parquet``/``.csv``. ``storage_options`` go to fsspec (for example
    ``{"endpoint_url": ...}`` for a non-AWS S3 server).
    """
    fs, path = fsspec.core.url_to_fs(spec, **dict(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        path = posixpath.normpath(path)
    if path.endswith(MANIFEST_SUFFIXES):
        return ManifestSource(fs, read_manifest_paths(fs, path))
    if not fs.isdir(path):
        raise FileNotFoundError(f"cohort source {spec!r} is neither a folder nor a .parquet/.csv manifest")
    return TreeSource(fs, path)
