"""The appraisal tables in SQLite or PostgreSQL: staged with checkpoints, merged, rolled back.

An import of a tax year's release runs in two phases:

1. **Stage.** Each member file's parsed batches go into ``stage_<table>`` with their line
   numbers, in one transaction per batch together with the batch's rejects and the file's
   checkpoint (byte offset and last line committed). A killed import resumes from its last
   checkpoint: no duplicates, no gaps.
2. **Merge**, one transaction for every table of the release, so the tables never mix two
   releases: per key the LAST staged record wins (the others are counted as duplicates); rows
   that are new or whose values differ are upserted, each replaced row first copied to
   ``<table>_history``; in a full release, keys no longer listed are **marked** removed
   (``_removed_by`` = the import), not deleted, so a protest firm still sees last year's
   account. Unchanged rows are not written.

Every row carries ``_import_id``, the import that last wrote it. Rolling back the newest import
of a year deletes the rows it wrote and restores their history: the tables are as before it.
A release whose archives are byte-for-byte those of the newest loaded import is not imported
again: nothing is written.
"""

import json
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime

import adbc_driver_sqlite.dbapi as adbc_sqlite
import pyarrow as pa
import pyarrow.csv as pv
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.engine import Connection

from countysync_assets.appraisal.records import LINE, Batch
from countysync_assets.resources.district_config import District, Layout

SQL_TYPES = {"text": Text, "integer": BigInteger, "decimal": Double, "date": Date}
YEAR, IMPORT, REMOVED, REPLACED = "tax_year", "_import_id", "_removed_by", "_replaced_by"
BUSY_MS = 30_000  # a reader (QGIS, a notebook) holding the SQLite file: wait, do not fail


class AppraisalImportError(RuntimeError):
    """An import cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class ImportState:
    """The import under way: a new one, or one resumed after it was stopped."""

    import_id: int
    resumed: bool


def _layout_columns(layout: Layout) -> list[Column]:
    return [Column(c.name, SQL_TYPES[c.type]()) for c in layout.columns]


def define_tables(district: District, schema: str | None) -> MetaData:
    """The district's tables: targets, their history and staging, and the import bookkeeping."""
    meta = MetaData(schema=schema)
    Table("import_runs", meta,
          Column("import_id", Integer, primary_key=True, autoincrement=True),
          Column("district", String(64), nullable=False),
          Column(YEAR, Integer, nullable=False),
          Column("release_digest", String(64), nullable=False),
          Column("status", String(16), nullable=False),
          Column("started_at", String(32), nullable=False),
          Column("finished_at", String(32)),
          Column("counts", Text))
    Table("import_checkpoints", meta,
          Column("import_id", Integer, primary_key=True),
          Column("file", String(255), primary_key=True),
          Column("end_offset", BigInteger, nullable=False),
          Column("last_line", BigInteger, nullable=False),
          Column("lines", BigInteger, nullable=False),
          Column("rows", BigInteger, nullable=False),
          Column("rejects", BigInteger, nullable=False),
          Column("done", Boolean, nullable=False))
    Table("rejects", meta,
          Column("import_id", Integer, nullable=False, index=True),
          Column(YEAR, Integer, nullable=False),
          Column("file", String(255), nullable=False),
          Column("line", BigInteger, nullable=False),
          Column("field", Text),
          Column("raw_value", Text),
          Column("reason", Text, nullable=False))
    for _, member, layout in district.members():
        key = set(layout.key)
        Table(member.table, meta,
              Column(YEAR, Integer, primary_key=True),
              *[Column(c.name, SQL_TYPES[c.type](), primary_key=c.name in key)
                for c in layout.columns],
              Column(IMPORT, Integer, nullable=False, index=True),
              Column(REMOVED, Integer))
        Table(f"{member.table}_history", meta,
              Column(YEAR, Integer), *_layout_columns(layout),
              Column(IMPORT, Integer), Column(REMOVED, Integer),
              Column(REPLACED, Integer, nullable=False, index=True))
        # the index serves the merge: duplicates found in key order, keys looked up
        Table(f"stage_{member.table}", meta,
              Column(IMPORT, Integer, nullable=False),
              Column(LINE, BigInteger, nullable=False), *_layout_columns(layout),
              Index(f"stage_{member.table}_keys", IMPORT, *layout.key, LINE))
    return meta


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class AppraisalTables:
    """One district's tables in one database (a SQLite file, or a PostgreSQL schema)."""

    def __init__(self, engine: Engine, district: District):
        self.engine, self.district = engine, district
        self.postgres = engine.dialect.name == "postgresql"
        self.schema = district.district if self.postgres else None
        self.meta = define_tables(district, self.schema)
        if engine.dialect.name == "sqlite" and not event.contains(engine, "connect",
                                                                  _sqlite_pragmas):
            event.listen(engine, "connect", _sqlite_pragmas)

    def create(self) -> None:
        """Create the schema and tables that do not exist yet."""
        with self.engine.begin() as conn:
            if self.postgres:
                conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {self._q(self.schema)}"))
            self.meta.create_all(conn)

    def _q(self, name: str) -> str:
        return self.engine.dialect.identifier_preparer.quote(name)

    def _t(self, name: str) -> str:
        """A table's name, schema-qualified and quoted."""
        return f"{self._q(self.schema)}.{self._q(name)}" if self.schema else self._q(name)

    # --- imports -------------------------------------------------------------------------

    def begin_import(self, year: int, digest: str) -> ImportState | None:
        """The import to run for this release, or None if the newest loaded one is the same.

        A stopped import of the same release is resumed; one of another release is abandoned
        (its staged rows removed) and a new import begins.
        """
        runs = self._t("import_runs")
        with self.engine.begin() as conn:
            rows = conn.execute(text(
                f"SELECT import_id, release_digest, status FROM {runs} WHERE {YEAR} = :y "
                "AND status IN ('staging', 'loaded') ORDER BY import_id DESC"), {"y": year}).all()
            for import_id, release, status in rows:
                if status == "staging" and release == digest:
                    return ImportState(import_id, resumed=True)
                if status == "staging":
                    self._clear_stage(conn, import_id)
                    conn.execute(text(f"UPDATE {runs} SET status = 'abandoned', finished_at = :t "
                                      "WHERE import_id = :i"), {"t": _now(), "i": import_id})
            loaded = next((r for r in rows if r[2] == "loaded"), None)
            if loaded is not None and loaded[1] == digest:
                return None
            import_id = conn.execute(self.meta.tables[self._key("import_runs")].insert().values(
                district=self.district.district, tax_year=year, release_digest=digest,
                status="staging", started_at=_now())).inserted_primary_key[0]
        return ImportState(import_id, resumed=False)

    def newest(self, year: int, status: str) -> int | None:
        """The newest import of a year with this status ('staging', 'loaded'), or None."""
        with self.engine.connect() as conn:
            return conn.execute(text(
                f"SELECT max(import_id) FROM {self._t('import_runs')} WHERE {YEAR} = :y "
                "AND status = :s"), {"y": year, "s": status}).scalar()

    def figures(self, import_id: int, year: int) -> dict[str, dict]:
        """Per table, what its checks look at: the import's counts and the table as it is."""
        q = self._q
        with self.engine.connect() as conn:
            counts = json.loads(conn.execute(text(
                f"SELECT counts FROM {self._t('import_runs')} WHERE import_id = :i"),
                {"i": import_id}).scalar() or "{}")
            result = {}
            for _, member, layout in self.district.members():
                target = self._t(member.table)
                keys = ", ".join(q(k) for k in layout.key)
                required = [c.name for c in layout.columns if c.required]
                lines, rows = conn.execute(text(
                    f"SELECT coalesce(sum(lines), 0), coalesce(sum(rows), 0) FROM "
                    f"{self._t('import_checkpoints')} WHERE import_id = :i AND file = :f"),
                    {"i": import_id, "f": member.path}).one()
                result[member.table] = {  # int(): PostgreSQL's sum of a BIGINT is NUMERIC
                    "lines": int(lines), "staged": int(rows), **counts.get(member.table, {}),
                    "reject_lines": conn.execute(text(
                        f"SELECT count(DISTINCT line) FROM {self._t('rejects')} "
                        "WHERE import_id = :i AND file = :f"),
                        {"i": import_id, "f": member.path}).scalar_one(),
                    "current_rows": conn.execute(text(
                        f"SELECT count(*) FROM {target} WHERE {YEAR} = :y AND {REMOVED} IS NULL"),
                        {"y": year}).scalar_one(),
                    "duplicate_keys": conn.execute(text(
                        f"SELECT count(*) FROM (SELECT 1 FROM {target} WHERE {YEAR} = :y "
                        f"GROUP BY {keys} HAVING count(*) > 1) d"), {"y": year}).scalar_one(),
                    "required_missing": conn.execute(text(
                        f"SELECT count(*) FROM {target} WHERE {YEAR} = :y AND ("
                        + (" OR ".join(f"{q(c)} IS NULL" for c in required) or "false") + ")"),
                        {"y": year}).scalar_one(),
                    "full_release": layout.full_release}
        return result

    def _key(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name

    def checkpoint(self, import_id: int, file: str) -> tuple[int, int, bool]:
        """(byte offset, last line, done) committed for a file of an import; (0, 0, False)."""
        with self.engine.connect() as conn:
            row = conn.execute(text(
                f"SELECT end_offset, last_line, done FROM {self._t('import_checkpoints')} "
                "WHERE import_id = :i AND file = :f"), {"i": import_id, "f": file}).first()
        return (row[0], row[1], bool(row[2])) if row else (0, 0, False)

    def stage(self, import_id: int, year: int, table: str, file: str, batch: Batch) -> None:
        """Stage a batch, its rejects and the file's checkpoint, in one transaction (the file
        is marked done by ``finish_file``). On SQLite this writes through ADBC's own SQLite
        library: call it only in the staging process (``staging.stage_files``), never in a
        process that also opens the file with Python's sqlite3."""
        rows = batch.rows.append_column(IMPORT, pa.array([import_id] * len(batch.rows),
                                                         pa.int32()))
        rejects = batch.rejects
        n = len(rejects)
        if n:
            rejects = rejects.add_column(0, "import_id", pa.array([import_id] * n, pa.int32()))
            rejects = rejects.add_column(1, YEAR, pa.array([year] * n, pa.int32()))
        point = (import_id, file, batch.end_offset, batch.last_line, batch.lines,
                 len(batch.rows), n, False)
        if self.postgres:
            with self.engine.begin() as conn:
                self._copy(conn, f"stage_{table}", rows)
                self._copy(conn, "rejects", rejects)
                conn.exec_driver_sql(self._checkpoint_sql("%s"), point)
            return
        with closing(adbc_sqlite.connect(self.engine.url.database)) as conn, \
                closing(conn.cursor()) as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            for name, data in ((f"stage_{table}", rows), ("rejects", rejects)):
                if len(data):  # SQLite has no date type: dates are stored as ISO text
                    cursor.adbc_ingest(name, data.cast(_sqlite_schema(data.schema)),
                                       mode="append")
            cursor.execute(self._checkpoint_sql("?"), point)
            conn.commit()

    def _checkpoint_sql(self, mark: str) -> str:
        """Record a batch's checkpoint: the file's offset and line, its counts added up."""
        points = self._t("import_checkpoints")
        return (f"INSERT INTO {points} (import_id, file, end_offset, last_line, lines, rows, "
                f"rejects, done) VALUES ({', '.join([mark] * 8)}) "
                "ON CONFLICT (import_id, file) DO UPDATE SET end_offset = excluded.end_offset, "
                "last_line = excluded.last_line, done = excluded.done, "
                f"lines = {points}.lines + excluded.lines, rows = {points}.rows + excluded.rows, "
                f"rejects = {points}.rejects + excluded.rejects")

    def finish_file(self, import_id: int, file: str) -> None:
        """Mark a file staged to its end (a file with no records gets its checkpoint here)."""
        with self.engine.begin() as conn:
            conn.execute(text(
                f"INSERT INTO {self._t('import_checkpoints')} (import_id, file, end_offset, "
                "last_line, lines, rows, rejects, done) VALUES (:i, :f, 0, 0, 0, 0, 0, :d) "
                "ON CONFLICT (import_id, file) DO UPDATE SET done = excluded.done"),
                {"i": import_id, "f": file, "d": True})

    def _copy(self, conn: Connection, name: str, rows: pa.Table) -> None:
        """PostgreSQL's bulk path: the rows as CSV through COPY."""
        if not len(rows):
            return
        columns = ", ".join(self._q(c) for c in rows.column_names)
        buffer = pa.BufferOutputStream()
        pv.write_csv(rows, buffer, pv.WriteOptions(include_header=False))
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(
                f"COPY {self._t(name)} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(buffer.getvalue().to_pybytes())

    def _clear_stage(self, conn: Connection, import_id: int) -> None:
        """Remove an import's staged rows. When they are all the table holds (one import at a
        time, the usual case) the table is emptied whole: TRUNCATE on PostgreSQL, an
        unqualified DELETE on SQLite (which drops the pages instead of deleting row by row)."""
        for table in {m.table for _, m, _ in self.district.members()}:
            stage = self._t("stage_" + table)
            others = conn.execute(text(f"SELECT 1 FROM {stage} WHERE {IMPORT} <> :i LIMIT 1"),
                                  {"i": import_id}).first()
            if others is not None:
                conn.execute(text(f"DELETE FROM {stage} WHERE {IMPORT} = :i"), {"i": import_id})
            else:
                conn.execute(text(f"TRUNCATE {stage}" if self.postgres else f"DELETE FROM {stage}"))

    # --- merge and rollback --------------------------------------------------------------

    def merge(self, import_id: int, year: int) -> dict[str, dict[str, int]]:
        """Merge every staged table of an import in one transaction; the counts per table."""
        counts = {}
        with self.engine.begin() as conn:
            for _, member, layout in self.district.members():
                counts[member.table] = self._merge_table(conn, member.table, layout, import_id,
                                                         year)
            self._clear_stage(conn, import_id)
            conn.execute(text(f"UPDATE {self._t('import_runs')} SET status = 'loaded', "
                              "finished_at = :t, counts = :c WHERE import_id = :i"),
                         {"t": _now(), "c": json.dumps(counts), "i": import_id})
        return counts

    def _merge_table(self, conn: Connection, table: str, layout: Layout, import_id: int,
                     year: int) -> dict[str, int]:
        q = self._q
        cols = [c.name for c in layout.columns]
        names, keys = ", ".join(q(c) for c in cols), ", ".join(q(k) for k in layout.key)
        target, history, stage = self._t(table), self._t(f"{table}_history"), \
            self._t(f"stage_{table}")
        dups, changed = q(f"duplicates_{table}"), q(f"changed_{table}")
        on = " AND ".join(f"t.{q(k)} = l.{q(k)}" for k in layout.key)
        params = {"i": import_id, "y": year}
        every = self._stored(layout)
        staged = conn.execute(text(f"SELECT count(*) FROM {stage} WHERE {IMPORT} = :i"),
                              params).scalar_one()

        # per key the last staged record wins: the earlier ones leave the stage as duplicates
        for temp in (dups, changed):
            conn.execute(text(f"DROP TABLE IF EXISTS {temp}"))
        conn.execute(text(
            f"CREATE TEMPORARY TABLE {dups} AS SELECT {keys}, max({LINE}) AS last FROM {stage} "
            f"WHERE {IMPORT} = :i GROUP BY {keys} HAVING count(*) > 1"), params)
        same_key = " AND ".join(f"d.{q(k)} = {stage}.{q(k)}" for k in layout.key)
        duplicates = conn.execute(text(
            f"DELETE FROM {stage} WHERE {IMPORT} = :i AND EXISTS (SELECT 1 FROM {dups} d "
            f"WHERE {same_key} AND {stage}.{LINE} < d.last)"), params).rowcount
        conn.execute(text(f"DROP TABLE {dups}"))
        kept = staged - duplicates

        if conn.execute(text(f"SELECT 1 FROM {target} WHERE {YEAR} = :y LIMIT 1"),
                        params).first() is None:  # the year's first import: all of it is new
            conn.execute(text(f"INSERT INTO {target} ({every}) SELECT :y, {names}, :i, NULL "
                              f"FROM {stage} WHERE {IMPORT} = :i"), params)
            return {"staged": staged, "duplicates": duplicates, "inserted": kept, "updated": 0,
                    "unchanged": 0, "removed": 0}

        differs = " OR ".join(f"t.{q(c)} IS DISTINCT FROM l.{q(c)}" for c in cols
                              if c not in layout.key)
        conn.execute(text(
            f"CREATE TEMPORARY TABLE {changed} AS SELECT {', '.join(f'l.{q(c)}' for c in cols)}, "
            f"t.{q(IMPORT)} IS NOT NULL AS known FROM {stage} l LEFT JOIN {target} t "
            f"ON t.{YEAR} = :y AND {on} WHERE l.{IMPORT} = :i AND (t.{q(IMPORT)} IS NULL "
            f"OR t.{REMOVED} IS NOT NULL" + (f" OR {differs}" if differs else "") + ")"), params)
        new, updated = conn.execute(text(
            f"SELECT count(*) - count(CASE WHEN known THEN 1 END), "
            f"count(CASE WHEN known THEN 1 END) FROM {changed}")).one()
        t_every = self._stored(layout, alias="t.")
        conn.execute(text(
            f"INSERT INTO {history} ({every}, {REPLACED}) SELECT {t_every}, :i "
            f"FROM {target} t JOIN {changed} l ON {on} WHERE t.{YEAR} = :y"), params)
        updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in [*cols, IMPORT, REMOVED]
                            if c not in layout.key)
        conn.execute(text(
            f"INSERT INTO {target} ({every}) SELECT :y, {names}, :i, NULL FROM {changed} "
            f"WHERE true ON CONFLICT ({YEAR}, {keys}) DO UPDATE SET {updates}"), params)
        conn.execute(text(f"DROP TABLE {changed}"))
        removed = 0
        if layout.full_release:
            listed = " AND ".join(f"l.{q(k)} = {target}.{q(k)}" for k in layout.key)
            gone = (f"{YEAR} = :y AND {REMOVED} IS NULL AND {IMPORT} <> :i AND NOT EXISTS "
                    f"(SELECT 1 FROM {stage} l WHERE l.{IMPORT} = :i AND {listed})")
            conn.execute(text(f"INSERT INTO {history} ({every}, {REPLACED}) SELECT {every}, :i "
                              f"FROM {target} WHERE {gone}"), params)
            removed = conn.execute(text(f"UPDATE {target} SET {REMOVED} = :i, {IMPORT} = :i "
                                        f"WHERE {gone}"), params).rowcount
        return {"staged": staged, "duplicates": duplicates, "inserted": new,
                "updated": updated, "unchanged": kept - new - updated, "removed": removed}

    def _stored(self, layout: Layout, alias: str = "") -> str:
        """The columns a target row and its history share, quoted, in order."""
        names = [YEAR, *(self._q(c.name) for c in layout.columns), IMPORT, REMOVED]
        return ", ".join(alias + n for n in names)

    def rollback(self, import_id: int) -> None:
        """Undo a loaded import: its rows out, the rows it replaced back. Newest import only."""
        runs = self._t("import_runs")
        with self.engine.begin() as conn:
            row = conn.execute(text(f"SELECT {YEAR}, status FROM {runs} WHERE import_id = :i"),
                               {"i": import_id}).first()
            if row is None or row[1] != "loaded":
                raise AppraisalImportError(f"import {import_id} is not a loaded import of "
                                   f"{self.district.district}; nothing to roll back.")
            newer = conn.execute(text(
                f"SELECT min(import_id) FROM {runs} WHERE {YEAR} = :y AND import_id > :i "
                "AND status = 'loaded'"), {"y": row[0], "i": import_id}).scalar()
            if newer is not None:
                raise AppraisalImportError(f"import {newer} of {row[0]} came after import "
                                           f"{import_id}: roll back import {newer} first.")
            for _, member, layout in self.district.members():
                every = self._stored(layout)
                target, history = self._t(member.table), self._t(f"{member.table}_history")
                conn.execute(text(f"DELETE FROM {target} WHERE {IMPORT} = :i"), {"i": import_id})
                conn.execute(text(f"INSERT INTO {target} ({every}) SELECT {every} FROM {history} "
                                  f"WHERE {REPLACED} = :i"), {"i": import_id})
                conn.execute(text(f"DELETE FROM {history} WHERE {REPLACED} = :i"),
                             {"i": import_id})
            conn.execute(text(f"UPDATE {runs} SET status = 'rolled_back', finished_at = :t "
                              "WHERE import_id = :i"), {"t": _now(), "i": import_id})


def _sqlite_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a batch is stored in on SQLite: dates as ISO text."""
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_date(f.type) else f
                      for f in schema])


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL: readers (QGIS, a notebook) never block a load, and a killed load leaves no damage."""
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")
