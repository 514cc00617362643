"""The header-only index: rows, failure statuses, privacy, incremental re-indexing, Dask, CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import ReasonCode
from pipeline.index import (
    INDEX_SCHEMA,
    OK,
    SCHEMA_VERSION,
    SURROGATE_PREFIX,
    build_index,
    iter_studies,
    read_index,
    status_counts,
)
from pipeline.sources import open_source


@pytest.fixture
def cohort(tmp_path: Path, write_series) -> Path:
    """Two studies (one with thin + thick series and a stray text file), one without UIDs, junk."""
    write_series(tmp_path / "a" / "thin", count=4, spacing=1.0, series_number=2, study_uid="1.2.826.1")
    write_series(tmp_path / "a" / "thick", count=2, spacing=5.0, series_number=3, study_uid="1.2.826.1")
    (tmp_path / "a" / "thin" / "readme.txt").write_text("exported by PACS")
    write_series(tmp_path / "b", count=3, study_uid="1.2.826.2", compress="rle")
    write_series(tmp_path / "c", count=2, study_uid="", series_uid="")
    cut = write_series(tmp_path / "d", count=1, study_uid="1.2.826.4")[0]
    Path(cut).write_bytes(Path(cut).read_bytes()[:-7])
    (tmp_path / "e.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    return tmp_path


def test_one_row_per_file_with_statuses(cohort: Path) -> None:
    table = build_index(open_source(str(cohort)))
    assert table.schema.equals(INDEX_SCHEMA)
    assert table.schema.metadata[b"lungscreen.index.schema_version"].decode() == SCHEMA_VERSION
    assert status_counts(table) == {
        OK: 9,
        ReasonCode.NOT_DICOM: 1,
        ReasonCode.MISSING_UID: 2,
        ReasonCode.TRUNCATED_FILE: 1,
        ReasonCode.UNREADABLE: 1,
    }
    rows = {Path(r["url"]).name: r for r in table.to_pylist()}
    assert rows["readme.txt"]["study_key"] is None
    assert rows["s002_0000.dcm"]["Modality"] == "CT"


def test_index_has_no_patient_identifiers(cohort: Path) -> None:
    table = build_index(open_source(str(cohort)))
    text = str(table.to_pylist())
    assert not {"Test^Patient", "PID-12345", "19500101"} & {w.strip("'") for w in text.split()}
    assert "PatientName" not in table.column_names and "PatientID" not in table.column_names


def test_groups_stream_one_study_each(cohort: Path) -> None:
    groups = list(iter_studies(build_index(open_source(str(cohort)))))
    sizes = {g.key: g.rows.num_rows for g in groups}
    assert sizes["1.2.826.1"] == 6 and sizes["1.2.826.2"] == 3 and sizes["1.2.826.4"] == 1
    surrogate = [g for g in groups if not g.has_uid]
    assert len(surrogate) == 1 and surrogate[0].key.startswith(SURROGATE_PREFIX)
    assert surrogate[0].rows["status"].to_pylist() == [ReasonCode.MISSING_UID] * 2


def test_reindex_reuses_unchanged_rows(cohort: Path, write_series, monkeypatch) -> None:
    source = open_source(str(cohort))
    first = build_index(source)
    write_series(cohort / "f", count=2, study_uid="1.2.826.6")
    changed = cohort / "b" / "s002_0000.dcm"
    os.utime(changed, (1, 1))
    scanned: list[str] = []
    import pipeline.index as index_module

    original = index_module.scan_file
    monkeypatch.setattr(index_module, "scan_file", lambda fh, e: scanned.append(e.url) or original(fh, e))
    second = build_index(source, previous=first)
    assert sorted(Path(u).name for u in scanned) == ["s002_0000.dcm", "s002_0000.dcm", "s002_0001.dcm"]
    assert second.num_rows == first.num_rows + 2
    assert (
        second.drop(["version"])
        .filter(pa.compute.invert(pa.compute.is_in(second["url"], pa.array(scanned))))
        .equals(
            first.drop(["version"]).filter(
                pa.compute.invert(pa.compute.is_in(first["url"], pa.array(scanned)))
            )
        )
    )


@pytest.mark.slow
def test_dask_gives_the_same_index(cohort: Path) -> None:
    from dask.distributed import Client, LocalCluster

    source = open_source(str(cohort))
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        parallel = build_index(source, client=client, batch_size=3)
        # Every batch unchanged: rows come back from the earlier index, none goes to a worker.
        again = build_index(source, client=client, batch_size=3, previous=parallel)
    assert parallel.equals(build_index(source))
    assert again.equals(parallel)


class _CountingSource:
    """A source that counts how many entries its listing has yielded so far."""

    def __init__(self, inner) -> None:
        self.inner, self.fs, self.listed = inner, inner.fs, 0

    def list_files(self):
        for entry in self.inner.list_files():
            self.listed += 1
            yield entry

    def open(self, url: str):
        return self.inner.open(url)


def test_listing_streams_into_the_scan(cohort: Path, monkeypatch) -> None:
    """The first batch is scanned before the listing goes further: no cohort-sized file list."""
    import pipeline.index as index_module

    source = _CountingSource(open_source(str(cohort)))
    original = index_module.scan_batch_table
    listed_at_scan: list[int] = []

    def scan(src, entries):
        listed_at_scan.append(source.listed)
        return original(src, entries)

    monkeypatch.setattr(index_module, "scan_batch_table", scan)
    table = build_index(source, batch_size=4)
    assert listed_at_scan[0] == 4 and table.num_rows == source.listed == 14


def test_cli_writes_parquet(cohort: Path, tmp_path_factory) -> None:
    out = tmp_path_factory.mktemp("out") / "index.parquet"
    result = CliRunner().invoke(app, ["index", str(cohort), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "NOT_DICOM: 1" in result.output
    assert read_index(out).num_rows == 14
