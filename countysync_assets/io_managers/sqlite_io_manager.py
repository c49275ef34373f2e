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

import pandas as pd
from dagster import InputContext, OutputContext

from countysync_assets.io_managers.format_io_manager import (
    CURSOR_COLUMN,
    KEY_COLUMNS,
    SQLITE_DB,
    FormatIOManager,
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
EMPTY_DTYPES = {"INTEGER": "int64", "REAL": "float64", "TEXT": "object"}


def _has_table(path: Path, table: str) -> bool:
    if not path.is_file():
        return False
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                            (table,)).fetchone() is not None


def to_rows(frame: pd.DataFrame) -> Iterator[tuple]:
    """Rows as plain Python values (ISO text for timestamps, None for missing), converted a
    chunk at a time: ``executemany`` takes an iterator, so a county's worth of Python tuples
    never exists at once."""
    for start in range(0, len(frame), ROWS_PER_CHUNK):
        plain = timestamps_to_iso(frame.iloc[start:start + ROWS_PER_CHUNK]).astype(object)
        yield from plain.where(plain.notna(), None).itertuples(index=False, name=None)


def upsert_clause(table: str, columns: list[str], keys: list[str], cursor: str | None,
                  cursor_expr: str = "{}") -> str:
    """``ON CONFLICT (keys) DO UPDATE ...`` that lets only a newer or equally new, different
    version replace the stored row. ``cursor_expr`` wraps the cursor for comparison."""
    values = [c for c in columns if c not in keys]
    target = quote(table)
    differs = " OR ".join(f"{target}.{quote(c)} IS NOT excluded.{quote(c)}" for c in values)
    rule = differs
    if cursor:
        new = cursor_expr.format(f"excluded.{quote(cursor)}")
        old = cursor_expr.format(f"{target}.{quote(cursor)}")
        rule = f"{new} > {old} OR ({new} = {old} AND ({differs}))"
    assignments = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in values)
    return (f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) "
            f"DO UPDATE SET {assignments} WHERE {rule}")


def has_rows(conn: sqlite3.Connection, table: str) -> bool:
    """Whether ``table`` exists and holds a row."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                          (table,)).fetchone()
    return bool(exists) and conn.execute(
        f"SELECT 1 FROM {quote(table)} LIMIT 1").fetchone() is not None


def insert_sql(table: str, columns: list[str]) -> str:
    names = ", ".join(quote(c) for c in columns)
    return f"INSERT INTO {quote(table)} ({names}) VALUES ({', '.join('?' for _ in columns)})"


class SQLiteIOManager(FormatIOManager):
    """Current state in ``<export_dir>/<db>.sqlite``, table ``<asset>``."""

    def db_path(self, context: OutputContext | InputContext) -> Path:
        metadata = (context.upstream_output if isinstance(context, InputContext)
                    else context).definition_metadata or {}
        return export_path(self.export_dir,
                           metadata.get(SQLITE_DB) or f"{asset_name(context)}.sqlite")

    def stage(self, context: OutputContext, obj: pd.DataFrame,
              files: OutputTransactions) -> StagedWrite:
        metadata = context.definition_metadata or {}
        keys = list(metadata.get(KEY_COLUMNS) or [])
        cursor = metadata.get(CURSOR_COLUMN)
        path, table = self.db_path(context), asset_name(context)
        started = time.monotonic()
        conn, staged = files.begin(path, f"{path.name}:{table}")
        try:
            schema = metadata.get("dagster/column_schema")
            declared = {c.name: c.type for c in schema.columns} if schema else {}
            self._ensure_table(conn, table, obj, declared, keys, cursor)
            mark_before = self._watermark(conn, table, cursor)
            columns = list(obj.columns)
            if keys:
                stored = self._count_stored(conn, table, obj[keys])
                statement = (f"{insert_sql(table, columns)} "
                             f"{upsert_clause(table, columns, keys, cursor)}")
            else:
                conn.execute(f"DELETE FROM {quote(table)}")
                statement = insert_sql(table, columns)
            written = max(conn.executemany(statement, to_rows(obj)).rowcount, 0)
            inserted = len(obj) - stored if keys else written
            counts = {"rows_in": len(obj), "inserted": inserted, "updated": written - inserted,
                      "unchanged": len(obj) - written, "deleted": 0,
                      "watermark_before": mark_before,
                      "watermark_after": self._watermark(conn, table, cursor),
                      "seconds": round(time.monotonic() - started, 3)}
            keys_written = context.asset_partition_keys if context.has_asset_partitions else []
            self._log_sync(conn, context.run_id, table, keys_written, counts)
        except BaseException:
            staged.rollback()
            raise
        staged.metadata = {
            "sqlite_path": str(path),
            "sqlite_table": table,
            "sqlite_rows_inserted": counts["inserted"],
            "sqlite_rows_updated": counts["updated"],
            "sqlite_rows_unchanged": counts["unchanged"],
            "watermark_before": counts["watermark_before"] or "",
            "watermark_after": counts["watermark_after"] or "",
            "sync_seconds": counts["seconds"],
        }
        return staged

    @staticmethod
    def _count_stored(conn: sqlite3.Connection, table: str, keys: pd.DataFrame) -> int:
        """How many of the incoming keys the table already holds, by index lookups, so the
        cost follows the rows synced rather than the rows stored."""
        if not len(keys) or not has_rows(conn, table):
            return 0
        names = ", ".join(quote(c) for c in keys.columns)
        conn.execute(f"CREATE TEMP TABLE incoming_keys ({names})")
        try:
            conn.executemany(insert_sql("incoming_keys", list(keys.columns)), to_rows(keys))
            return conn.execute(f"SELECT count(*) FROM temp.incoming_keys JOIN main."
                                f"{quote(table)} USING ({names})").fetchone()[0]
        finally:
            conn.execute("DROP TABLE temp.incoming_keys")

    @staticmethod
    def _watermark(conn: sqlite3.Connection, table: str, cursor: str | None) -> str | None:
        """The newest cursor value stored (the cursor is indexed: this is one seek)."""
        if not cursor:
            return None
        return conn.execute(f"SELECT max({quote(cursor)}) FROM {quote(table)}").fetchone()[0]

    @staticmethod
    def _log_sync(conn: sqlite3.Connection, run_id: str, table: str, keys: list[str],
                  counts: dict) -> None:
        partitions = f"{keys[0]}...{keys[-1]}" if len(keys) > 1 else (keys[0] if keys else None)
        conn.execute(SYNC_LOG_SCHEMA)
        conn.execute(
            "INSERT INTO sync_log VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), :run_id, "
            ":asset, :partitions, :rows_in, :inserted, :updated, :unchanged, :deleted, "
            ":watermark_before, :watermark_after, :seconds)",
            {"rows_in": 0, "inserted": 0, "updated": 0, "unchanged": 0, "deleted": 0,
             "watermark_before": None, "watermark_after": None, **counts, "run_id": run_id,
             "asset": table, "partitions": partitions})

    def stage_delete(self, asset: str, metadata: dict, removals: pd.DataFrame, run_id: str,
                     files: OutputTransactions, tombstones: pd.DataFrame | None = None
                     ) -> StagedWrite:
        """Delete the ids from ``asset``'s table, unless the stored version is newer (the id
        came back), and keep any tombstones in this database's ``deleted_parcels`` table;
        one transaction. Logged in ``sync_log`` when it deletes or records something."""
        path = export_path(self.export_dir, metadata.get(SQLITE_DB) or f"{asset}.sqlite")
        if tombstones is None and not path.exists():
            return StagedWrite(f"{path.name}:{asset} deletes",
                               metadata={f"deleted_from_{asset}": 0})
        started = time.monotonic()
        conn, staged = files.begin(path, f"{path.name}:{asset} deletes")
        try:
            deleted = 0
            # an empty table (no rejects yet, say) is skipped: a first sync removes nothing
            if len(removals) and has_rows(conn, asset):
                deleted = max(conn.executemany(
                    f'DELETE FROM {quote(asset)} WHERE "id" = ? AND "updated_at" <= ?',
                    to_rows(removals[["id", "as_of"]])).rowcount, 0)
            if tombstones is not None:
                self._ensure_table(conn, "deleted_parcels", tombstones, {}, ["id"],
                                   "deleted_at")
                columns = list(tombstones.columns)
                conn.executemany(
                    f"{insert_sql('deleted_parcels', columns)} "
                    f"{upsert_clause('deleted_parcels', columns, ['id'], 'deleted_at')}",
                    to_rows(tombstones))
            if tombstones is not None or deleted:
                self._log_sync(conn, run_id, asset, [], {
                    "rows_in": len(removals), "deleted": deleted,
                    "seconds": round(time.monotonic() - started, 3)})
        except BaseException:
            staged.rollback()
            raise
        staged.metadata = {f"deleted_from_{asset}": deleted}
        return staged

    @staticmethod
    def _ensure_table(conn: sqlite3.Connection, table: str, frame: pd.DataFrame,
                      declared: dict[str, str], keys: list[str], cursor: str | None) -> None:
        """Create the table (key, cursor index) or add columns the asset gained since."""
        existing = {row[1] for row in conn.execute(f"PRAGMA table_info({quote(table)})")}
        if not existing:
            columns = [f"{quote(c)} {sqlite_type(frame[c], declared.get(c))}"
                       for c in frame.columns]
            if keys:
                columns.append(f"PRIMARY KEY ({', '.join(quote(k) for k in keys)})")
            conn.execute(f"CREATE TABLE {quote(table)} ({', '.join(columns)})")
            if cursor:
                conn.execute(f"CREATE INDEX {quote(f'ix_{table}_{cursor}')} "
                             f"ON {quote(table)} ({quote(cursor)})")
            return
        for column in frame.columns:
            if column not in existing:
                conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column)} "
                             f"{sqlite_type(frame[column], declared.get(column))}")

    def load_input(self, context: InputContext) -> pd.DataFrame:
        """The current rows of the requested partitions (all rows if unpartitioned).

        An input with ``metadata={"columns": [...]}`` reads only those columns, as in
        dagster-duckdb. One with ``metadata={"aggregate": ...}`` gets totals per group instead
        of rows (see ``running_totals``): over the whole table from the running totals, over
        a partition window by a GROUP BY of the window's rows.
        """
        path, table = self.db_path(context), asset_name(context)
        wanted = (context.definition_metadata or {}).get("columns")
        if (context.definition_metadata or {}).get("missing_ok") and not _has_table(path, table):
            return pd.DataFrame(columns=wanted or [])
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
