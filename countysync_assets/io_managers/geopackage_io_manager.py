"""GeoPackage: the merged current state of parcel geometry, in the source's native CRS.

pyogrio (GDAL) writes the incoming rows to a staging GeoPackage next to the target; then one
SQLite transaction on the target upserts them with the same newer-wins rule as the SQLite IO
manager, so the layer keeps its spatial index, its fids and every row the run did not touch.
The first write publishes the staging file itself by atomic rename.

GDAL's R-tree triggers call the GeoPackage SQL functions ``ST_IsEmpty`` and ``ST_MinX`` ...;
plain ``sqlite3`` lacks them, so they are registered here, reading the envelope that every
GeoPackage geometry blob carries in its header (GeoPackage spec, clause 2.1.3).
"""

import os
import sqlite3
import struct
from contextlib import closing
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import shapely
from dagster import InputContext, OutputContext
from pydantic import Field

from countysync_assets.io_managers.format_io_manager import (
    CURSOR_COLUMN,
    GPKG_LAYER,
    KEY_COLUMNS,
    FormatIOManager,
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
from countysync_assets.io_managers.sqlite_io_manager import to_rows, upsert_clause

GEOMETRY_COLUMN = "geom"  # GDAL's default geometry column name in GeoPackage
# GDAL stores GeoPackage datetimes with milliseconds and drops ".000": normalize to compare.
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


class GeoPackageIOManager(FormatIOManager):
    """Current state in ``<export_dir>/<file_name>``, one layer per asset."""

    file_name: str = Field(default="geo_db.gpkg", description="GeoPackage file name.")

    def _target(self, context: OutputContext | InputContext) -> tuple[Path, str]:
        metadata = (context.upstream_output if isinstance(context, InputContext)
                    else context).definition_metadata or {}
        layer = metadata.get(GPKG_LAYER) or asset_name(context)
        return export_path(self.export_dir, self.file_name), layer

    def stage(self, context: OutputContext, obj: gpd.GeoDataFrame,
              files: OutputTransactions) -> StagedWrite:
        metadata = context.definition_metadata or {}
        keys = list(metadata.get(KEY_COLUMNS) or [])
        cursor = metadata.get(CURSOR_COLUMN)
        path, layer = self._target(context)
        if obj.empty:  # nothing changed in the window: the current state stays as it is
            return StagedWrite(f"{path.name}:{layer}", metadata={"gpkg_rows_inserted": 0})
        temp = temp_sibling(path)
        try:
            pyogrio.write_dataframe(
                floor_to_milliseconds(obj), temp, layer=layer, driver="GPKG",
                promote_to_multi=True, geometry_type="MultiPolygon", use_arrow=True,
            )
            if path.exists():
                staged = self._stage_merge(path, temp, layer, list(obj.columns), keys, cursor,
                                           files)
            else:
                staged = self._stage_new(path, temp, layer, keys)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        staged.metadata.update({"gpkg_path": str(path), "gpkg_layer": layer})
        return staged

    @staticmethod
    def _stage_new(path: Path, temp: Path, layer: str, keys: list[str]) -> StagedWrite:
        with sqlite3.connect(temp) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never hold up a later commit
            if keys:
                conn.execute(f"CREATE UNIQUE INDEX {quote(f'ux_{layer}_key')} ON {quote(layer)} "
                             f"({', '.join(quote(k) for k in keys)})")
            rows = conn.execute(f"SELECT count(*) FROM {quote(layer)}").fetchone()[0]
        conn.close()
        return StagedWrite(
            f"{path.name}:{layer}", [lambda: os.replace(temp, path)],
            [lambda: temp.unlink(missing_ok=True)],
            {"gpkg_rows_inserted": rows, "gpkg_rows_updated": 0},
        )

    @staticmethod
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
            if keys:
                conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {quote(f'ux_{layer}_key')} "
                             f"ON {quote(layer)} ({', '.join(quote(k) for k in keys)})")
            names = ", ".join(quote(c) for c in columns)
            # counted by key lookups: the cost follows the rows synced, not the layer's size
            stored = conn.execute(
                f"SELECT count(*) FROM staged.{quote(layer)} JOIN main.{quote(layer)} "
                f"USING ({', '.join(quote(k) for k in keys)})").fetchone()[0] if keys else 0
            incoming = conn.execute(f"SELECT count(*) FROM staged.{quote(layer)}").fetchone()[0]
            written = conn.execute(
                f"INSERT INTO main.{quote(layer)} ({names}) "
                f"SELECT {names} FROM staged.{quote(layer)} WHERE true "
                f"{upsert_clause(layer, columns, keys, cursor, GPKG_TIME)}"
            ).rowcount
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
        inserted = incoming - stored
        staged.metadata = {"gpkg_rows_inserted": inserted,
                           "gpkg_rows_updated": max(written, 0) - inserted}
        return staged

    def stage_delete(self, asset: str, metadata: dict, removals: pd.DataFrame, run_id: str,
                     files: OutputTransactions, tombstones: pd.DataFrame | None = None
                     ) -> StagedWrite:
        """Remove the ids' features (unless the stored version is newer) in one transaction;
        GDAL's triggers keep the spatial index and feature count in step. The tombstones are
        kept by the SQLite outputs, not here."""
        path = export_path(self.export_dir, self.file_name)
        layer = metadata.get(GPKG_LAYER) or asset
        if not path.exists() or not len(removals):
            return StagedWrite(f"{path.name}:{layer} deletes", metadata={"deleted_from_gpkg": 0})
        conn, staged = files.begin(path, f"{path.name}:{layer} deletes",
                                   _register_gpkg_functions)
        try:
            deleted = conn.executemany(
                f"DELETE FROM {quote(layer)} WHERE id = ? AND "
                f"{GPKG_TIME.format('updated_at')} <= {GPKG_TIME.format('?')}",
                to_rows(removals[["id", "as_of"]])).rowcount
        except BaseException:
            staged.rollback()
            raise
        staged.metadata = {"deleted_from_gpkg": max(deleted, 0)}
        return staged

    def load_input(self, context: InputContext) -> gpd.GeoDataFrame | pd.DataFrame:
        """The current features of the requested partitions (all if unpartitioned). An input
        with ``metadata={"columns": [...]}`` reads only those attributes, without geometry
        (with sqlite3: the library the writes use, since two SQLite libraries must not hold
        one file open in the same process); with ``"missing_ok": True`` a layer not written
        yet reads as no rows."""
        path, layer = self._target(context)
        cursor = (context.upstream_output.definition_metadata or {}).get(CURSOR_COLUMN)
        wanted = (context.definition_metadata or {}).get("columns")
        window, where = input_window(context), ""
        if window is not None:
            where = (f" WHERE {quote(cursor)} >= '{window.start:%Y-%m-%dT%H:%M:%S}' AND "
                     f"{quote(cursor)} < '{window.end:%Y-%m-%dT%H:%M:%S}'")
        if wanted:
            if not path.exists() and (context.definition_metadata or {}).get("missing_ok"):
                return pd.DataFrame(columns=wanted)
            with closing(sqlite3.connect(path)) as conn:
                if not conn.execute("SELECT 1 FROM gpkg_contents WHERE table_name = ?",
                                    (layer,)).fetchone():
                    return pd.DataFrame(columns=wanted)
                frame = pd.read_sql_query(
                    f"SELECT {', '.join(map(quote, wanted))} FROM {quote(layer)}{where}", conn)
            if cursor in frame:
                frame[cursor] = pd.to_datetime(frame[cursor], utc=True, format="ISO8601")
            return frame
        return pyogrio.read_dataframe(path, layer=layer, where=where.removeprefix(" WHERE ")
                                      or None, use_arrow=True)
