"""The master parcel database: SQL Server in production, any SQLAlchemy URL otherwise.

Everything the pipeline reads from the county's master system goes through
``MasterParcelsSource``. It builds the engine (``mssql+pyodbc`` from parts, or a URL, or the
embedded demo SQLite file), checks configured table and column names against the reflected
table before any query, and streams the rows changed in a time window in keyset-paginated
batches. Values are always bound parameters; the password is never shown.
"""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import sqlalchemy as sa
from dagster import ConfigurableResource, Failure
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

DEFAULT_DEMO_PATH = "data/demo_source.sqlite"
SRID_COLUMN = "geometry_srid"


class SourceError(Failure):
    """The source cannot be read as configured. The message says what to check."""


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
    batch_size: int = Field(default=50_000, gt=0, description="Rows per keyset page.")

    _engine: Engine | None = PrivateAttr(default=None)
    _table: sa.Table | None = PrivateAttr(default=None)

    # ----- connection -------------------------------------------------------------------------

    def sqlalchemy_url(self) -> URL:
        """The URL the engine connects with (contains the password: never log it)."""
        if self.url:
            return sa.make_url(self.url)
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

    def display_url(self) -> str:
        """The source URL with the password masked, safe for logs and metadata."""
        return self.sqlalchemy_url().render_as_string(hide_password=True)

    @property
    def dialect_name(self) -> str:
        return self.sqlalchemy_url().get_backend_name()

    def get_engine(self) -> Engine:
        """One engine per resource instance; ``fast_executemany`` on SQL Server."""
        if self._engine is None:
            url = self.sqlalchemy_url()
            options: dict = {"pool_pre_ping": True}
            if url.get_backend_name() == "mssql":
                options["fast_executemany"] = True
            self._engine = sa.create_engine(url, **options)
        return self._engine

    def _unreachable(self, err: Exception) -> SourceError:
        url = self.sqlalchemy_url()
        where = f"host {url.host or 'local file'}, database {url.database}"
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        if url.password:
            reason = reason.replace(str(url.password), "***")
        return SourceError(
            f"Cannot read the master parcel database ({where}; {self.display_url()}): {reason}. "
            "Check that the server is running and reachable from this machine (host, port, "
            "firewall, VPN), that the database name and credentials are right, and for SQL "
            "Server that the ODBC driver is installed. No output was changed."
        )

    def table_ref(self) -> sa.Table:
        """The reflected source table, checked against the configured column names."""
        if self._table is not None:
            return self._table
        try:
            with self.get_engine().connect() as conn:
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
        except sa.exc.DBAPIError as err:
            raise self._unreachable(err) from None
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

    def _selected_columns(self, table: sa.Table) -> list[sa.ColumnElement]:
        """Every column; on SQL Server the geometry as WKB plus its SRID."""
        columns: list[sa.ColumnElement] = []
        for column in table.columns:
            if column.name == self.geometry_column and self.dialect_name == "mssql":
                columns.append(STAsBinary(column).label(column.name))
                columns.append(STSrid(column).label(SRID_COLUMN))
            else:
                columns.append(column)
        return columns

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

    def changed_rows_query(
        self, start: datetime, end: datetime, after: tuple[datetime, object] | None = None
    ) -> sa.Select:
        """One keyset page of rows with start <= cursor < end, after (cursor, key) ``after``.

        Keyset pagination on (cursor, key) keeps every page an index seek, where OFFSET/FETCH
        would re-scan all the skipped rows.
        """
        table = self.table_ref()
        cursor, key = table.c[self.cursor_column], table.c[self.key_column]
        query = self._between(sa.select(*self._selected_columns(table)), table, start, end) \
            .order_by(cursor, key).limit(self.batch_size)
        if after is not None:
            last_cursor, last_key = after
            last_cursor = self._to_source_time(table, last_cursor)
            query = query.where(
                sa.or_(cursor > last_cursor, sa.and_(cursor == last_cursor, key > last_key))
            )
        return query

    def iter_changed_batches(self, start: datetime, end: datetime) -> Iterator[pd.DataFrame]:
        """Stream the rows whose cursor falls in [start, end) as DataFrames of batch_size rows.

        Cursor timestamps come back as UTC ``datetime64[us, UTC]``; the geometry as stored (WKT
        text or WKB bytes, WKB on SQL Server) with its SRID in ``geometry_srid``.
        """
        table = self.table_ref()
        srid = None if self.dialect_name == "mssql" else self.resolve_srid()
        after = None
        try:
            with self.get_engine().connect() as conn:
                while True:
                    result = conn.execute(self.changed_rows_query(start, end, after))
                    batch = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
                    if batch.empty and after is not None:
                        return
                    self._reject_null_keys(batch, start, end)
                    raw_last = batch[self.cursor_column].iloc[-1] if len(batch) else None
                    batch[self.cursor_column] = self._cursor_to_utc(
                        table, batch[self.cursor_column])
                    if srid is not None:
                        batch[SRID_COLUMN] = srid
                    if raw_last is not None:
                        last_key = batch[self.key_column].iloc[-1]
                        if isinstance(last_key, np.generic):  # sqlite3 binds numpy as BLOB
                            last_key = last_key.item()
                        after = (self._as_utc(raw_last), last_key)
                    yield batch  # the first batch even if empty, so callers get the columns
                    if len(batch) < self.batch_size:
                        return
        except sa.exc.DBAPIError as err:
            raise self._unreachable(err) from None

    def _as_utc(self, raw: datetime) -> datetime:
        if raw.tzinfo is None:
            return raw.replace(tzinfo=self._zone()).astimezone(UTC)
        return raw.astimezone(UTC)

    def _cursor_to_utc(self, table: sa.Table, values: pd.Series) -> pd.Series:
        """Cursor values as UTC ``datetime64[us, UTC]``; naive ones are in source_timezone."""
        if not self._cursor_is_naive(table):
            return pd.to_datetime(values, utc=True).astype("datetime64[us, UTC]")
        # The hour repeated when DST ends is read as its first (DST) occurrence, as
        # zoneinfo's fold=0 does for the keyset cursor; the skipped hour shifts forward.
        stamps = pd.to_datetime(values).dt.tz_localize(
            self._zone(), ambiguous=np.ones(len(values), dtype=bool),
            nonexistent="shift_forward")
        return stamps.dt.tz_convert("UTC").astype("datetime64[us, UTC]")

    def _reject_null_keys(self, batch: pd.DataFrame, start: datetime, end: datetime) -> None:
        """A row without a key cannot be merged or paged past: stop before anything is written."""
        missing = batch[batch[self.key_column].isna()]
        if missing.empty:
            return
        sample = missing.drop(columns=[self.geometry_column]).head(3).astype(str) \
            .to_dict("records")
        raise SourceError(
            f"{len(missing)} row(s) of {self.table} changed between {start:%Y-%m-%d %H:%M} and "
            f"{end:%Y-%m-%d %H:%M} UTC have no {self.key_column} (NULL), e.g. {sample}. Give "
            f"every row a {self.key_column} in the master table, then re-run this partition. "
            "No output was changed."
        )

    def _cursor_text(self, table: sa.Table) -> sa.ColumnElement:
        """The cursor at the source's full precision: SQL Server's datetime2 has 100 ns ticks,
        which pyodbc's datetime would cut to microseconds, so it is read as ISO text there."""
        cursor = table.c[self.cursor_column]
        if self.dialect_name == "mssql":
            return sa.func.convert(sa.literal_column("varchar(27)"), cursor,
                                   sa.literal_column("126"))
        return cursor

    def changes_since(self, since: datetime | None, until: datetime | None = None
                      ) -> pd.DataFrame:
        """Key and cursor of the rows with ``since`` <= cursor < ``until`` (UTC; either may be
        None), oldest first.

        Columns: ``cursor_text`` (the source's value at full precision, as text), ``updated_at``
        (UTC, microseconds) and ``id``. Only two columns travel, so a poll stays cheap.
        """
        table = self.table_ref()
        cursor, key = table.c[self.cursor_column], table.c[self.key_column]
        query = sa.select(self._cursor_text(table).label("cursor_text"), key.label("id")) \
            .order_by(cursor, key)
        query = self._between(query, table, since, until)
        try:
            with self.get_engine().connect() as conn:
                rows = conn.execute(query).all()
        except sa.exc.DBAPIError as err:
            raise self._unreachable(err) from None
        frame = pd.DataFrame(rows, columns=["cursor_text", "id"])
        raw = frame["cursor_text"]
        if self.dialect_name == "mssql":  # text with 7 decimals; a datetime holds 6
            frame["updated_at"] = self._cursor_to_utc(
                table, pd.to_datetime(raw.str.slice(0, 26), format="ISO8601"))
        else:
            frame["updated_at"] = self._cursor_to_utc(table, raw)
            frame["cursor_text"] = raw.map(lambda v: v.isoformat(timespec="microseconds"))
        return frame

    def iter_keys(self) -> Iterator[list]:
        """Every key in the table, in batches, by keyset on the key: cheap even at 2M rows."""
        table = self.table_ref()
        key = table.c[self.key_column]
        last = None
        try:
            with self.get_engine().connect() as conn:
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
        except sa.exc.DBAPIError as err:
            raise self._unreachable(err) from None

    def _between(self, query: sa.Select, table: sa.Table, since: datetime | None,
                 until: datetime | None) -> sa.Select:
        """``query`` limited to rows with ``since`` <= cursor < ``until`` (None: unbounded)."""
        cursor = table.c[self.cursor_column]
        if since is not None:
            query = query.where(cursor >= self._to_source_time(table, since))
        if until is not None:
            query = query.where(cursor < self._to_source_time(table, until))
        return query

    def count_since(self, since: datetime | None, until: datetime | None = None) -> int:
        """How many rows have ``since`` <= cursor < ``until`` (UTC; None: unbounded)."""
        table = self.table_ref()
        query = self._between(sa.select(sa.func.count()).select_from(table), table, since, until)
        try:
            with self.get_engine().connect() as conn:
                return int(conn.execute(query).scalar_one())
        except sa.exc.DBAPIError as err:
            raise self._unreachable(err) from None

    def cursor_bounds(self, since: datetime | None = None) -> tuple[datetime, datetime] | None:
        """The earliest and latest cursor value (UTC) at or after ``since``; None if none."""
        table = self.table_ref()
        cursor = table.c[self.cursor_column]
        query = sa.select(sa.func.min(cursor), sa.func.max(cursor))
        if since is not None:
            query = query.where(cursor >= self._to_source_time(table, since))
        try:
            with self.get_engine().connect() as conn:
                low, high = conn.execute(query).one()
        except sa.exc.DBAPIError as err:
            raise self._unreachable(err) from None
        if low is None:
            return None
        return self._as_utc(pd.Timestamp(low).to_pydatetime()), \
            self._as_utc(pd.Timestamp(high).to_pydatetime())

    def resolve_srid(self) -> int:
        """The EPSG code of the geometry: configured, else the OGC ``geometry_columns`` table."""
        if self.srid is not None:
            return self.srid
        try:
            with self.get_engine().connect() as conn:
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
        except sa.exc.DBAPIError as err:
            raise self._unreachable(err) from None
        raise SourceError(
            f"The SRID of {self.table}.{self.geometry_column} is unknown: the source has no "
            "geometry_columns entry for it. Set COUNTYSYNC_SOURCE_SRID (e.g. 2286 for "
            "Washington State Plane South, US feet)."
        )
