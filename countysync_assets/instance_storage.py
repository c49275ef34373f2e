"""The Dagster instance's storage, local (SQLite) and production (PostgreSQL): Dagster's own,
with a new run's planned events and a range run's materializations stored in batches, and on
SQLite without reopening its files for every event.

Dagster's SQLite event log builds a new SQLAlchemy engine, opens a connection, commits and
closes it for each write, four times for an asset's event (its run's file, then the index),
and a new engine starts with an empty statement cache, so every insert is compiled again:
~13 ms an event here. A sync run records a few events per asset and window (planned,
materialized, the checks' results), so on a range run this cost more than the rows did.
``KeptEnginesEventLogStorage`` keeps one engine and one connection per database file it
writes (the index, and the few newest runs'), each used under Dagster's own lock: the same
tables and transactions, ~3 ms an event. And it writes the asset events of a batch, which
Dagster hands over when ``DAGSTER_EVENT_BATCH_SIZE`` is set (a range run's materializations
of an asset, the planned events of a new run), in one transaction per file. A new run's file
is a copy of an empty one made once per Dagster version: Dagster builds each from its schema
and stamps it through alembic, ~150 ms of every run here; a copy takes 1 ms. A file already
stamped is not set up again (Dagster's set-up would load every alembic script to do nothing).
``dagster.yaml`` selects it as ``CountysyncSqliteStorage``, which lays out its files as
Dagster's default storage does, so an instance made before keeps its history, and sets that
batch size. The production instance (``deploy/dagster.production.yaml``) is
``CountysyncPostgresStorage``: dagster-postgres's storage, whose batch write takes only
materializations (a new run's ~6 planned events per window went one by one, each on a new
connection), with the same batch write.

This leans on private parts of Dagster's event logs (SQLite's ``_connect``, which it
replaces, and the lock, schema set-up and index writers that method and the batch write use,
the same ones Dagster's own storages call): ``pyproject.toml`` pins Dagster to 1.13 and
dagster-postgres to 0.29, and the test suite runs on these storages (every instance the
tests make, ``dagster dev`` and Celery workers included; the production one in
``tests/test_production_instance.py``).
"""

import itertools
import os
import shutil
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from dagster import Field, StringSource
from dagster import __version__ as dagster_version
from dagster._config.config_schema import UserConfigSchema
from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from dagster._utils import mkdir_p
from dagster_postgres import DagsterPostgresStorage, PostgresEventLogStorage
from dagster_postgres.auth import PgTokenProvider
from dagster_postgres.utils import get_token_provider_from_config, pg_config, pg_url_from_config
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool

EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
KEPT_RUN_FILES = 4  # run files whose engine stays open besides the index's (newest used)
_LIVE: "weakref.WeakSet[KeptEnginesEventLogStorage]" = weakref.WeakSet()
BATCH_SIZE_FIELD = Field(int, is_required=False,
                         description="Dagster's DAGSTER_EVENT_BATCH_SIZE, unless set")


def use_event_batch_size(size: int) -> None:
    """Dagster's event batch size in this process (a run's included: it opens the instance
    too), unless the environment sets one; Dagster reads it at each event."""
    if size:
        os.environ.setdefault(EVENT_BATCH_SIZE_ENV, str(size))


class AssetEventBatches:
    """An event log's batch write: the asset events of a batch Dagster hands over (with
    ``DAGSTER_EVENT_BATCH_SIZE`` set: a range run's materializations of an asset; the planned
    events of a new run) stored as Dagster's ``store_event`` stores them, but in one
    transaction per database; any other event (a check's) on its own, in the batch's order.
    Mixed into an ``SqlEventLogStorage``, which ``_store_asset_events`` writes to."""

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        for is_asset, group in itertools.groupby(
                events, key=lambda event: event.get_dagster_event().event_type in ASSET_EVENTS):
            if is_asset:
                self._store_asset_events(list(group))
            else:
                for event in group:
                    self.store_event(event)

    def _store_asset_events(self, events: list[EventLogEntry]) -> None:
        raise NotImplementedError

    def _store_asset_records(self, conn: Connection, events: list[EventLogEntry],
                             ids: list[int]) -> None:
        """The index's side of stored asset events (``ids``, in order): their tags, and each
        asset's record. An asset's record is overwritten by each event (its newest
        materialization, run, time): the newest event of each asset and kind, in order,
        leaves what writing every event would, without serializing each."""
        self._store_asset_event_tags(conn, events, ids)
        newest = {(event.get_dagster_event().asset_key, event.get_dagster_event().event_type):
                  (event_id, event) for event, event_id in zip(events, ids, strict=True)}
        for event_id, event in sorted(newest.values(), key=lambda pair: pair[0]):
            self._store_asset_event(conn, event, event_id)


class KeptEnginesEventLogStorage(AssetEventBatches, SqliteEventLogStorage):
    """Dagster's SQLite event log, each database file's engine and connection kept open, asset
    events written in batches."""

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
        new_run_file = (shard != INDEX_SHARD_NAME and shard not in self._initialized_dbs
                        and self._copy_empty_run_file(shard))
        engine = self._create_engine(create_db_conn_string(self._base_dir, shard))
        if shard not in self._initialized_dbs:
            if not (new_run_file or _stamped(engine)):
                self._initdb(engine)
            self._initialized_dbs.add(shard)
        return engine

    @staticmethod
    def _create_engine(url: str) -> Engine:
        return create_engine(
            url, poolclass=StaticPool,
            # used by whichever thread holds the lock, never by two at once
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})

    def _copy_empty_run_file(self, shard: str) -> bool:
        """Create run ``shard``'s file as a copy of an empty run file with Dagster's schema
        (made by Dagster, once per version, beside the run files; not a ``*.db``, which
        Dagster would take for a run's); False where the file exists (another process made
        it, or an older run's: Dagster's own set-up checks it) or cannot be linked."""
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return False
        empty = os.path.join(self._base_dir, f".empty-run-{dagster_version}.sqlite")
        if not os.path.exists(empty):
            making = f"{empty}.{os.getpid()}.tmp"
            engine = self._create_engine(f"sqlite:///{making}")
            try:
                self._initdb(engine)
            finally:
                engine.dispose()  # its last connection closes: the WAL is folded in
            os.replace(making, empty)  # whole, or not there: processes may race to make it
        copy = f"{path}.{os.getpid()}.tmp"
        shutil.copyfile(empty, copy)
        try:
            os.link(copy, path)  # never over a file another process made meanwhile
        except OSError:
            return False
        finally:
            os.unlink(copy)
        return True

    def _store_asset_events(self, events: list[EventLogEntry]) -> None:
        insert = self.prepare_insert_event_batch(events)
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(insert)
        with self.index_transaction() as conn:  # mirrored in the index, as store_event does
            # SQLite numbers the rows in the order of the VALUES, but returns them in any order
            ids = sorted(row[0] for row in conn.execute(
                insert.returning(SqlEventLogStorageTable.c.id)))
            self._store_asset_records(conn, events, ids)

    def forget_engines(self) -> None:
        """Close every kept engine; the next write opens its file again."""
        with self._db_lock:
            engines, self._engines = self._engines, OrderedDict()
        for engine in engines.values():
            engine.dispose()

    def wipe(self) -> None:
        self.forget_engines()  # before Dagster deletes the run files they have open
        super().wipe()

    def dispose(self) -> None:
        self.forget_engines()
        super().dispose()


def _stamped(engine: Engine) -> bool:
    """Whether the file has Dagster's schema, stamped by alembic: Dagster's set-up then does
    nothing, but finds that out by loading every alembic migration script (~25 ms a file and
    process: the index's, in every run)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).first() \
                is not None
    except OperationalError:  # no such table: a new or unfinished file
        return False


def _after_fork_in_child() -> None:
    """A forked child opens its own connections: the parent's are not to be used or closed
    from two processes (SQLite's rule), nor the lock taken, which a parent's thread may hold."""
    for storage in list(_LIVE):
        storage._engines = OrderedDict()


os.register_at_fork(after_in_child=_after_fork_in_child)


class CountysyncSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage under ``base_dir`` (its default files and layout), its event
    log ``KeptEnginesEventLogStorage``; ``event_batch_size`` becomes Dagster's
    ``DAGSTER_EVENT_BATCH_SIZE`` in each process that opens the instance (a run's included),
    unless the environment sets it."""

    def __init__(self, base_dir: str, event_batch_size: int = 0,
                 inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._event_log_storage = KeptEnginesEventLogStorage(_event_logs_directory(base_dir))
        use_event_batch_size(event_batch_size)

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {"base_dir": StringSource, "event_batch_size": BATCH_SIZE_FIELD}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,
                          config_value: dict) -> "CountysyncSqliteStorage":
        mkdir_p(config_value["base_dir"])
        return cls(inst_data=inst_data, **config_value)


class BatchedPostgresEventLogStorage(AssetEventBatches, PostgresEventLogStorage):
    """dagster-postgres's event log, every batch of asset events written in one transaction."""

    def _store_asset_events(self, events: list[EventLogEntry]) -> None:
        insert = self.prepare_insert_event_batch(events)
        with self.index_transaction() as conn:  # one database: the events and the index
            ids = sorted(row[0] for row in conn.execute(
                insert.returning(SqlEventLogStorageTable.c.id)))
            self._store_asset_records(conn, events, ids)


class CountysyncPostgresStorage(DagsterPostgresStorage):
    """Dagster's PostgreSQL storage (its config, tables and run and schedule storage), its
    event log ``BatchedPostgresEventLogStorage``; ``event_batch_size`` as in
    ``CountysyncSqliteStorage``. (Dagster's constructor makes a plain event log first, which
    is replaced: an engine without connections, and a look at the tables.)"""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None,
                 token_provider: PgTokenProvider | None = None, event_batch_size: int = 0):
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self._event_log_storage = BatchedPostgresEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider)
        use_event_batch_size(event_batch_size)

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {**pg_config(), "event_batch_size": BATCH_SIZE_FIELD}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,
                          config_value: dict) -> "CountysyncPostgresStorage":
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value),
                   event_batch_size=config_value.get("event_batch_size", 0))
