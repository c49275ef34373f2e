"""GeoPackage: the merged current state of parcel geometry, in the source's native CRS.

pyogrio (GDAL) writes the incoming rows to a staging GeoPackage next to the target, in one
write session fed batch by batch (``GdalStream``); then one SQLite transaction on the target
upserts them with the same newer-wins rule as the SQLite IO manager, so the layer keeps its
spatial index, its fids and every row the run did not touch. The first write publishes the
staging file itself (its spatial index built once, when GDAL closes it) by atomic rename.

GDAL's R-tree triggers call the GeoPackage SQL functions ``ST_IsEmpty`` and ``ST_MinX`` ...;
plain ``sqlite3`` lacks them, so they are registered here, reading the envelope that every
GeoPackage geometry blob carries in its header (GeoPackage spec, clause 2.1.3).
"""

import os
import queue
import sqlite3
import struct
import threading
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyogrio
import shapely
from dagster import InputContext, OutputContext, TimeWindow
from pydantic import Field

from countysync_assets.io_managers.format_io_manager import (
    CURSOR_COLUMN,
    GPKG_LAYER,
    KEY_COLUMNS,
    BatchWriter,
    FormatIOManager,
    OutputTarget,
    RemovalWriter,
    in_window,
    input_window,
)
from countysync_assets.io_managers.output_transactions import OutputError, OutputTransactions
from countysync_assets.io_managers.publishing import (
    StagedWrite,
    as_multipolygons,
    asset_name,
    export_path,
    quote,
    temp_sibling,
)
from countysync_assets.io_managers.sqlite_io_manager import (
    count_rows,
    cursor_index,
    newer_rule,
    read_chunks,
    to_rows,
)

GEOMETRY_COLUMN = "geom"  # GDAL's default geometry column name in GeoPackage
# GeoPackage 1.2, which every reader in use opens without a warning (GDAL 3.6 and QGIS 3.22
# warn on 1.4, the default of newer GDAL), and one DATETIME form: always with milliseconds
# (GDAL otherwise drops ".000", which GeoPackage validators reject).
CREATION_OPTIONS = {"dataset_options": {"VERSION": "1.2"},
                    "layer_options": {"DATETIME_PRECISION": "MILLISECOND"}}
# A staging file to merge into the published one needs no spatial index of its own.
STAGING_OPTIONS = {"dataset_options": CREATION_OPTIONS["dataset_options"],
                   "layer_options": {**CREATION_OPTIONS["layer_options"], "SPATIAL_INDEX": "NO"}}
ARROW_TYPES = {"integer": pa.int64(), "float": pa.float64(), "string": pa.string(),
               "timestamp": pa.timestamp("us", tz="UTC")}
# Files written before DATETIME_PRECISION may lack ".000": normalize to compare.
# A value SQLite cannot read (second 60, written before milliseconds were floored) counts as
# the oldest, so the next version of that feature replaces it.
GPKG_TIME = "coalesce(strftime('%Y-%m-%dT%H:%M:%f', {}), '')"


def floor_to_milliseconds(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Datetimes floored to the milliseconds GeoPackage keeps. GDAL's Arrow writer rounds
    instead (GDAL 3.12): 01:59:59.9997 would be stored as 01:59:60.000, which readers
    cannot parse and the newer-wins merge cannot compare."""
    times = [c for c, dtype in frame.dtypes.items() if pd.api.types.is_datetime64_any_dtype(dtype)]
    return frame.assign(**{c: frame[c].dt.floor("ms") for c in times}) if times else frame


def arrow_table(frame: gpd.GeoDataFrame, declared: dict[str, str]) -> pa.Table:
    """The frame as GDAL's Arrow writer takes it: the asset's declared column types (a
    batch whose column is all NULL keeps its type), times floored to milliseconds, the
    geometry as MultiPolygon WKB in a last column ``geometry``."""
    frame = floor_to_milliseconds(frame)
    shapes = frame.geometry.name
    attributes = pd.DataFrame(frame.drop(columns=shapes))
    schema = pa.Schema.from_pandas(attributes, preserve_index=False)
    schema = pa.schema([field.with_type(ARROW_TYPES[declared[field.name]])
                        if declared.get(field.name) in ARROW_TYPES else field
                        for field in schema]).remove_metadata()
    table = pa.Table.from_pandas(attributes, schema=schema, preserve_index=False)
    wkb = shapely.to_wkb(as_multipolygons(frame.geometry.to_numpy()))
    return table.append_column("geometry", pa.array(wkb, pa.binary()))


def gdal_crs(frame: gpd.GeoDataFrame) -> str | None:
    """The frame's CRS as GDAL takes it (``EPSG:2286``, else its WKT), as pyogrio's
    ``write_dataframe`` passes it."""
    if frame.crs is None:
        return None
    epsg = frame.crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else frame.crs.to_wkt("WKT1_GDAL")


class GdalStream:
    """One GDAL write session (``pyogrio.write_arrow``) on its own thread, fed batch by
    batch from this one: the file is written once, and a new layer's R-tree built once, when
    GDAL closes the file. (Appending batch by batch reopened the layer each time and fed its
    R-tree row by row through the triggers: 17 s of 1,000,000 features; and a spatial-index-
    free staging file copied by GDAL at the end wrote every feature twice.)"""

    DONE, ABORT = object(), object()

    def __init__(self, path: Path, layer: str, schema: pa.Schema, crs: str | None,
                 options: dict):
        self.path, self.schema = path, schema
        self.batches: queue.Queue = queue.Queue(maxsize=1)  # one batch waits, one is written
        self.error: BaseException | None = None
        reader = pa.RecordBatchReader.from_batches(schema, self._feed())
        self.thread = threading.Thread(
            target=self._write, name=f"gdal-write-{layer}", daemon=True,
            args=(reader, dict(layer=layer, driver="GPKG", geometry_name="geometry",
                               geometry_type="MultiPolygon", crs=crs, **options)))
        self.thread.start()

    def _feed(self) -> Iterator[pa.RecordBatch]:
        while (table := self.batches.get()) is not self.DONE:
            if table is self.ABORT:
                raise RuntimeError("the write was rolled back")
            yield from table.to_batches()

    def _write(self, reader: pa.RecordBatchReader, settings: dict) -> None:
        try:
            pyogrio.write_arrow(reader, self.path, **settings)
        except BaseException as err:  # raised in the run's thread by put or close
            self.error = err

    def put(self, table: pa.Table | object) -> None:
        """Hand GDAL the next batch (waits while it writes the one before); raise its
        error if it failed."""
        while True:
            if self.error is not None or not self.thread.is_alive():
                self.thread.join()
                raise self.error or OutputError(f"GDAL stopped writing {self.path} early.")
            try:
                self.batches.put(table, timeout=1.0)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait for GDAL to complete the file; raise its error if it failed."""
        self.put(self.DONE)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """End the session without a complete file (the caller deletes it)."""
        if self.thread.is_alive():
            with suppress(queue.Empty):
                self.batches.get_nowait()  # a batch GDAL has not taken: room for ABORT
            self.batches.put(self.ABORT)
        self.thread.join()


def _envelope(blob: bytes) -> tuple[float, float, float, float]:
    """(minx, maxx, miny, maxy) of a GeoPackage geometry blob."""
    flags = blob[3]
    if (flags >> 1) & 0b111:  # the header carries an envelope
        return struct.unpack_from("<4d" if flags & 1 else ">4d", blob, 8)
    minx, miny, maxx, maxy = shapely.from_wkb(blob[8:]).bounds
    return minx, maxx, miny, maxy


def _register_gpkg_functions(conn: sqlite3.Connection) -> None:
    conn.create_function("ST_IsEmpty", 1, lambda g: None if g is None else (g[3] >> 4) & 1,
                         deterministic=True)
    for position, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        conn.create_function(
            name, 1, lambda g, i=position: None if g is None else _envelope(g)[i],
            deterministic=True,
        )


def _key_and_cursor_indexes(conn: sqlite3.Connection, layer: str, keys: list[str],
                            cursor: str | None) -> None:
    """The unique key index and the cursor index (a window's features, for the checks and
    downstream reads, by an index range), where the layer lacks them."""
    if keys:
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {quote(f'ux_{layer}_key')} "
                     f"ON {quote(layer)} ({', '.join(quote(k) for k in keys)})")
    if cursor:
        cursor_index(conn, layer, cursor)


def _stage_new(path: Path, temp: Path, layer: str, keys: list[str], cursor: str | None
               ) -> StagedWrite:
    """The new file: the staging file as GDAL completed it (with its R-tree), given its key
    and cursor indexes, to be renamed into place."""
    with closing(sqlite3.connect(temp)) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")  # readers never hold up a later commit
        _key_and_cursor_indexes(conn, layer, keys, cursor)
        rows = conn.execute(f"SELECT count(*) FROM {quote(layer)}").fetchone()[0]
    return StagedWrite(
        f"{path.name}:{layer}", [lambda: os.replace(temp, path)],
        [lambda: temp.unlink(missing_ok=True)],
        {"gpkg_rows_inserted": rows, "gpkg_rows_updated": 0},
    )


def _stage_merge(path: Path, temp: Path, layer: str, frame_columns: list[str],
                 keys: list[str], cursor: str | None, files: OutputTransactions
                 ) -> StagedWrite:
    def attach(conn: sqlite3.Connection) -> None:
        _register_gpkg_functions(conn)
        conn.execute("ATTACH DATABASE ? AS staged", (str(temp),))

    conn, staged = files.begin(path, f"{path.name}:{layer}", attach)
    try:
        existing = {r[1] for r in conn.execute(f"PRAGMA main.table_info({quote(layer)})")}
        columns = [c for c in frame_columns if c != "geometry"] + [GEOMETRY_COLUMN]
        missing = [c for c in columns if c not in existing]
        if missing:
            raise ValueError(
                f"Layer {layer!r} of {path} lacks column(s) {missing} (or does not exist). "
                f"The asset's columns changed: move {path.name} aside so the next run "
                "rebuilds it, then backfill every partition."
            )
        _key_and_cursor_indexes(conn, layer, keys, cursor)  # files written before them
        names = ", ".join(quote(c) for c in columns)
        table, staged_rows = quote(layer), f"staged.{quote(layer)} AS s"
        # An UPDATE, then an INSERT of the new keys, not one upsert: GDAL's R-tree triggers
        # use INSERT OR REPLACE, which an upsert's own conflict policy would override.
        # An outline stored as it was is not written again: GDAL's R-tree triggers fire on
        # every write of the geometry column (0.42 s of 8,000 updates of a 1,000,000-feature
        # layer, against 0.22 s for the rest), and most edits of a parcel are of attributes.
        updated, new_key = 0, ""
        if keys:
            same_key = " AND ".join(f"{table}.{quote(k)} = s.{quote(k)}" for k in keys)
            values = [c for c in columns if c not in keys]
            rule = newer_rule(table, "s", values, cursor, GPKG_TIME)

            def update(written: list[str], outlines: str) -> int:
                assignments = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in written)
                return conn.execute(f"UPDATE main.{table} SET {assignments} FROM {staged_rows} "
                                    f"WHERE {same_key} AND {outlines} AND ({rule})").rowcount

            kept = f"{table}.{quote(GEOMETRY_COLUMN)} IS s.{quote(GEOMETRY_COLUMN)}"
            updated = update([c for c in values if c != GEOMETRY_COLUMN], kept) \
                + update(values, f"NOT ({kept})")
            matches = " AND ".join(f"m.{quote(k)} = s.{quote(k)}" for k in keys)
            new_key = f"WHERE NOT EXISTS (SELECT 1 FROM main.{table} AS m WHERE {matches})"
        selected = ", ".join(f"s.{quote(c)}" for c in columns)
        inserted = conn.execute(f"INSERT INTO main.{table} ({names}) SELECT {selected} "
                                f"FROM {staged_rows} {new_key}").rowcount
        written = updated + inserted
        conn.execute(
            "UPDATE main.gpkg_contents SET "
            "min_x = min(ifnull(gpkg_contents.min_x, s.min_x), s.min_x), "
            "min_y = min(ifnull(gpkg_contents.min_y, s.min_y), s.min_y), "
            "max_x = max(ifnull(gpkg_contents.max_x, s.max_x), s.max_x), "
            "max_y = max(ifnull(gpkg_contents.max_y, s.max_y), s.max_y), "
            "last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
            "FROM (SELECT * FROM staged.gpkg_contents WHERE table_name = ?) AS s "
            "WHERE main.gpkg_contents.table_name = ? AND s.min_x IS NOT NULL AND ? > 0",
            (layer, layer, written),
        )
    except BaseException:
        staged.rollback()
        raise
    for steps in (staged.commit_steps, staged.rollback_steps):
        steps.append(lambda: temp.unlink(missing_ok=True))
    staged.metadata = {"gpkg_rows_inserted": inserted, "gpkg_rows_updated": updated}
    return staged


class GeoPackageWriter(BatchWriter):
    """Writes one output's batches with GDAL (pyogrio, Arrow) into a staging GeoPackage next
    to the target, in one write session; ``finish`` merges it into the target in one SQLite
    transaction (newer wins, as in the SQLite IO manager), or, for a new file, publishes it
    by rename, its spatial index built by GDAL as it closed the file."""

    def __init__(self, path: Path, layer: str, target: OutputTarget,
                 files: OutputTransactions):
        self.path, self.layer, self.files = path, layer, files
        self.database = path.resolve()
        self.keys = list(target.metadata.get(KEY_COLUMNS) or [])
        self.cursor = target.metadata.get(CURSOR_COLUMN)
        schema = target.metadata.get("dagster/column_schema")
        self.declared = {c.name: c.type for c in schema.columns} if schema else {}
        self.temp: Path | None = None
        self.stream: GdalStream | None = None
        self.new_file = False
        self.columns: list[str] = []

    def write(self, frame: gpd.GeoDataFrame) -> None:
        if frame.empty:  # nothing changed: the current state stays as it is
            return
        try:
            table = arrow_table(frame, self.declared)
            if self.stream is None:
                self.temp, self.columns = temp_sibling(self.path), list(frame.columns)
                self.new_file = not self.path.exists()
                self.stream = GdalStream(self.temp, self.layer, table.schema, gdal_crs(frame),
                                         CREATION_OPTIONS if self.new_file else STAGING_OPTIONS)
            self.stream.put(table.cast(self.stream.schema))
        except BaseException:
            self.discard()
            raise

    def finish(self) -> StagedWrite:
        if self.stream is None:
            return StagedWrite(f"{self.path.name}:{self.layer}",
                               metadata={"gpkg_rows_inserted": 0})
        try:
            self.stream.close()
            if self.path.exists():
                staged = _stage_merge(self.path, self.temp, self.layer, self.columns,
                                      self.keys, self.cursor, self.files)
            elif self.new_file:
                staged = _stage_new(self.path, self.temp, self.layer, self.keys, self.cursor)
            else:
                raise OutputError(
                    f"{self.path} was removed while the sync wrote it. No output was "
                    "changed; run the sync again (it rebuilds the file).")
        except BaseException:
            self.discard()
            raise
        staged.metadata.update({"gpkg_path": str(self.path), "gpkg_layer": self.layer})
        return staged

    def discard(self) -> None:
        if self.stream is not None:
            self.stream.abort()
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


class GeoPackageRemovals(RemovalWriter):
    """Removes the ids' features (unless the stored version is newer) in the file's one
    transaction; GDAL's triggers keep the spatial index and feature count in step. The ids
    are applied at ``finish``, after the layer's own writer has opened the file's transaction
    (it attaches its staging file, which SQLite allows only before a transaction begins).
    The tombstones are kept by the SQLite outputs, not here."""

    def __init__(self, path: Path, layer: str, files: OutputTransactions):
        self.path, self.layer, self.files = path, layer, files
        self.pending: list[pd.DataFrame] = []  # ids and times only: small
        self.staged: StagedWrite | None = None

    def write(self, removals: pd.DataFrame, tombstones: pd.DataFrame | None = None) -> None:
        if len(removals):
            self.pending.append(removals[["id", "as_of"]])

    def finish(self) -> StagedWrite:
        if not self.path.exists() or not self.pending:
            return StagedWrite(f"{self.path.name}:{self.layer} deletes",
                               metadata={"deleted_from_gpkg": 0})
        conn, self.staged = self.files.begin(self.path, f"{self.path.name}:{self.layer} "
                                             "deletes", _register_gpkg_functions)
        try:
            deleted = sum(max(conn.executemany(
                f"DELETE FROM {quote(self.layer)} WHERE id = ? AND "
                f"{GPKG_TIME.format('updated_at')} <= {GPKG_TIME.format('?')}",
                to_rows(removals)).rowcount, 0) for removals in self.pending)
        except BaseException:
            self.discard()
            raise
        self.staged.metadata = {"deleted_from_gpkg": deleted}
        return self.staged

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.rollback()


class GeoPackageIOManager(FormatIOManager):
    """Current state in ``<export_dir>/<file_name>``, one layer per asset."""

    file_name: str = Field(default="geo_db.gpkg", description="GeoPackage file name.")

    def _target(self, context: OutputContext | InputContext) -> tuple[Path, str]:
        metadata = (context.upstream_output if isinstance(context, InputContext)
                    else context).definition_metadata or {}
        layer = metadata.get(GPKG_LAYER) or asset_name(context)
        return export_path(self.export_dir, self.file_name), layer

    def iter_columns(self, asset: str, metadata: dict, columns: list[str],
                     window: TimeWindow | None = None) -> Iterator[pd.DataFrame]:
        """``columns`` of every feature of ``asset``'s layer (whose cursor falls in
        ``window``, if given), in chunks, without geometry (read with sqlite3, as the writes
        are)."""
        path = export_path(self.export_dir, self.file_name)
        yield from read_chunks(path, metadata.get(GPKG_LAYER) or asset, columns,
                               window and in_window(metadata.get(CURSOR_COLUMN), window))

    def count(self, asset: str, metadata: dict) -> int:
        """How many features ``asset``'s layer holds."""
        return count_rows(export_path(self.export_dir, self.file_name),
                          metadata.get(GPKG_LAYER) or asset)

    def iter_features(self, asset: str, metadata: dict, columns: list[str],
                      ids: list[int] | None = None, window: TimeWindow | None = None,
                      geometry: bool = True, chunk: int = 50_000
                      ) -> Iterator[pd.DataFrame]:
        """``columns`` and (unless ``geometry`` is False) the geometry of the features of
        ``asset``'s layer (only those with these integer ``ids``, or whose cursor falls in
        ``window``, if given), ``chunk`` at a time, streamed in one pass as Arrow batches;
        nothing if the layer was never written."""
        path = export_path(self.export_dir, self.file_name)
        if not path.exists() or ids == []:
            return
        where = None
        if ids is not None:  # at most a batch of ids: one read (the id is indexed)
            where = f"id IN ({', '.join(str(int(i)) for i in ids)})"
        elif window is not None:
            where = in_window(metadata.get(CURSOR_COLUMN) or "updated_at", window)
        with pyogrio.open_arrow(path, layer=metadata.get(GPKG_LAYER) or asset, columns=columns,
                                where=where, read_geometry=geometry, batch_size=chunk,
                                use_pyarrow=True) as (meta, batches):
            shapes = meta["geometry_name"] or "wkb_geometry"
            for batch in batches:
                if not geometry:
                    yield batch.to_pandas()
                    continue
                yield gpd.GeoDataFrame(
                    batch.drop_columns(shapes).to_pandas(),
                    geometry=shapely.from_wkb(batch[shapes].to_numpy(zero_copy_only=False)),
                    crs=meta["crs"])

    def open(self, target: OutputTarget, files: OutputTransactions) -> BatchWriter:
        layer = target.metadata.get(GPKG_LAYER) or target.name
        return GeoPackageWriter(export_path(self.export_dir, self.file_name), layer, target,
                                files)

    def open_delete(self, asset: str, metadata: dict, run_id: str, files: OutputTransactions
                    ) -> RemovalWriter:
        layer = metadata.get(GPKG_LAYER) or asset
        return GeoPackageRemovals(export_path(self.export_dir, self.file_name), layer, files)

    def load_input(self, context: InputContext) -> gpd.GeoDataFrame:
        """The current features of the requested partitions (all if unpartitioned)."""
        path, layer = self._target(context)
        cursor = (context.upstream_output.definition_metadata or {}).get(CURSOR_COLUMN)
        window = input_window(context)
        return pyogrio.read_dataframe(path, layer=layer, use_arrow=True,
                                      where=None if window is None else in_window(cursor, window))
