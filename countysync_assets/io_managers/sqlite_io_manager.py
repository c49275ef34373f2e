"""SQLite: the merged current state of an asset, one table per asset.

Each output is upserted on the asset's key columns in one transaction (WAL mode). A stored row
is replaced only by a version whose cursor (``updated_at``) is newer, or equally new with
different values, so re-materializing an old window never overwrites newer data and a rerun
writes nothing. Assets without key columns (summaries) are replaced whole, in one transaction.
"""

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import adbc_driver_sqlite.dbapi as adbc_sqlite
import pandas as pd
from dagster import InputContext, OutputContext, TimeWindow

from countysync_assets.io_managers.format_io_manager import (
    CURSOR_COLUMN,
    KEY_COLUMNS,
    SQLITE_DB,
    BatchWriter,
    FormatIOManager,
    OutputTarget,
    RemovalWriter,
    in_window,
    input_window,
)
from countysync_assets.io_managers.output_transactions import OutputTransactions, open_database
from countysync_assets.io_managers.publishing import (
    ISO_FORMAT,
    StagedWrite,
    asset_name,
    export_path,
    quote,
    timestamps_to_iso,
)
from countysync_assets.io_managers.running_totals import (
    check_aggregate,
    group_by_sql,
    totals_table,
)

TIMESTAMP = "TIMESTAMP"  # declared type of datetime columns, read back as UTC datetimes
SYNC_LOG = "sync_log"  # one row per write, in the same transaction as the data
SYNC_LOG_SCHEMA = """CREATE TABLE IF NOT EXISTS sync_log (
    logged_at TEXT NOT NULL, run_id TEXT, asset TEXT NOT NULL, partitions TEXT,
    rows_in INTEGER, inserted INTEGER, updated INTEGER, unchanged INTEGER, deleted INTEGER,
    watermark_before TEXT, watermark_after TEXT, seconds REAL)"""


SCHEMA_TYPES = {"integer": "INTEGER", "float": "REAL", "string": "TEXT",
                "timestamp": TIMESTAMP, "geometry": "BLOB"}


def sqlite_type(series: pd.Series, declared: str | None = None) -> str:
    """The column type: from the asset's column schema if declared, else from the data."""
    if declared in SCHEMA_TYPES:
        return SCHEMA_TYPES[declared]
    dtype = series.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return TIMESTAMP
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        return "INTEGER"
    if pd.api.types.is_float_dtype(dtype):
        return "REAL"
    sample = series.dropna()
    if len(sample) and isinstance(sample.iloc[0], bytes | bytearray | memoryview):
        return "BLOB"
    return "TEXT"


ROWS_PER_CHUNK = 50_000
READ_WAIT_MS = 30_000  # another sync holding the file a moment: wait for it, do not fail
EMPTY_DTYPES = {"INTEGER": "int64", "REAL": "float64", "TEXT": "object"}


def has_table(path: Path, table: str) -> bool:
    """Whether the SQLite file ``path`` exists and has ``table`` (read-only look)."""
    if not path.is_file():
        return False
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return table_exists(conn, table)


def table_exists(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                        (table,)).fetchone() is not None


def to_rows(frame: pd.DataFrame) -> Iterator[tuple]:
    """Rows as plain Python values (ISO text for timestamps, None for missing), converted a
    chunk at a time: ``executemany`` takes an iterator, so a county's worth of Python tuples
    never exists at once."""
    for start in range(0, len(frame), ROWS_PER_CHUNK):
        chunk = timestamps_to_iso(frame.iloc[start:start + ROWS_PER_CHUNK])
        columns = []
        for name in chunk.columns:  # column by column: a third faster than the whole frame
            values = chunk[name].to_numpy(dtype=object, copy=True)
            values[pd.isna(values)] = None
            columns.append(values.tolist())
        yield from zip(*columns, strict=True)


def newer_rule(table: str, incoming: str, values: list[str], cursor: str | None,
               cursor_expr: str = "{}") -> str:
    """SQL that is true where the ``incoming`` row may replace the stored one: a newer
    version, or an equally new one with different values (never an older one).
    ``cursor_expr`` wraps the cursor for comparison."""
    differs = " OR ".join(f"{table}.{quote(c)} IS NOT {incoming}.{quote(c)}" for c in values)
    if not cursor:
        return differs
    new = cursor_expr.format(f"{incoming}.{quote(cursor)}")
    old = cursor_expr.format(f"{table}.{quote(cursor)}")
    return f"{new} > {old} OR ({new} = {old} AND ({differs}))"


def upsert_clause(table: str, columns: list[str], keys: list[str], cursor: str | None) -> str:
    """``ON CONFLICT (keys) DO UPDATE ...`` that lets only a newer or equally new, different
    version replace the stored row."""
    values = [c for c in columns if c not in keys]
    assignments = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in values)
    return (f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {assignments} "
            f"WHERE {newer_rule(quote(table), 'excluded', values, cursor)}")


def has_rows(conn: sqlite3.Connection, table: str) -> bool:
    """Whether ``table`` exists and holds a row."""
    return table_exists(conn, table) and conn.execute(
        f"SELECT 1 FROM {quote(table)} LIMIT 1").fetchone() is not None


def read_chunks(path: Path, table: str, columns: list[str], where: str | None = None
                ) -> Iterator[pd.DataFrame]:
    """``columns`` of every row of ``table`` in the SQLite file ``path`` (those matching the
    SQL filter ``where``, if given), ROWS_PER_CHUNK at a time, so a county's table is never
    one frame; nothing if there is no such table.

    Read as Arrow batches by ADBC's SQLite driver (no Python object per number: a million
    ids in 0.1 s against 0.65 s through sqlite3 and pandas). The driver takes each column's
    type from the values of the first batch, so the query starts with one row of each
    column's declared type, dropped here: a text column NULL in every row of the first batch
    would otherwise be read as numbers and fail at its first text. A filter that keeps a
    large share of the table is applied while scanning it (``NOT INDEXED``): following an
    index to each row in turn took 2.2 s for a million rows where the scan takes 0.2 s.
    The driver does not wait on a lock by default: a sync writing the same file at once
    (a database not yet in WAL mode, a checkpoint) would fail the read, so it waits."""
    if not path.is_file():
        return
    with closing(adbc_sqlite.connect(f"file:{path}?mode=ro")) as conn, \
            closing(conn.cursor()) as cursor:
        cursor.execute(f"PRAGMA busy_timeout = {READ_WAIT_MS}")
        cursor.execute(f"PRAGMA table_info({quote(table)})")
        declared = {name: kind for _, name, kind, *_ in cursor.fetchall()}
        if not declared:
            return
        names = ", ".join(map(quote, columns))
        typed = ", ".join(f"{_typed_value(declared.get(c, ''))} AS {quote(c)}" for c in columns)
        source = quote(table)
        if where and _most_rows(cursor, source, where):
            source += " NOT INDEXED"
        cursor.adbc_statement.set_options(
            **{"adbc.sqlite.query.batch_rows": str(ROWS_PER_CHUNK)})
        cursor.execute(f"SELECT {typed} UNION ALL SELECT {names} FROM {source}"
                       + (f" WHERE {where}" if where else ""))
        for position, batch in enumerate(cursor.fetch_record_batch()):
            frame = batch.to_pandas()
            if position == 0:
                frame = frame.iloc[1:].reset_index(drop=True)
            if len(frame):
                yield frame


def _typed_value(declared: str) -> str:
    """A literal of the type SQLite stores in a column declared ``declared`` (its affinity,
    https://www.sqlite.org/datatype3.html; date and time columns hold ISO text here), NULL
    where no one type is known."""
    kind = declared.upper()
    if "INT" in kind:
        return "0"
    if any(word in kind for word in ("CHAR", "CLOB", "TEXT", "DATE", "TIME")):
        return "''"
    if any(word in kind for word in ("REAL", "FLOA", "DOUB")):
        return "0.0"
    return "NULL"


def _most_rows(cursor: adbc_sqlite.Cursor, source: str, where: str) -> bool:
    """Whether ``where`` keeps more than an eighth of a table's rows, when that is more than
    a chunk (below that the index is cheap however big the table): counted on the filter's
    index, which stops after the chunk's worth (milliseconds)."""
    cursor.execute(f"SELECT count(*) FROM (SELECT 1 FROM {source} WHERE {where} "
                   f"LIMIT {ROWS_PER_CHUNK + 1})")
    if cursor.fetchone()[0] <= ROWS_PER_CHUNK:
        return False
    cursor.execute(f"SELECT count(*) FROM {source}")
    total = cursor.fetchone()[0]
    cursor.execute(f"SELECT count(*) FROM {source} WHERE {where}")
    return cursor.fetchone()[0] * 8 > total


def count_rows(path: Path, table: str) -> int:
    """How many rows ``table`` in the SQLite file ``path`` holds (0 if none): SQLite counts
    the entries of its smallest index, tens of milliseconds per million rows."""
    if not path.is_file():
        return 0
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        if not table_exists(conn, table):
            return 0
        return conn.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]


def insert_sql(table: str, columns: list[str]) -> str:
    names = ", ".join(quote(c) for c in columns)
    return f"INSERT INTO {quote(table)} ({names}) VALUES ({', '.join('?' for _ in columns)})"


def cursor_index(conn: sqlite3.Connection, table: str, cursor: str) -> None:
    """The index on the cursor column (watermarks, window reads)."""
    conn.execute(f"CREATE INDEX IF NOT EXISTS {quote(f'ix_{table}_{cursor}')} "
                 f"ON {quote(table)} ({quote(cursor)})")


def ensure_table(conn: sqlite3.Connection, table: str, frame: pd.DataFrame,
                 declared: dict[str, str], keys: list[str]) -> None:
    """Create the table (primary key on ``keys``) or add columns the asset gained since."""
    existing = {row[1] for row in conn.execute(f"PRAGMA table_info({quote(table)})")}
    if not existing:
        columns = [f"{quote(c)} {sqlite_type(frame[c], declared.get(c))}" for c in frame.columns]
        if keys:
            columns.append(f"PRIMARY KEY ({', '.join(quote(k) for k in keys)})")
        conn.execute(f"CREATE TABLE {quote(table)} ({', '.join(columns)})")
        return
    for column in frame.columns:
        if column not in existing:
            conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column)} "
                         f"{sqlite_type(frame[column], declared.get(column))}")


def log_sync(conn: sqlite3.Connection, run_id: str, table: str, keys: list[str],
             counts: dict) -> None:
    """One row of ``sync_log``, in the write's own transaction."""
    partitions = f"{keys[0]}...{keys[-1]}" if len(keys) > 1 else (keys[0] if keys else None)
    conn.execute(SYNC_LOG_SCHEMA)
    conn.execute(
        "INSERT INTO sync_log VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), :run_id, "
        ":asset, :partitions, :rows_in, :inserted, :updated, :unchanged, :deleted, "
        ":watermark_before, :watermark_after, :seconds)",
        {"rows_in": 0, "inserted": 0, "updated": 0, "unchanged": 0, "deleted": 0,
         "watermark_before": None, "watermark_after": None, **counts, "run_id": run_id,
         "asset": table, "partitions": partitions})


def watermark(conn: sqlite3.Connection, table: str, cursor: str | None) -> str | None:
    """The newest cursor value stored (the cursor is indexed: this is one seek)."""
    if not cursor:
        return None
    return conn.execute(f"SELECT max({quote(cursor)}) FROM {quote(table)}").fetchone()[0]


class SQLiteWriter(BatchWriter):
    """Upserts one output's batches into its table, in the file's one transaction.

    Keyed rows go first into a temporary table in arrival order (an append), then into the
    table sorted by key in one statement, newer-wins: the table's B-tree is then written in
    key order (a county's first sync: an append; random-order inserts took 3x as long), and
    the incoming keys the table already held are counted by one join. Into a new table the
    cursor index is built after the load (one sort, not an index update per row). Summaries
    (no key) are replaced whole."""

    def __init__(self, path: Path, target: OutputTarget, files: OutputTransactions):
        self.path, self.target, self.table = path, target, target.name
        self.database = path.resolve()
        self.keys = list(target.metadata.get(KEY_COLUMNS) or [])
        self.cursor = target.metadata.get(CURSOR_COLUMN)
        schema = target.metadata.get("dagster/column_schema")
        self.declared = {c.name: c.type for c in schema.columns} if schema else {}
        self.started = time.monotonic()
        self.conn, self.staged = files.begin(path, f"{path.name}:{self.table}")
        self.incoming = f"incoming_{self.table}"
        self.columns: list[str] = []
        self.statement: str | None = None
        self.counts = {"rows_in": 0, "inserted": 0, "updated": 0, "unchanged": 0,
                       "deleted": 0}

    def _prepare(self, frame: pd.DataFrame) -> None:
        """At the first batch: the table, and where the batches go (the temporary table of
        keyed rows, or the summary's emptied table)."""
        conn, table = self.conn, self.table
        ensure_table(conn, table, frame, self.declared, self.keys)
        self.counts["watermark_before"] = watermark(conn, table, self.cursor)
        self.columns = list(frame.columns)
        names = ", ".join(map(quote, self.columns))
        if self.keys:  # the table's columns and types (affinity), none of its constraints
            conn.execute(f"CREATE TEMP TABLE {quote(self.incoming)} AS SELECT {names} FROM "
                         f"main.{quote(table)} WHERE 0")
            self.statement = insert_sql(self.incoming, self.columns)  # temp: found first
        else:
            conn.execute(f"DELETE FROM {quote(table)}")
            self.statement = insert_sql(table, self.columns)

    def write(self, frame: pd.DataFrame) -> None:
        try:
            if self.statement is None:
                self._prepare(frame)
            self.conn.executemany(self.statement, to_rows(frame))
        except BaseException:
            self.discard()
            raise
        self.counts["rows_in"] += len(frame)

    def _merge(self) -> None:
        """The incoming rows into the table in key order, newer-wins, and counted: inserted
        (keys the table did not hold), updated, unchanged (an older or equal version)."""
        conn, table, incoming = self.conn, quote(self.table), f"temp.{quote(self.incoming)}"
        keys = ", ".join(map(quote, self.keys))
        stored = conn.execute(f"SELECT count(*) FROM {incoming} JOIN main.{table} USING "
                              f"({keys})").fetchone()[0]
        names = ", ".join(map(quote, self.columns))
        upsert = upsert_clause(self.table, self.columns, self.keys, self.cursor)
        # WHERE true: an upsert's SELECT needs a WHERE (SQLite's parser); rowid keeps the
        # arrival order of a key that came twice
        written = conn.execute(f"INSERT INTO main.{table} ({names}) SELECT {names} FROM "
                               f"{incoming} WHERE true ORDER BY {keys}, rowid {upsert}").rowcount
        conn.execute(f"DROP TABLE {incoming}")
        rows = self.counts["rows_in"]
        self.counts.update(inserted=rows - stored, updated=written - rows + stored,
                           unchanged=rows - written)

    def finish(self) -> StagedWrite:
        try:
            if self.statement is not None:  # something was written
                if self.keys:
                    self._merge()
                else:
                    self.counts["inserted"] = self.counts["rows_in"]
                if self.cursor:
                    cursor_index(self.conn, self.table, self.cursor)
            counts = {**self.counts, "seconds": round(time.monotonic() - self.started, 3),
                      "watermark_after": watermark(self.conn, self.table, self.cursor)
                      if self.statement is not None else None}
            log_sync(self.conn, self.target.run_id, self.table, self.target.partition_keys,
                     counts)
        except BaseException:
            self.discard()
            raise
        self.staged.metadata = {
            "sqlite_path": str(self.path),
            "sqlite_table": self.table,
            "sqlite_rows_inserted": counts["inserted"],
            "sqlite_rows_updated": counts["updated"],
            "sqlite_rows_unchanged": counts["unchanged"],
            "watermark_before": counts.get("watermark_before") or "",
            "watermark_after": counts["watermark_after"] or "",
            "sync_seconds": counts["seconds"],
        }
        return self.staged

    def discard(self) -> None:
        self.staged.rollback()


class SQLiteRemovals(RemovalWriter):
    """Deletes ids from an asset's table, unless the stored version is newer (the id came
    back), and keeps any tombstones in this database's ``deleted_parcels`` table; in the
    file's one transaction. Logged in ``sync_log`` when it deletes or records something."""

    def __init__(self, path: Path, asset: str, run_id: str, files: OutputTransactions):
        self.path, self.asset, self.run_id = path, asset, run_id
        self.started = time.monotonic()
        self.files, self.conn, self.staged = files, None, None
        self.deleted = self.rows_in = 0
        self.tombstones = False

    def write(self, removals: pd.DataFrame, tombstones: pd.DataFrame | None = None) -> None:
        if tombstones is None and (not len(removals) or not self.path.exists()):
            return  # nothing to remove from a file never written: a first sync
        try:
            if self.conn is None:
                self.conn, self.staged = self.files.begin(
                    self.path, f"{self.path.name}:{self.asset} deletes")
            self.rows_in += len(removals)
            # an empty table (no rejects yet, say) is skipped: a first sync removes nothing
            if len(removals) and has_rows(self.conn, self.asset):
                self.deleted += max(self.conn.executemany(
                    f'DELETE FROM {quote(self.asset)} WHERE "id" = ? AND "updated_at" <= ?',
                    to_rows(removals[["id", "as_of"]])).rowcount, 0)
            if tombstones is not None:
                self.tombstones = True
                ensure_table(self.conn, "deleted_parcels", tombstones, {}, ["id"])
                columns = list(tombstones.columns)
                self.conn.executemany(
                    f"{insert_sql('deleted_parcels', columns)} "
                    f"{upsert_clause('deleted_parcels', columns, ['id'], 'deleted_at')}",
                    to_rows(tombstones))
        except BaseException:
            self.discard()
            raise

    def finish(self) -> StagedWrite:
        if self.conn is None:
            return StagedWrite(f"{self.path.name}:{self.asset} deletes",
                               metadata={f"deleted_from_{self.asset}": 0})
        try:
            if self.tombstones or self.deleted:
                log_sync(self.conn, self.run_id, self.asset, [], {
                    "rows_in": self.rows_in, "deleted": self.deleted,
                    "seconds": round(time.monotonic() - self.started, 3)})
        except BaseException:
            self.discard()
            raise
        self.staged.metadata = {f"deleted_from_{self.asset}": self.deleted}
        return self.staged

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.rollback()


class SQLiteIOManager(FormatIOManager):
    """Current state in ``<export_dir>/<db>.sqlite``, table ``<asset>``."""

    def db_path(self, context: OutputContext | InputContext) -> Path:
        metadata = (context.upstream_output if isinstance(context, InputContext)
                    else context).definition_metadata or {}
        return self._path(asset_name(context), metadata)

    def _path(self, asset: str, metadata: dict) -> Path:
        return export_path(self.export_dir, metadata.get(SQLITE_DB) or f"{asset}.sqlite")

    def newest(self, asset: str, metadata: dict) -> str | None:
        """The newest cursor value ``asset``'s table holds (ISO text); None if not written."""
        path, cursor = self._path(asset, metadata), metadata.get(CURSOR_COLUMN)
        if not cursor or not has_table(path, asset):
            return None
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return watermark(conn, asset, cursor)

    def iter_columns(self, asset: str, metadata: dict, columns: list[str],
                     window: TimeWindow | None = None) -> Iterator[pd.DataFrame]:
        """``columns`` of every row ``asset``'s table holds (whose cursor falls in ``window``,
        if given: an index range), in chunks (none if not written)."""
        yield from read_chunks(self._path(asset, metadata), asset, columns,
                               window and in_window(metadata.get(CURSOR_COLUMN), window))

    def count(self, asset: str, metadata: dict) -> int:
        """How many rows ``asset``'s table holds."""
        return count_rows(self._path(asset, metadata), asset)

    def open(self, target: OutputTarget, files: OutputTransactions) -> BatchWriter:
        return SQLiteWriter(self._path(target.name, target.metadata), target, files)

    def open_delete(self, asset: str, metadata: dict, run_id: str, files: OutputTransactions
                    ) -> RemovalWriter:
        return SQLiteRemovals(self._path(asset, metadata), asset, run_id, files)

    def load_input(self, context: InputContext) -> pd.DataFrame:
        """The current rows of the requested partitions (all rows if unpartitioned).

        An input with ``metadata={"columns": [...]}`` reads only those columns, as in
        dagster-duckdb. One with ``metadata={"aggregate": ...}`` gets totals per group instead
        of rows (see ``running_totals``): over the whole table from the running totals, over
        a partition window by a GROUP BY of the window's rows.
        """
        path, table = self.db_path(context), asset_name(context)
        wanted = (context.definition_metadata or {}).get("columns")
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist yet: materialize {context.asset_key.to_user_string()} "
                "before the assets that read it."
            )
        cursor = (context.upstream_output.definition_metadata or {}).get(CURSOR_COLUMN)
        aggregate = (context.definition_metadata or {}).get("aggregate")
        window = input_window(context)
        params: list[str] = []
        if aggregate and window is None:
            check_aggregate(aggregate)
            with closing(open_database(path)) as conn:
                totals = totals_table(conn, table, aggregate)
            names = [aggregate["by"], *aggregate["values"]]
            query = f"SELECT {', '.join(map(quote, names))} FROM {quote(totals)}"
        else:
            if aggregate:
                check_aggregate(aggregate)
                query = group_by_sql(table, aggregate)
            else:
                selected = ", ".join(map(quote, wanted)) if wanted else "*"
                query = f"SELECT {selected} FROM {quote(table)}"
            if window is not None:
                query += f" WHERE {quote(cursor)} >= ? AND {quote(cursor)} < ?"
                params = [window.start.strftime(ISO_FORMAT), window.end.strftime(ISO_FORMAT)]
            if aggregate:
                query += f" GROUP BY {quote(aggregate['by'])}"
        with closing(sqlite3.connect(path)) as conn:
            declared = {row[1]: row[2]
                        for row in conn.execute(f"PRAGMA table_info({quote(table)})")}
            missing = [c for c in wanted or [] if c not in declared]
            if missing:
                raise ValueError(
                    f"Table {table} in {path.name} has no column(s) {missing}, which the "
                    f"source does not have; it has {list(declared)}. Rename them in the "
                    "source or a view over it, then re-run."
                )
            # in chunks: the DBAPI's row tuples for a whole county cost more than the frame
            chunks = list(pd.read_sql_query(query, conn, params=params, chunksize=100_000))
            frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
        for column, declared_type in declared.items():
            if declared_type == TIMESTAMP and column in frame:
                frame[column] = pd.to_datetime(frame[column], utc=True,
                                               format="ISO8601").astype("datetime64[us, UTC]")
            elif frame.empty and declared_type in EMPTY_DTYPES and column in frame:
                # no rows to infer from: the declared type, so an empty window type-checks
                frame[column] = frame[column].astype(EMPTY_DTYPES[declared_type])
        return frame
