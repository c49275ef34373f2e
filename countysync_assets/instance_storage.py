"""The local Dagster instance's storage: Dagster's own SQLite files, written without reopening
them for every event.

Dagster's SQLite event log builds a new SQLAlchemy engine, opens a connection, commits and
closes it for each write, four times for an asset's event (its run's file, then the index),
and a new engine starts with an empty statement cache, so every insert is compiled again:
~13 ms an event here. A sync run records a few events per asset and window (planned,
materialized, the checks' results), so on a range run this cost more than the rows did.
``KeptEnginesEventLogStorage`` keeps one engine and one connection per database file it
writes (the index, and the few newest runs'), each used under Dagster's own lock: the same
tables and transactions, ~3 ms an event. ``dagster.yaml`` selects it as
``CountysyncSqliteStorage``, which lays out its files as Dagster's default storage does, so
an instance made before keeps its history. The production instance (PostgreSQL,
``deploy/``) is Dagster's own.

This leans on ``SqliteEventLogStorage._connect``, a private method: ``pyproject.toml`` pins
Dagster to 1.13, and the test suite runs on this storage (every instance the tests make,
``dagster dev`` and Celery workers included).
"""

import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

KEPT_RUN_FILES = 4  # run files whose engine stays open besides the index's (newest used)
_LIVE: "weakref.WeakSet[KeptEnginesEventLogStorage]" = weakref.WeakSet()


class KeptEnginesEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log, each database file's engine and connection kept open."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        super().__init__(base_dir, inst_data)
        _LIVE.add(self)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:  # one thread at a time, as in Dagster's: so one connection serves
            engine = self._engines.pop(shard, None) or self._engine(shard)
            self._engines[shard] = engine  # the newest used last
            run_files = [name for name in self._engines if name != INDEX_SHARD_NAME]
            for name in run_files[:-KEPT_RUN_FILES]:
                self._engines.pop(name).dispose()
            with engine.connect() as conn, conn.begin():
                yield conn

    def _engine(self, shard: str) -> Engine:
        engine = create_engine(
            create_db_conn_string(self._base_dir, shard), poolclass=StaticPool,
            # used by whichever thread holds the lock, never by two at once
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        return engine

    def forget_engines(self, close: bool = True) -> None:
        """Drop every kept engine (closing its connection unless in a forked child, where
        the connection is the parent's)."""
        with self._db_lock:
            engines, self._engines = self._engines, OrderedDict()
        for engine in engines.values():
            engine.dispose(close=close)

    def wipe(self) -> None:
        self.forget_engines()  # before Dagster deletes the run files they have open
        super().wipe()

    def dispose(self) -> None:
        self.forget_engines()
        super().dispose()


def _after_fork_in_child() -> None:
    for storage in list(_LIVE):
        storage.forget_engines(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


class CountysyncSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage under ``base_dir`` (its default files and layout), its event
    log ``KeptEnginesEventLogStorage``."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._event_log_storage = KeptEnginesEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,
                          config_value: dict) -> "CountysyncSqliteStorage":
        return cls.from_local(inst_data=inst_data, **config_value)
