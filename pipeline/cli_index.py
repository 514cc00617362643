"""``lungscreen index SOURCE --out index.parquet``: the header-only cohort scan."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.index import build_index, read_index, status_counts, write_index
from pipeline.sources import open_source


def index_command(
    source: Annotated[str, typer.Argument(help="Folder, fsspec URL (s3://...) or .parquet/.csv manifest.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write the index to.")],
    workers: Annotated[int, typer.Option(help="Dask worker processes; 0 scans in this process.")] = 0,
    incremental: Annotated[
        bool, typer.Option(help="Reuse rows of an existing --out for files whose size and mtime/ETag match.")
    ] = True,
    storage_options: Annotated[
        str, typer.Option(help='fsspec storage options as JSON, e.g. \'{"endpoint_url": "http://..."}\'.')
    ] = "{}",
) -> None:
    """Index a cohort: one row per file with the header attributes selection and assembly need."""
    cohort = open_source(source, storage_options=json.loads(storage_options))
    previous = read_index(out) if incremental and out.exists() else None
    start = time.perf_counter()
    if workers > 0:
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=workers, threads_per_worker=1) as cluster, Client(cluster) as client:
            table = build_index(cohort, client=client, previous=previous)
    else:
        table = build_index(cohort, previous=previous)
    seconds = time.perf_counter() - start
    write_index(table, out)
    console = Console()
    console.print(f"indexed {table.num_rows} files in {seconds:.1f} s -> {out}")
    for status, count in sorted(status_counts(table).items()):
        console.print(f"  {status}: {count}")
