"""Output tables of a screening run: pyarrow schemas, atomic part files, final tables, manifest.

Layout of a run's destination (a directory or any fsspec URL)::

    DEST/parts/{studies,findings,failures}-NNNNN.parquet   written as studies finish
    DEST/studies.parquet, findings.parquet, failures.parquet, worklist.parquet, worklist.jsonl
    DEST/run.json                                          written last

Every file is written under a temporary name and renamed, so a killed run leaves only whole
files; a resumed run reads the study keys of its parts and skips them.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import LungscreenError

SCHEMA_VERSION = "1"


class RunConflictError(LungscreenError):
    """The destination belongs to another run."""


_META = {b"lungscreen.schema_version": SCHEMA_VERSION.encode()}

STUDIES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("study_key", pa.string()),
        ("study_instance_uid", pa.string()),
        ("accession_number", pa.string()),
        ("series_instance_uid", pa.string()),
        ("status", pa.string()),
        ("category", pa.string()),
        ("risk", pa.float64()),
        ("priority", pa.int64()),
        ("complete", pa.bool_()),
        ("laa950", pa.float64()),
        ("kernel", pa.string()),
        ("slice_thickness_mm", pa.float64()),
        ("n_findings", pa.int32()),
        ("n_candidates", pa.int32()),
        ("n_patches", pa.int32()),
        ("explanation", pa.string()),
        ("qc_notes", pa.list_(pa.string())),
        ("rejected_series", pa.list_(pa.string())),
        ("detector_model", pa.string()),
        ("detector_version", pa.string()),
        ("classifier_model", pa.string()),
        ("classifier_version", pa.string()),
        ("select_s", pa.float64()),
        ("load_s", pa.float64()),
        ("preprocess_s", pa.float64()),
        ("inference_s", pa.float64()),
        ("postprocess_s", pa.float64()),
        ("triage_s", pa.float64()),
        ("total_s", pa.float64()),
        ("model_data", pa.string()),
    ],
    metadata=_META,
)

FINDINGS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("study_key", pa.string()),
        ("study_instance_uid", pa.string()),
        ("finding_index", pa.int32()),
        ("reported", pa.bool_()),
        ("center_x_mm", pa.float64()),
        ("center_y_mm", pa.float64()),
        ("center_z_mm", pa.float64()),
        ("diameter_mm", pa.float64()),
        ("solid_diameter_mm", pa.float64()),
        ("volume_mm3", pa.float64()),
        ("nodule_type", pa.string()),
        ("type_probability", pa.float64()),
        ("malignancy", pa.float64()),
        ("nodule_probability", pa.float64()),
        ("detector_score", pa.float64()),
        ("score", pa.float64()),
        ("category", pa.string()),
        ("region", pa.string()),
    ],
    metadata=_META,
)

FAILURES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("scope", pa.string()),  # "study": the study is not screened; "file": one file was skipped
        ("study_key", pa.string()),
        ("study_instance_uid", pa.string()),
        ("accession_number", pa.string()),
        ("url", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
    ],
    metadata=_META,
)

WORKLIST_SCHEMA = pa.schema(
    [
        ("priority", pa.int64()),
        ("accession_number", pa.string()),
        ("study_instance_uid", pa.string()),
        ("category", pa.string()),
        ("risk", pa.float64()),
        ("reason", pa.string()),
        ("run_id", pa.string()),
        ("model_data", pa.string()),
    ],
    metadata=_META,
)

TABLES = {"studies": STUDIES_SCHEMA, "findings": FINDINGS_SCHEMA, "failures": FAILURES_SCHEMA}


def _fs(dest: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(dest)
    return fs, root.rstrip("/")


def atomic_write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name first, then rename."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@dataclass
class RunWriter:
    """Buffers rows and writes them as numbered part files; knows what a previous attempt wrote."""

    dest: str
    part_size: int = 25
    fs: fsspec.AbstractFileSystem = field(init=False)
    root: str = field(init=False)
    _rows: dict[str, list[dict[str, Any]]] = field(init=False)
    _studies_buffered: int = field(init=False, default=0)
    _next_part: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        self.fs, self.root = _fs(self.dest)
        self.fs.makedirs(f"{self.root}/parts", exist_ok=True)
        self._rows = {name: [] for name in TABLES}
        existing = self._part_paths()
        if existing:
            self._next_part = max(int(p.rsplit("-", 1)[1].split(".")[0]) for p in existing) + 1
        for stale in self.fs.glob(f"{self.root}/parts/*.tmp-*"):
            self.fs.rm(stale)

    def _part_paths(self, table: str = "*") -> list[str]:
        return sorted(self.fs.glob(f"{self.root}/parts/{table}-[0-9]*.parquet"))

    def claim(self, run_id: str) -> None:
        """Bind the destination to one run id; another run's parts are never mixed in."""
        marker = f"{self.root}/RUN_ID"
        if self.fs.exists(marker):
            with self.fs.open(marker, "rb") as f:
                owner = f.read().decode().strip()
            if owner != run_id:
                raise RunConflictError(
                    f"The destination holds run {owner}. Re-run with --run-id {owner} to resume it, "
                    "or choose another --out for a new run."
                )
            return
        atomic_write_bytes(self.fs, marker, run_id.encode())

    def done_study_keys(self) -> set[str]:
        """Studies a previous attempt of this run already wrote (screened or failed)."""
        keys: set[str] = set()
        for path in self._part_paths("studies"):
            keys.update(self._read(path, ["study_key"])["study_key"].to_pylist())
        for path in self._part_paths("failures"):
            t = self._read(path, ["study_key", "scope"])
            keys.update(k for k, s in zip(t["study_key"].to_pylist(), t["scope"].to_pylist(), strict=True)
                        if s == "study")  # fmt: skip
        return keys

    def has_file_failures(self) -> bool:
        """Whether the file-level failures of the index were written already."""
        for path in self._part_paths("failures"):
            if "file" in self._read(path, ["scope"])["scope"].to_pylist():
                return True
        return False

    def add(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        self._rows[table].extend(rows)

    def study_done(self) -> None:
        """Count one finished study; write a part when enough are buffered."""
        self._studies_buffered += 1
        if self._studies_buffered >= self.part_size:
            self.flush()

    def flush(self) -> None:
        """Write every buffered row as one part per table (studies' part last)."""
        if not any(self._rows.values()):
            return
        n = self._next_part
        # Findings and failures first: a part of studies never exists without its findings.
        for name in ("findings", "failures", "studies"):
            rows = self._rows[name]
            if rows:
                table = pa.Table.from_pylist(rows, schema=TABLES[name])
                atomic_write_bytes(self.fs, f"{self.root}/parts/{name}-{n:05d}.parquet", table_bytes(table))
            self._rows[name] = []
        self._next_part += 1
        self._studies_buffered = 0

    def read_parts(self, table: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Every part of one table, concatenated (empty table of the schema when none)."""
        schema = TABLES[table]
        parts = [self._read(p, columns) for p in self._part_paths(table)]
        if not parts:
            return (
                schema if columns is None else pa.schema([schema.field(c) for c in columns])
            ).empty_table()
        return pa.concat_tables(parts)

    def write_table(self, name: str, table: pa.Table) -> str:
        path = f"{self.root}/{name}.parquet"
        atomic_write_bytes(self.fs, path, table_bytes(table))
        return path

    def write_text(self, name: str, text: str) -> str:
        path = f"{self.root}/{name}"
        atomic_write_bytes(self.fs, path, text.encode())
        return path

    def _read(self, path: str, columns: Sequence[str] | None = None) -> pa.Table:
        with self.fs.open(path, "rb") as f:
            return pq.read_table(f, columns=list(columns) if columns else None)


def worklist_jsonl(table: pa.Table) -> str:
    """The worklist as JSON Lines (one object per study, in priority order)."""
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in table.to_pylist())
