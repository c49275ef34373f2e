"""Parsing and staging a release's member files in a second process.

The parse (pyarrow) and the load (ADBC's bulk ingest into SQLite, COPY into PostgreSQL) run
in a process of their own, the next batch parsed on one thread while the last one is loaded
on another, so a big import uses both cores. On SQLite the second process is also a matter of
safety, not only of speed: ADBC brings its own copy of the SQLite library, and two copies in
one process corrupt a WAL database (each releases the other's POSIX locks on close:
sqlite.org/howtocorrupt.html, 2.2.1). So that process writes the staging tables through ADBC
only, and the run's process, which reads and merges through Python's sqlite3, never stages.

If the run's process dies, the staging process notices within a second and stops: no batch
is committed behind the back of the import that resumes from the checkpoints.
"""

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine

from countysync_assets.appraisal.records import Batch, read_records
from countysync_assets.appraisal.tables import AppraisalTables
from countysync_assets.resources.district_config import District, Layout

WATCH_SECONDS = 0.5  # how often the staging process checks that the run's process is alive


@dataclass(frozen=True)
class MemberFile:
    """One member file to stage, from its checkpoint (``offset``, ``line``)."""

    path: Path
    name: str  # the member's name in the release, as checkpoints and rejects record it
    table: str
    layout: Layout
    offset: int = 0
    line: int = 0


@dataclass(frozen=True)
class Staged:
    rows: int
    rejects: int
    seconds: float


def stage_files(url: str, district: District, import_id: int, year: int,
                files: list[MemberFile], block_bytes: int) -> dict[str, Staged]:
    """Stage each file's records (and rejects, with a checkpoint per batch) in a second
    process; what each file staged. Errors (a bad layout, a database refusing) are raised
    here as they were raised there."""
    if not files:
        return {}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_stage, url, district, import_id, year, files, block_bytes,
                           os.getpid()).result()


def read_ahead(batches: Iterator[Batch]) -> Iterator[Batch]:
    """The batches, the next one parsed on a thread while the caller loads this one
    (pyarrow's kernels and the database drivers release the GIL)."""
    with ThreadPoolExecutor(1, thread_name_prefix="countysync-parse") as parser:
        pending = parser.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = parser.submit(next, batches, None)
            yield batch


def _stage(url: str, district: District, import_id: int, year: int, files: list[MemberFile],
           block_bytes: int, parent: int) -> dict[str, Staged]:
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    tables = AppraisalTables(create_engine(url), district)
    staged = {}
    for member in files:
        started, rows, rejects = time.monotonic(), 0, 0
        for batch in read_ahead(read_records(member.path, member.layout, file=member.name,
                                             offset=member.offset, line=member.line,
                                             block_bytes=block_bytes)):
            tables.stage(import_id, year, member.table, member.name, batch)
            rows, rejects = rows + len(batch.rows), rejects + len(batch.rejects)
        staged[member.name] = Staged(rows, rejects, time.monotonic() - started)
    tables.engine.dispose()
    return staged


def _end_with(parent: int) -> None:
    """End this process when the run's process is gone (killed: it cannot say so)."""
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(1)
