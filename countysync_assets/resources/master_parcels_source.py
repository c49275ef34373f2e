"""The master parcel database: SQL Server in production, any SQLAlchemy URL otherwise.

Everything the pipeline reads from the county's master system goes through
``MasterParcelsSource``. It builds the engine (``mssql+pyodbc`` from parts, or a URL, or the
embedded demo SQLite file), checks configured table and column names against the reflected
table before any query, and streams the rows changed in a time window in keyset-paginated
batches. Values are always bound parameters; the password is never shown.
"""

import re
from collections.abc import Collection, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import sqlalchemy as sa
from dagster import ConfigurableResource, Failure
from pydantic import Field, PrivateAttr
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

DEFAULT_DEMO_PATH = "data/demo_source.sqlite"
SRID_COLUMN = "geometry_srid"
# Why a row's cursor value could not be read as a time (None where it could): the row checks
# turn it into a reject reason.
CURSOR_PROBLEM = "cursor_problem"
# On SQL Server, each page also reads its rows' cursor as text (see ``_cursor_text``): the
# next page starts after the last row's exact value.
PAGE_CURSOR = "page_cursor"
# The earliest cursor value taken as a real edit time: older values (0001-01-01, an epoch 0
# default) are placeholders, like NULL, and cannot be placed in a sync window.
EARLIEST_CURSOR = datetime(1970, 1, 1, tzinfo=UTC)
_OFFSET = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$")


class SourceError(Failure):
    """The source cannot be read as configured. The message says what to check."""


def plain(value: object) -> object:
    """A numpy scalar as the Python value a driver binds (sqlite3 binds numpy as BLOB)."""
    return value.item() if isinstance(value, np.generic) else value


def _rows_frame(rows: Sequence, columns: list[str]) -> pd.DataFrame:
    """The driver's own rows as a frame: sqlite3's and psycopg's tuples, or pyodbc's ``Row``
    objects (SQL Server), which pandas' constructor takes for single values (one column of
    rows); ``from_records`` reads both, as fast as the constructor reads tuples."""
    return pd.DataFrame.from_records(rows, columns=columns)


def _census_batch(rows: Sequence) -> pd.DataFrame:
    """Census rows (key, flag) as columns: whole-number keys, the usual, through one numpy
    array (half the time of a frame built from tuples: 0.15 s a million); any other key (a
    text key, or a fractional one a bad row holds) as the driver returned it."""
    pairs = np.array(rows)
    if pairs.dtype.kind != "i":
        return _rows_frame(rows, ["id", "inside"])
    return pd.DataFrame({"id": pairs[:, 0], "inside": pairs[:, 1]})


def _count_where(table: sa.Table, *where: sa.ColumnElement) -> sa.ScalarSelect:
    """``SELECT count(*)`` of ``table``'s rows that match ``where``, as a scalar subquery."""
    return sa.select(sa.func.count()).select_from(table).where(*where).scalar_subquery()


def _converts_values(result: sa.CursorResult, query: sa.Select, dialect: sa.Dialect) -> bool:
    """Whether SQLAlchemy changes any value of ``query``'s columns as it reads them: a type
    with a result processor for this dialect and the type the driver describes (SQLite's
    dates, a Numeric read as float)."""
    return any(column.type.dialect_impl(dialect).result_processor(dialect, described[1])
               is not None for column, described in
               zip(query.selected_columns, result.cursor.description, strict=True))


@contextmanager
def _driver_errors(dialect: sa.Dialect) -> Iterator[None]:
    """Errors of the driver's own cursor (rows read without SQLAlchemy's row objects) raised
    as SQLAlchemy raises them, so ``_reading`` explains them alike."""
    try:
        yield
    except dialect.loaded_dbapi.Error as err:
        raise sa.exc.DBAPIError.instance(None, None, err, dialect.loaded_dbapi.Error) from err


def short(value: object, limit: int = 60) -> str:
    """A value as a reject reason quotes it: repr, cut to ``limit`` characters."""
    text = repr(plain(value))
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def _text_or_bytes(raw: bytes) -> str | bytes:
    """SQLite text as str, or as bytes where it is not valid UTF-8 (a reject, not an error
    for the whole fetch)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _sqlite_text_as_is(dbapi_connection, _record) -> None:
    """Every SQLite connection's default: text that is not UTF-8 comes back as bytes (a
    page read switches to sqlite3's own, faster decoding while it runs: ``_page``)."""
    dbapi_connection.text_factory = _text_or_bytes


_CREDENTIALS = re.compile(r"(://[^:/@\s]*:)[^\s]*@")


class STAsBinary(FunctionElement):
    """SQL Server ``geometry.STAsBinary()``: a method call, which ``func`` cannot express."""

    type = sa.LargeBinary()
    inherit_cache = True


class STSrid(FunctionElement):
    """SQL Server ``geometry.STSrid``: the SRID stored inside each geometry value."""

    type = sa.Integer()
    inherit_cache = True


@compiles(STAsBinary, "mssql")
def _compile_st_as_binary(element: STAsBinary, compiler, **kw) -> str:
    return f"{compiler.process(element.clauses, **kw)}.STAsBinary()"


@compiles(STSrid, "mssql")
def _compile_st_srid(element: STSrid, compiler, **kw) -> str:
    return f"{compiler.process(element.clauses, **kw)}.STSrid"


class MasterParcelsSource(ConfigurableResource):
    """Read access to the county's ``MasterParcels`` table.

    Configure either ``url`` (any SQLAlchemy URL: ``mssql+pyodbc://``, ``postgresql+psycopg://``,
    ``sqlite:///``) or the SQL Server parts (``host``, ``database``, ...). With neither, the
    embedded demo SQLite source at ``demo_path`` is read; it must exist (``countysync
    demo-source``): the resource never generates data.
    """

    url: str | None = Field(default=None, description="SQLAlchemy URL of the source database.")
    host: str | None = Field(default=None, description="SQL Server host name.")
    port: int = Field(default=1433, description="SQL Server TCP port.")
    database: str | None = Field(default=None, description="SQL Server database name.")
    user: str | None = Field(default=None, description="SQL Server login.")
    password: str | None = Field(default=None, description="SQL Server password (use EnvVar).")
    odbc_driver: str = Field(
        default="ODBC Driver 18 for SQL Server",
        description="ODBC driver name as unixODBC knows it (or 'FreeTDS').",
    )
    encrypt: bool = Field(default=True, description="Encrypt the SQL Server connection.")
    trust_server_certificate: bool = Field(
        default=False, description="Accept a self-signed SQL Server certificate."
    )
    demo_path: str = Field(default=DEFAULT_DEMO_PATH, description="Embedded demo SQLite source.")
    table: str = Field(default="MasterParcels", description="Source table name.")
    db_schema: str | None = Field(default=None, description="Schema of the table (e.g. dbo).")
    key_column: str = Field(default="id", description="Unique key of a parcel row.")
    cursor_column: str = Field(default="updated_at", description="Last-modified timestamp.")
    geometry_column: str = Field(default="geometry", description="Parcel geometry column.")
    srid: int | None = Field(
        default=None,
        description="EPSG code of the geometry. Default: SQL Server's STSrid, or the "
        "source's geometry_columns table.",
    )
    source_timezone: str = Field(
        default="UTC", description="Time zone of cursor timestamps stored without one."
    )
    # 25,000: a big run's two processes stay under 1 GB together (50,000: ~1.1 GB at 1M
    # parcels, ~7% faster); README "Performance"
    batch_size: int = Field(default=25_000, gt=0, description="Rows per keyset page.")

    _engine: Engine | None = PrivateAttr(default=None)
    _table: sa.Table | None = PrivateAttr(default=None)

    # ----- connection -------------------------------------------------------------------------

    def sqlalchemy_url(self) -> URL:
        """The URL the engine connects with (contains the password: never log it)."""
        if self.url:
            return self._parse_url()
        if self.host:
            if not self.database:
                raise SourceError(
                    f"SQL Server host {self.host!r} is set but no database: set "
                    "COUNTYSYNC_SOURCE_DATABASE."
                )
            return URL.create(
                "mssql+pyodbc",
                username=self.user,
                password=self.password,
                host=self.host,
                port=self.port,
                database=self.database,
                query={
                    "driver": self.odbc_driver,
                    "Encrypt": "yes" if self.encrypt else "no",
                    "TrustServerCertificate": "yes" if self.trust_server_certificate else "no",
                },
            )
        path = Path(self.demo_path)
        if not path.is_file():
            raise SourceError(
                f"No source is configured and the demo source {path} does not exist. Create it "
                "with `countysync demo-source`, or set COUNTYSYNC_SOURCE_URL / "
                "COUNTYSYNC_SOURCE_HOST to read the master database."
            )
        return URL.create("sqlite", database=str(path))

    def _parse_url(self) -> URL:
        """``url``, with ``password`` (COUNTYSYNC_SOURCE_PASSWORD) put in if given. A password
        typed into the URL with '@', '/', '?' or '#' un-encoded would be read as part of the
        host or path, and echoed in errors: refused without showing any of it."""
        authority = self.url.partition("://")[2]
        if authority.count("@") > 1 or (
                "@" in authority and any(c in authority.rpartition("@")[0] for c in "/?#")):
            raise SourceError(
                "COUNTYSYNC_SOURCE_URL: the password contains characters that must be "
                "percent-encoded in a URL (@ as %40, : as %3A, / as %2F, % as %25, # as %23), "
                "or leave it out of the URL and set COUNTYSYNC_SOURCE_PASSWORD.")
        try:
            url = sa.make_url(self.url)
        except (sa.exc.ArgumentError, ValueError):
            raise SourceError(
                "COUNTYSYNC_SOURCE_URL is not a database URL: write it like "
                "postgresql+psycopg://user@host:5432/database (the password percent-encoded, "
                "or in COUNTYSYNC_SOURCE_PASSWORD).") from None
        if self.password:
            url = url.set(password=self.password)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
                and not Path(url.database).is_file():
            raise SourceError(
                f"The SQLite source {url.database} does not exist. Check the path in "
                "COUNTYSYNC_SOURCE_URL (sqlite:///relative/path or sqlite:////absolute/path).")
        return url

    def display_url(self) -> str:
        """The source URL with the password masked, safe for logs and metadata."""
        return self.sqlalchemy_url().render_as_string(hide_password=True)

    def redact(self, text: str) -> str:
        """``text`` with the password (as typed or percent-encoded) and any URL credentials
        masked: driver messages may quote the connection string."""
        secrets = {self.password}
        with suppress(SourceError):
            secrets.add(self.sqlalchemy_url().password)
        for secret in filter(None, secrets):
            for form in {str(secret), quote(str(secret), safe="")}:
                text = text.replace(form, "***")
        return _CREDENTIALS.sub(r"\1***@", text)

    @property
    def dialect_name(self) -> str:
        return self.sqlalchemy_url().get_backend_name()

    def get_engine(self) -> Engine:
        """One engine per resource instance; ``fast_executemany`` on SQL Server. SQLite text
        that is not valid UTF-8 comes back as bytes (a reject), not as an error for the
        whole batch."""
        if self._engine is None:
            url = self.sqlalchemy_url()
            options: dict = {"pool_pre_ping": True}
            if url.get_backend_name() == "mssql":
                options["fast_executemany"] = True
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                # a source is read, never written: read-only, so no mistake can change it
                url = url.set(database=f"file:{Path(url.database).resolve()}",
                              query={**url.query, "mode": "ro", "uri": "true"})
            self._engine = sa.create_engine(url, **options)
            if url.get_backend_name() == "sqlite":
                event.listen(self._engine, "connect", _sqlite_text_as_is)
        return self._engine

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Database errors as one clear line: the server cannot be reached, or it refused or
        could not return what was asked (a data or permission problem, not an outage)."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as err:
            raise self._unreachable(err) from None
        except sa.exc.DBAPIError as err:
            raise SourceError(
                f"The master parcel database ({self.display_url()}) could not return the rows "
                f"asked for: {self._first_line(err)}. Check the table's permissions and "
                "values (a value the driver cannot read, such as PostgreSQL's 'infinity', "
                "must be fixed in the master table). No output was changed.") from None

    def _first_line(self, err: Exception) -> str:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        return self.redact(reason[0] if reason else type(err).__name__)

    def _unreachable(self, err: Exception) -> SourceError:
        url = self.sqlalchemy_url()
        where = f"host {url.host or 'local file'}, database {url.database}"
        return SourceError(
            f"Cannot read the master parcel database ({where}; {self.display_url()}): "
            f"{self._first_line(err)}. Check that the server is running and reachable from "
            "this machine (host, port, firewall, VPN), that the database name and credentials "
            "are right, and for SQL Server that the ODBC driver is installed. No output was "
            "changed."
        )

    def table_ref(self) -> sa.Table:
        """The reflected source table, checked against the configured column names."""
        if self._table is not None:
            return self._table
        with self._reading(), self.get_engine().connect() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table(self.table, schema=self.db_schema):
                tables = inspector.get_table_names(schema=self.db_schema)
                raise SourceError(
                    f"Table {self.table!r} was not found in the source "
                    f"({self.display_url()}). Tables there: {', '.join(tables) or 'none'}. "
                    "Set COUNTYSYNC_SOURCE_TABLE to the master parcel table."
                )
            table = sa.Table(self.table, sa.MetaData(), schema=self.db_schema,
                             autoload_with=conn)
        present = list(table.columns.keys())
        for setting, column in (
            ("COUNTYSYNC_SOURCE_KEY_COLUMN", self.key_column),
            ("COUNTYSYNC_SOURCE_CURSOR_COLUMN", self.cursor_column),
            ("COUNTYSYNC_SOURCE_GEOMETRY_COLUMN", self.geometry_column),
        ):
            if column not in table.columns:
                raise SourceError(
                    f"Column {column!r} is not in table {self.table!r}; its columns are: "
                    f"{', '.join(present)}. Set {setting} to the right column."
                )
        self._table = table
        return table

    # ----- queries ----------------------------------------------------------------------------

    def _selected_columns(self, table: sa.Table, wanted: Collection[str] | None = None,
                          outlines: bool = True) -> list[sa.ColumnElement]:
        """The key and cursor, the geometry if ``outlines``, and the ``wanted`` columns the
        table has (None: every column): a master table's other columns (legal descriptions,
        deed references) are never read, nor the outlines when no output holds them. The
        cursor as stored (see ``_cursor_raw``); on SQL Server the geometry as WKB plus its
        SRID."""
        always = {self.key_column, self.cursor_column}
        columns: list[sa.ColumnElement] = []
        for column in table.columns:
            if not (outlines if column.name == self.geometry_column else
                    wanted is None or column.name in always or column.name in wanted):
                continue
            if column.name == self.geometry_column and self.dialect_name == "mssql":
                columns.append(STAsBinary(column).label(column.name))
                columns.append(STSrid(column).label(SRID_COLUMN))
            elif column.name == self.cursor_column:
                columns.append(self._cursor_raw(table).label(column.name))
            else:
                columns.append(column)
        return columns

    def _cursor_raw(self, table: sa.Table) -> sa.ColumnElement:
        """The cursor as the driver returns it. SQLite stores a DATETIME as text (or whatever
        was put there: an epoch number, a text with an offset), which SQLAlchemy's own parser
        would fail the whole batch on; it is read as stored and checked row by row."""
        cursor = table.c[self.cursor_column]
        return sa.type_coerce(cursor, sa.String) if self.dialect_name == "sqlite" else cursor

    def _cursor_is_naive(self, table: sa.Table) -> bool:
        column_type = table.c[self.cursor_column].type
        return not getattr(column_type, "timezone", False)

    def _to_source_time(self, table: sa.Table, moment: datetime) -> datetime:
        """A UTC bound as the cursor column stores it (naive columns are in source_timezone)."""
        if self._cursor_is_naive(table):
            return moment.astimezone(self._zone()).replace(tzinfo=None)
        return moment

    def _zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.source_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SourceError(
                f"COUNTYSYNC_SOURCE_TIMEZONE={self.source_timezone!r} is not a time zone name; "
                "use an IANA name such as UTC or America/Los_Angeles."
            ) from None

    def changed_rows_query(self, start: datetime, end: datetime,
                           after: tuple[object, object] | None = None,
                           columns: Collection[str] | None = None,
                           outlines: bool = True) -> sa.Select:
        """One keyset page of rows with start <= cursor < end, after (cursor, key) ``after``
        (the last row of the previous page: as the driver returned it, on SQL Server its
        ``page_cursor`` text); ``columns`` and ``outlines`` as in ``_selected_columns``.

        Keyset pagination on (cursor, key) keeps every page an index seek, where OFFSET/FETCH
        would re-scan all the skipped rows. A later page's one lower bound on the cursor is
        the last row's: given ``start`` as well, SQLite seeks to ``start`` and steps over every
        row already read (a full sync of 1,000,000 rows spent 2.6 s there, growing with the
        square of the table). On SQL Server the bound is the last row's cursor read as text:
        pyodbc cuts datetime2's 100 ns ticks to microseconds, and a bound cut below the last
        row would read it again, and read forever a page's worth of rows sharing one time (a
        mass update stamps every row it touches with the same time). Rows without a key cannot
        be paged past or merged: key reconciliation lists them (``iter_unplaced``).
        """
        table = self.table_ref()
        cursor, key = table.c[self.cursor_column], table.c[self.key_column]
        selected = self._selected_columns(table, columns, outlines)
        if self.dialect_name == "mssql":
            selected.append(self._cursor_text(table).label(PAGE_CURSOR))
        query = sa.select(*selected) \
            .where(key.is_not(None)).order_by(cursor, key).limit(self.batch_size)
        if after is None:
            return self._between(query, table, start, end)
        last_cursor, last_key = after
        if self.dialect_name == "sqlite":  # compare as stored: text with text
            last_cursor = sa.literal(last_cursor, sa.String)
        elif self.dialect_name == "mssql":  # the exact value, as the column stores it
            last_cursor = sa.cast(sa.literal(last_cursor, sa.String), cursor.type)
        # cursor >= last (itself >= start) and, at the same cursor, a greater key
        return self._between(query, table, None, end).where(
            cursor >= last_cursor, sa.or_(cursor > last_cursor, key > last_key))

    def iter_changed_batches(self, start: datetime, end: datetime,
                             columns: Collection[str] | None = None, outlines: bool = True
                             ) -> Iterator[pd.DataFrame]:
        """Stream the rows whose cursor falls in [start, end) as DataFrames of batch_size rows:
        the key and cursor, the geometry if ``outlines``, and those of ``columns`` the table
        has (None: every column).

        Cursor timestamps come back as UTC ``datetime64[us, UTC]``, NaT where a value cannot be
        read as a time, with the reason in ``cursor_problem``; the geometry (if read) as
        stored (WKT text or WKB bytes, WKB on SQL Server) with its SRID in ``geometry_srid``.
        """
        table = self.table_ref()
        srid = self.resolve_srid() if outlines and self.dialect_name != "mssql" else None
        after = None
        with self._reading(), self.get_engine().connect() as conn:
            while True:
                batch = self._page(conn, self.changed_rows_query(start, end, after, columns,
                                                                 outlines))
                if batch.empty and after is not None:
                    return
                exact = batch.pop(PAGE_CURSOR) if PAGE_CURSOR in batch \
                    else batch[self.cursor_column]
                if len(batch):
                    after = (exact.iloc[-1], plain(batch[self.key_column].iloc[-1]))
                batch[self.cursor_column], batch[CURSOR_PROBLEM] = self.cursor_to_utc(
                    table, batch[self.cursor_column])
                if srid is not None:
                    batch[SRID_COLUMN] = srid
                yield batch  # the first batch even if empty, so callers get the columns
                if len(batch) < self.batch_size:
                    return

    def _page(self, conn: sa.Connection, query: sa.Select) -> pd.DataFrame:
        """One page of rows. Where SQLAlchemy has no value of the page's columns to convert
        (the demo's, and SQL Server's and PostgreSQL's usual types) the driver's rows are
        taken as they are: SQLAlchemy's row objects were a third of a SQLite read (0.26 s
        against 0.17 s a 25,000-row page). SQLite's text is decoded by sqlite3 itself (a
        Python decoder called for each value took a third of the read); a page holding text
        that is not UTF-8 fails that decoding and is read again with ``_text_or_bytes``."""
        def fetch() -> pd.DataFrame:
            result = conn.execute(query)
            if _converts_values(result, query, conn.dialect):
                rows = result.fetchall()
            else:
                with closing(result), _driver_errors(conn.dialect):
                    rows = result.cursor.fetchall()
            return _rows_frame(rows, list(result.keys()))

        if self.dialect_name != "sqlite":
            return fetch()
        dbapi = conn.connection.driver_connection
        dbapi.text_factory = str
        try:
            return fetch()
        except sa.exc.OperationalError as err:
            if "decode" not in str(err.orig):
                raise
        finally:
            dbapi.text_factory = _text_or_bytes
        return fetch()

    def cursor_to_utc(self, table: sa.Table, values: pd.Series) -> tuple[pd.Series, pd.Series]:
        """Cursor values as UTC ``datetime64[us, UTC]`` (naive ones are in source_timezone),
        and per value why it is not a time (None where it is): NULL, a number, unreadable
        text, text with a UTC offset in a column without one, before 1970."""
        problem = pd.Series(None, index=values.index, dtype=object)
        present = values.notna()
        problem[~present] = "updated_at is NULL"
        # one look in C when every value is text or every one a time (nearly always); a
        # mixed column is sorted value by value
        kind = pd.api.types.infer_dtype(values, skipna=True)
        is_text = present if kind == "string" else (
            values.map(lambda v: isinstance(v, str)).astype(bool))
        is_time = present if kind in ("datetime", "datetime64") else (
            values.map(lambda v: isinstance(v, datetime)).astype(bool))
        other = present & ~is_text & ~is_time
        problem[other] = [f"updated_at {short(v)} is not a date and time ({type(v).__name__})"
                          for v in values[other]]
        naive = self._cursor_is_naive(table)
        if naive and is_text.any():
            offset = values[is_text].str.contains(_OFFSET).reindex(values.index,
                                                                   fill_value=False)
            problem[offset] = [f"updated_at {short(v)} has a UTC offset, but the column holds "
                               f"times without one (in {self.source_timezone})"
                               for v in values[offset]]
        readable = problem.isna()
        stamps = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
        if readable.any():
            parsed = pd.to_datetime(values[readable], errors="coerce", format="ISO8601",
                                    utc=not naive)
            if naive:
                # The hour repeated when DST ends is read as its first (DST) occurrence, as
                # zoneinfo's fold=0 does; the skipped hour shifts forward.
                parsed = parsed.dt.tz_localize(
                    self._zone(), ambiguous=np.ones(len(parsed), dtype=bool),
                    nonexistent="shift_forward")
            stamps[readable] = parsed.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
            unreadable = readable & stamps.isna()
            problem[unreadable] = [f"updated_at {short(v)} cannot be read as a date and time"
                                   for v in values[unreadable]]
        early = stamps.notna() & (stamps < EARLIEST_CURSOR)
        problem[early] = [f"updated_at {v:%Y-%m-%d} is before 1970, a placeholder rather than "
                          "an edit time" for v in stamps[early]]
        return stamps.where(problem.isna()), problem

    def _cursor_text(self, table: sa.Table) -> sa.ColumnElement:
        """The cursor at the source's full precision: SQL Server's datetime2 has 100 ns ticks,
        which pyodbc's datetime would cut to microseconds, so it is read as ISO text there
        (up to 33 characters: a datetimeoffset keeps its offset)."""
        cursor = table.c[self.cursor_column]
        if self.dialect_name == "mssql":
            return sa.func.convert(sa.literal_column("varchar(34)"), cursor,
                                   sa.literal_column("126"))
        return self._cursor_raw(table)

    def changes_since(self, since: datetime | None, until: datetime | None = None
                      ) -> pd.DataFrame:
        """Key and cursor of the rows with ``since`` <= cursor < ``until`` (UTC; either may be
        None), oldest first, rows without a key left out.

        Columns: ``cursor_text`` (the source's value at full precision, as text), ``updated_at``
        (UTC, microseconds; NaT where the value is not a readable time) and ``id``. Only two
        columns travel, so a poll stays cheap.
        """
        table = self.table_ref()
        cursor, key = table.c[self.cursor_column], table.c[self.key_column]
        query = sa.select(self._cursor_text(table).label("cursor_text"), key.label("id")) \
            .where(key.is_not(None)).order_by(cursor, key)
        query = self._between(query, table, since, until)
        with self._reading(), self.get_engine().connect() as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame(rows, columns=["cursor_text", "id"])
        raw = frame["cursor_text"]
        if self.dialect_name == "mssql":  # text with 7 decimals; a datetime holds 6
            frame["updated_at"], _ = self.cursor_to_utc(
                table, raw.str.replace(r"(\.\d{6})\d+", r"\1", regex=True))
        else:
            frame["updated_at"], _ = self.cursor_to_utc(table, raw)
            frame["cursor_text"] = raw.map(
                lambda v: v.isoformat(timespec="microseconds") if isinstance(v, datetime)
                else str(v))
        return frame

    def iter_keys(self) -> Iterator[list]:
        """Every key in the table, in batches, by keyset on the key: cheap even at 2M rows."""
        table = self.table_ref()
        key = table.c[self.key_column]
        last = None
        with self._reading(), self.get_engine().connect() as conn:
            while True:
                query = sa.select(key).where(key.is_not(None)).order_by(key) \
                        .limit(self.batch_size)
                if last is not None:
                    query = query.where(key > last)
                batch = conn.execute(query).scalars().all()
                if not batch:
                    return
                yield batch
                last = batch[-1]

    def key_census_query(self, since: datetime, until: datetime, only_inside: bool = False
                         ) -> sa.Select:
        """Each key and 1 where ``since`` <= cursor < ``until`` (a CASE: SQL Server has no
        boolean in a select list), 0 elsewhere; ``only_inside``: just the keys inside."""
        table = self.table_ref()
        key, cursor = table.c[self.key_column], table.c[self.cursor_column]
        inside = sa.and_(cursor >= self._to_source_time(table, since),
                         cursor < self._to_source_time(table, until))
        query = sa.select(key, sa.case((inside, 1), else_=0).label("inside")) \
            .where(key.is_not(None))
        return query.where(inside) if only_inside else query

    def key_census(self, since: datetime, until: datetime, only_inside: bool = False
                   ) -> pd.DataFrame:
        """Every key in the table (``id``; ``only_inside``: only those of the rows inside the
        range), and whether its row has ``since`` <= cursor < ``until`` (UTC; ``inside``),
        read in batches through the driver's own cursor: keys and a flag computed by the
        database travel, so reconciling a county's ids costs about half a second per million
        rows."""
        frames = []
        with self._reading(), self.get_engine().connect() as conn:
            # the driver's cursor: rows as tuples, no SQLAlchemy row objects (3x faster)
            raw = conn.execute(self.key_census_query(since, until, only_inside)).cursor
            with _driver_errors(conn.dialect):
                while rows := raw.fetchmany(self.batch_size):
                    frames.append(_census_batch(rows))
        census = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            {"id": pd.Series([], dtype="int64"), "inside": pd.Series([], dtype="int64")})
        return census.astype({"inside": bool})

    def key_counts_query(self, until: datetime) -> sa.Select:
        """The table's rows, its rows without a key and its unplaced rows (``_unplaced``),
        each counted on an index (a flag computed for every row took 0.37 s at 2,000,000
        rows; these counts 0.03 s), the table's rows once."""
        table = self.table_ref()
        key = table.c[self.key_column]
        unplaced = [_count_where(table, part) for part in self._unplaced(table, until)]
        keyless = _count_where(table, key.is_(None)) if key.nullable else sa.literal(0)
        return sa.select(_count_where(table), keyless, sum(unplaced[1:], unplaced[0]))

    def key_counts(self, until: datetime) -> tuple[int, int]:
        """How many rows have a key, and how many of them have 1970 <= cursor < ``until``
        (UTC): the census counted by the database, one row back, for the reconciliation
        after every sync."""
        with self._reading(), self.get_engine().connect() as conn:
            rows, keyless, unplaced = conn.execute(self.key_counts_query(until)).one()
        return int(rows) - int(keyless), int(rows) - int(unplaced)

    def rows_with_keys(self, keys: list, columns: Collection[str] | None = None,
                       outlines: bool = True) -> pd.DataFrame:
        """The rows with these keys (a few thousand at most: parcels a map must draw that no
        output holds), their key and cursor, the geometry if ``outlines``, and those of
        ``columns`` the table has (None: every column), each as ``iter_changed_batches``
        reads it, the cursor as stored. Keys are bound in chunks below SQL Server's
        2,100-parameter limit."""
        table = self.table_ref()
        key = table.c[self.key_column]
        selected = self._selected_columns(table, columns, outlines)
        frames = []
        with self._reading(), self.get_engine().connect() as conn:
            for start in range(0, len(keys), 1000):
                result = conn.execute(sa.select(*selected)
                                      .where(key.in_(keys[start:start + 1000])))
                frames.append(pd.DataFrame(result.fetchall(), columns=list(result.keys())))
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=[c.name for c in selected])
        if outlines and SRID_COLUMN not in rows:
            rows[SRID_COLUMN] = self.resolve_srid()
        return rows

    def _unplaced(self, table: sa.Table, until: datetime) -> list[sa.ColumnElement]:
        """Rows no sync window can hold, as disjoint conditions each a range of the cursor's
        index: a cursor before 1970, at or after ``until`` (the end of the newest window:
        2999-01-01, 9999-12-31) or stored in a form that sorts outside every time (SQLite: an
        epoch number, unreadable text), NULL, or no key (NULLs only where the column may
        hold them)."""
        cursor, key = table.c[self.cursor_column], table.c[self.key_column]
        low, high = (self._to_source_time(table, moment) for moment in (EARLIEST_CURSOR, until))
        parts = [cursor < low, cursor >= high]
        if cursor.nullable:
            parts.append(cursor.is_(None))
        if key.nullable:
            parts.append(sa.and_(key.is_(None), cursor >= low, cursor < high))
        return parts

    def iter_unplaced(self, until: datetime) -> Iterator[pd.DataFrame]:
        """Key, parcel number and cursor (as text) of the rows no window can hold, in batches:
        key reconciliation lists them, since the change sensor can never see them."""
        table = self.table_ref()
        columns = [table.c[self.key_column].label("id"),
                   sa.cast(self._cursor_text(table), sa.String).label("updated_at")]
        if "parcel_id" in table.c:
            columns.insert(1, table.c["parcel_id"])
        query = sa.select(*columns).where(sa.or_(*self._unplaced(table, until)))
        with self._reading(), self.get_engine().connect() as conn:
            result = conn.execution_options(stream_results=True).execute(query)
            while rows := result.fetchmany(self.batch_size):
                yield pd.DataFrame(rows, columns=list(result.keys()), dtype=object)

    def unplaced_count_query(self, until: datetime) -> sa.Select:
        """How many rows no window can hold, as the sum of ``_unplaced``'s parts, each
        counted on the cursor's index (the sensor counts on every tick: one OR over the
        table is a scan of it)."""
        table = self.table_ref()
        counts = [_count_where(table, part) for part in self._unplaced(table, until)]
        return sa.select(sum(counts[1:], counts[0]))

    def count_unplaced(self, until: datetime) -> int:
        """How many rows no window can hold."""
        return self._scalar(self.unplaced_count_query(until))

    def _between(self, query: sa.Select, table: sa.Table, since: datetime | None,
                 until: datetime | None) -> sa.Select:
        """``query`` limited to rows with ``since`` <= cursor < ``until`` (None: unbounded)."""
        cursor = table.c[self.cursor_column]
        if since is not None:
            query = query.where(cursor >= self._to_source_time(table, since))
        if until is not None:
            query = query.where(cursor < self._to_source_time(table, until))
        return query

    def _scalar(self, query: sa.Select) -> int:
        with self._reading(), self.get_engine().connect() as conn:
            return int(conn.execute(query).scalar_one())

    def count_since(self, since: datetime | None, until: datetime | None = None) -> int:
        """How many rows have ``since`` <= cursor < ``until`` (UTC; None: unbounded)."""
        table = self.table_ref()
        return self._scalar(self._between(sa.select(sa.func.count()).select_from(table), table,
                                          since, until))

    def count_all(self) -> int:
        """How many rows the table has."""
        return self._scalar(sa.select(sa.func.count()).select_from(self.table_ref()))

    def cursor_bounds(self, since: datetime | None = None, until: datetime | None = None
                      ) -> tuple[datetime, datetime] | None:
        """The earliest and latest cursor value (UTC) in [``since`` (default 1970),
        ``until``); None if there is none. Bound it with ``until``: a row dated 9999-12-31 is
        no edit time."""
        table = self.table_ref()
        cursor = table.c[self.cursor_column]
        query = self._between(sa.select(sa.func.min(self._cursor_raw(table)),
                                        sa.func.max(self._cursor_raw(table))),
                              table, since or EARLIEST_CURSOR, until)
        with self._reading(), self.get_engine().connect() as conn:
            bounds = pd.Series(conn.execute(query.where(cursor.is_not(None))).one())
        if bounds.isna().any():
            return None
        low, high = self.cursor_to_utc(table, bounds)[0]
        if pd.isna(low) or pd.isna(high):  # SQLite text that is no time: ask row by row
            rows = self.changes_since(since or EARLIEST_CURSOR, until)["updated_at"].dropna()
            if rows.empty:
                return None
            low, high = rows.min(), rows.max()
        return low.to_pydatetime(), high.to_pydatetime()

    def resolve_srid(self) -> int:
        """The EPSG code of the geometry: configured, else the OGC ``geometry_columns`` table."""
        if self.srid is not None:
            return self.srid
        with self._reading(), self.get_engine().connect() as conn:
            if sa.inspect(conn).has_table("geometry_columns", schema=self.db_schema):
                meta = sa.Table("geometry_columns", sa.MetaData(), schema=self.db_schema,
                                autoload_with=conn)
                row = conn.execute(
                    sa.select(meta.c.srid)
                    .where(sa.func.lower(meta.c.f_table_name) == self.table.lower())
                    .where(sa.func.lower(meta.c.f_geometry_column)
                           == self.geometry_column.lower())
                ).first()
                if row is not None:
                    return int(row[0])
        raise SourceError(
            f"The SRID of {self.table}.{self.geometry_column} is unknown: the source has no "
            "geometry_columns entry for it. Set COUNTYSYNC_SOURCE_SRID (e.g. 2286 for "
            "Washington State Plane South, US feet)."
        )
