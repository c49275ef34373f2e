"""GeoPackage: the merged current state of parcel geometry, in the source's native CRS.

pyogrio (GDAL) writes the incoming rows to a staging GeoPackage next to the target; then one
SQLite transaction on the target upserts them with the same newer-wins rule as the SQLite IO
manager, so the layer keeps its spatial index, its fids and every row the run did not touch.
The first write publishes a GDAL copy of the staging file (its spatial index built once) by
atomic rename.

GDAL's R-tree triggers call the GeoPackage SQL functions ``ST_IsEmpty`` and ``ST_MinX`` ...;
plain ``sqlite3`` lacks them, so they are registered here, reading the envelope that every
GeoPackage geometry blob carries in its header (GeoPackage spec, clause 2.1.3).
"""

import os
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import geopandas as gpd
import pandas as pd
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
from countysync_assets.io_managers.output_transactions import OutputTransactions
from countysync_assets.io_managers.publishing import (
    StagedWrite,
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
# The staging file has no spatial index: GDAL builds a new layer's R-tree once, when the
# file is closed, but each later append (one per batch) reopens the layer and feeds the
# R-tree row by row through its triggers (17 s of 1,000,000 features, against 4 s without).
STAGING_OPTIONS = {"dataset_options": CREATION_OPTIONS["dataset_options"],
                   "layer_options": {**CREATION_OPTIONS["layer_options"], "SPATIAL_INDEX": "NO"}}
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


def _stage_new(path: Path, staging: Path, layer: str, keys: list[str], cursor: str | None
               ) -> StagedWrite:
    """The new file: the staging layer copied by GDAL in one pass of Arrow batches (the
    R-tree built once, at the end), then given its key and cursor indexes."""
    temp = temp_sibling(path)
    try:
        # 10,000 features a batch: larger ones held ~90 MB more for no gain in time
        with pyogrio.open_arrow(staging, layer=layer, use_pyarrow=False,
                                batch_size=10_000) as (meta, batches):
            pyogrio.write_arrow(batches, temp, layer=layer, driver="GPKG",
                                geometry_name=meta["geometry_name"],
                                geometry_type=meta["geometry_type"], crs=meta["crs"],
                                **CREATION_OPTIONS)
        with closing(sqlite3.connect(temp)) as conn, conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never hold up a later commit
            _key_and_cursor_indexes(conn, layer, keys, cursor)
            rows = conn.execute(f"SELECT count(*) FROM {quote(layer)}").fetchone()[0]
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        staging.unlink(missing_ok=True)
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
        updated, new_key = 0, ""
        if keys:
            same_key = " AND ".join(f"{table}.{quote(k)} = s.{quote(k)}" for k in keys)
            values = [c for c in columns if c not in keys]
            assignments = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in values)
            rule = newer_rule(table, "s", values, cursor, GPKG_TIME)
            updated = conn.execute(f"UPDATE main.{table} SET {assignments} FROM {staged_rows} "
                                   f"WHERE {same_key} AND ({rule})").rowcount
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
    to the target; ``finish`` merges it into the target in one SQLite transaction (newer
    wins, as in the SQLite IO manager), or, for a new file, copies it with its spatial index
    and publishes the copy by rename."""

    def __init__(self, path: Path, layer: str, target: OutputTarget,
                 files: OutputTransactions):
        self.path, self.layer, self.files = path, layer, files
        self.keys = list(target.metadata.get(KEY_COLUMNS) or [])
        self.cursor = target.metadata.get(CURSOR_COLUMN)
        self.temp: Path | None = None
        self.columns: list[str] = []

    def write(self, frame: gpd.GeoDataFrame) -> None:
        if frame.empty:  # nothing changed: the current state stays as it is
            return
        first = self.temp is None
        if first:
            self.temp, self.columns = temp_sibling(self.path), list(frame.columns)
        try:
            pyogrio.write_dataframe(
                floor_to_milliseconds(frame), self.temp, layer=self.layer, driver="GPKG",
                promote_to_multi=True, geometry_type="MultiPolygon", use_arrow=True,
                append=not first, **(STAGING_OPTIONS if first else {}))
        except BaseException:
            self.discard()
            raise

    def finish(self) -> StagedWrite:
        if self.temp is None:
            return StagedWrite(f"{self.path.name}:{self.layer}",
                               metadata={"gpkg_rows_inserted": 0})
        try:
            if self.path.exists():
                staged = _stage_merge(self.path, self.temp, self.layer, self.columns,
                                      self.keys, self.cursor, self.files)
            else:
                staged = _stage_new(self.path, self.temp, self.layer, self.keys, self.cursor)
        except BaseException:
            self.discard()
            raise
        staged.metadata.update({"gpkg_path": str(self.path), "gpkg_layer": self.layer})
        return staged

    def discard(self) -> None:
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
