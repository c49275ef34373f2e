"""Write transactions on the output databases (SQLite files and the GeoPackage), as one output
opens them: a bounded, logged wait for another program's lock, one transaction per file, and
errors that name the file and what to do.

A desktop GIS editing a layer, or a reader holding a transaction open, locks a database file.
A sync waits for it with backoff up to ``lock_wait_seconds``, logging who holds the file, then
fails with one clear line; it never waits silently, and never writes half of its outputs: every
database the run writes is checked for the lock before the first one is written.
"""

import errno
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from dagster import Failure, get_dagster_logger

from countysync_assets.io_managers.publishing import StagedWrite, abandon

LOCK_ERRORS = ("database is locked", "database table is locked")


class OutputError(Failure):
    """An output could not be written; the message names the file and what to do."""


def lock_holders(path: Path) -> str:
    """The other programs that have ``path`` (or its -wal/-journal) open, e.g. 'qgis (pid
    4121)'; 'another program' where the operating system does not tell."""
    names = {str(path), f"{path}-wal", f"{path}-journal", f"{path}-shm"}
    found = []
    for process in psutil.process_iter(["pid", "name"]):
        if process.pid == os.getpid():
            continue
        try:
            if any(f.path in names for f in process.open_files()):
                found.append(f"{process.info['name']} (pid {process.pid})")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return ", ".join(found[:5]) or "another program"


def is_locked(err: Exception) -> bool:
    return isinstance(err, sqlite3.OperationalError) and str(err) in LOCK_ERRORS


def open_database(path: Path) -> sqlite3.Connection:
    """A connection with explicit transactions, in WAL mode where the file allows it (readers
    then never hold up a commit, and a killed writer leaves the file readable). It does not
    checkpoint as it commits: ``OutputTransactions.publish`` does, for every file at once.
    Any one thread may use it (the checkpoints run on threads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=1, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as err:  # a reader holds it: keep the current mode
        if not is_locked(err):
            conn.close()
            raise
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def wait_for(path: Path, attempt: Callable[[], None], what: str, wait_seconds: float) -> None:
    """Run ``attempt`` until no other program's lock stops it, with backoff, logging who
    holds the file at once and every 10 s; after ``wait_seconds``, fail naming them."""
    started = time.monotonic()
    delay, logged = 0.1, started
    while True:
        try:
            attempt()
            return
        except sqlite3.OperationalError as err:
            if not is_locked(err):
                raise
        waited = time.monotonic() - started
        if waited >= wait_seconds:
            raise OutputError(
                f"{path.name} is locked by {lock_holders(path)} and stayed locked for "
                f"{waited:.0f} s, so the sync could not {what}. Close the file there (or end its "
                "editing session) and run the sync again; the outputs are as they were before "
                "this run.") from None
        if logged == started or time.monotonic() - logged >= 10:
            get_dagster_logger().warning(
                f"Waiting for {path.name}, locked by {lock_holders(path)} ({waited:.0f} s of at "
                f"most {wait_seconds:.0f} s).")
            logged = time.monotonic()
        time.sleep(min(delay, max(wait_seconds - waited, 0)))
        delay = min(delay * 2, 0.5)  # a lock is often held for a moment only: look again soon


class OutputTransactions:
    """The transactions one output opens, one per database file: a second write to another
    table of the same file joins the open transaction (a second connection would wait on the
    first one's lock), and the file commits once."""

    def __init__(self, lock_wait_seconds: float = 120):
        self.lock_wait_seconds = lock_wait_seconds
        self._open: dict[Path, sqlite3.Connection] = {}

    def check_writable(self, paths: Iterable[Path]) -> None:
        """Wait until each existing database can be written, before anything is: a lock
        found later would leave some outputs written and others not."""
        for path in paths:
            if path.is_file():
                conn = open_database(path)
                try:
                    wait_for(path, lambda c=conn: c.execute("BEGIN IMMEDIATE"), "start writing",
                             self.lock_wait_seconds)
                finally:
                    abandon(conn)

    def begin(self, path: Path, description: str,
              prepare: Callable[[sqlite3.Connection], None] | None = None
              ) -> tuple[sqlite3.Connection, StagedWrite]:
        """The open write transaction on ``path`` and what commits it (nothing, when this
        output already has the file open: its first write commits both)."""
        key = path.resolve()
        if key in self._open:
            conn = self._open[key]
            return conn, StagedWrite(description, [], [lambda: abandon(conn)])
        conn = open_database(path)
        try:
            if prepare:
                prepare(conn)
            wait_for(path, lambda: conn.execute("BEGIN IMMEDIATE"), "start writing",
                     self.lock_wait_seconds)
        except BaseException:
            abandon(conn)
            raise
        self._open[key] = conn

        def commit() -> None:
            try:
                wait_for(path, lambda: conn.execute("COMMIT"), "commit",
                         self.lock_wait_seconds)
            except BaseException:
                abandon(conn)
                raise

        return conn, StagedWrite(description, [commit], [lambda: abandon(conn)])

    def publish(self, staged: list[StagedWrite]) -> None:
        """Commit each staged write in turn (if one fails, the ones after it are rolled
        back); as soon as a file is committed, its write-ahead log is copied into it, beside
        the commits that follow and the other files' copies (a 1% sync of 1,000,000 parcels,
        six runs each: publishing took 0.86-1.25 s with every copy after the last commit,
        0.71-1.09 s with each after its own)."""
        with ThreadPoolExecutor(max(len(self._open), 1)) as pool:
            for position, write in enumerate(staged):
                try:
                    write.commit()
                except BaseException:
                    for later in staged[position + 1:]:
                        later.rollback()
                    raise
                for path, conn in self._committed():
                    pool.submit(_checkpoint, path, conn)

    def _committed(self) -> list[tuple[Path, sqlite3.Connection]]:
        """The open files whose transaction is committed, no longer this output's to roll
        back."""
        done = [(path, conn) for path, conn in self._open.items() if not conn.in_transaction]
        for path, _ in done:
            del self._open[path]
        return done

    def rollback(self) -> None:
        """Roll back and close every transaction still open (a failed output), so no lock
        outlives the run."""
        for conn in self._open.values():
            abandon(conn)
        self._open.clear()


def _checkpoint(path: Path, conn: sqlite3.Connection) -> None:
    """After a file's commit: copy its write-ahead log into it and close it. The rows are
    published already (a reader sees them in the log); this keeps the log small, as SQLite's
    own checkpoint after a commit would, but the files' disk syncs overlap instead of
    following one another (a 1% sync of 1,000,000 parcels spent ~0.55 s in three checkpoints
    in a row; its sync step 2.83 -> 2.60 s). Frames a reader still uses are left to a later
    checkpoint, as SQLite's own would leave them."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as err:
        get_dagster_logger().warning(
            f"{path.name}: its write-ahead log could not be copied into it yet ({err}); the "
            "next sync does it. The outputs are published.")
    finally:
        abandon(conn)


# Room a run needs on the export disk, as a multiple of the size its rows have in memory: the
# SQLite files, their write-ahead logs, the GeoPackage and the change files of every output
# built from those rows (measured: about 3x; 8x leaves room for indexes and the WAL).
ROOM_FACTOR = 8


def check_room(export_dir: str, size: int, asset: str) -> None:
    """Refuse to start writing when the export disk cannot hold what the run writes (rows of
    ``size`` bytes in memory), so a full disk stops a run before its first output, not
    between two of them."""
    needed = ROOM_FACTOR * int(size) + 16 * 2**20
    root = Path(export_dir)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < needed:
        raise OutputError(
            f"Cannot write {asset}: the disk holding {export_dir} is full (it has "
            f"{free / 2**20:.0f} MB free, and this sync needs about {needed / 2**20:.0f} MB). "
            "Free space there (or set COUNTYSYNC_EXPORT_DIR to a larger disk) and run the "
            "sync again; the outputs are as they were before this run.")


def explain(err: BaseException, asset: str, export_dir: str) -> OutputError | None:
    """One clear line for a failure to write ``asset``'s outputs that is the machine's, not
    the data's (a full disk, a read-only folder, a file in the way); None for other errors."""
    text = str(err)
    # SQLite in WAL mode reports a full disk as an I/O error when its -shm or -wal cannot grow
    if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or any(
            words in text for words in ("disk is full", "No space left", "disk I/O error")):
        return OutputError(
            f"Cannot write {asset}: the disk holding {export_dir} is full or failing "
            f"({text.splitlines()[0] if text else type(err).__name__}). Free space there (or "
            "set COUNTYSYNC_EXPORT_DIR to a larger disk) and run the sync again; the outputs "
            "are as they were before this run.")
    if (isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)) \
            or "readonly database" in text or "unable to open database file" in text:
        return OutputError(
            f"Cannot write {asset}: {export_dir} (or a file in it) is not writable for the "
            "user running Dagster. Fix its permissions (or the mount) and run the sync again; "
            "the outputs are as they were before this run.")
    return None
