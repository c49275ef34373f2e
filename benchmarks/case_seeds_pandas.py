"""The seeds' way, as they wrote it: read the whole table with pandas, replace the SQLite
tables, merge by reading the whole target + concat + drop_duplicates + replace, and write
GeoPackage/GeoJSON with geopandas' fiona engine."""

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import sqlalchemy as sa

WORKING = ["id", "parcel_id", "owner", "use_code", "situs_address", "updated_at"]
STATS = ["id", "use_code", "acres", "land_value", "improvement_value", "assessed_value",
         "tax_year", "updated_at"]
GEO = ["id", "parcel_id", "owner", "situs_address", "use_code", "acres", "assessed_value",
       "updated_at"]


def _read(source_url: str, where: str = "", params: dict | None = None) -> pd.DataFrame:
    engine = sa.create_engine(source_url)
    frame = pd.read_sql(sa.text(f'SELECT * FROM "MasterParcels" {where}'), engine,
                        params=params or {})
    engine.dispose()
    return frame


def _merge_replace(new: pd.DataFrame, path: Path, table: str) -> pd.DataFrame:
    engine = sa.create_engine(f"sqlite:///{path}")
    if sa.inspect(engine).has_table(table):
        old = pd.read_sql_table(table, engine)
        new = pd.concat([old, new]).drop_duplicates("id", keep="last")
    new.to_sql(table, engine, if_exists="replace", index=False)
    engine.dispose()
    return new


def _publish(frame: pd.DataFrame, workdir: Path, merge: bool) -> None:
    out = workdir / "exports"
    out.mkdir(parents=True, exist_ok=True)
    if merge:
        working = _merge_replace(frame[WORKING], out / "working_db.sqlite", "working")
        stats = _merge_replace(frame[STATS], out / "stats_db.sqlite", "stats")
        geo_path = out / "geo_db.gpkg"
        if geo_path.exists():
            old = gpd.read_file(geo_path, layer="parcels", engine="fiona")
            old["geometry"] = old.geometry.to_wkt()
            frame = pd.concat([old, frame[[*GEO, "geometry"]]]).drop_duplicates(
                "id", keep="last")
    else:
        working, stats = frame[WORKING], frame[STATS]
        for table, data in (("working", working), ("stats", stats)):
            engine = sa.create_engine(f"sqlite:///{out / (table + '_db.sqlite')}")
            data.to_sql(table, engine, if_exists="replace", index=False)
            engine.dispose()
    geo = gpd.GeoDataFrame(frame[GEO], geometry=gpd.GeoSeries.from_wkt(frame["geometry"]),
                           crs=2286)
    geo["updated_at"] = geo["updated_at"].astype(str)
    geo.to_file(out / "geo_db.gpkg", layer="parcels", engine="fiona")
    geo.to_crs(4326).to_file(out / "parcels.geojson", driver="GeoJSON", engine="fiona")
    working.to_csv(out / "working.csv", index=False)
    working.to_json(out / "working.json", orient="records", date_format="iso")
    stats.to_csv(out / "stats.csv", index=False)


def run(step: str, workdir: Path, source_url: str, partitions: str) -> None:
    state = workdir / "seeds_state.json"
    if step == "full":
        frame = _read(source_url)
        _publish(frame, workdir, merge=False)
    elif step == "incremental":
        watermark = json.loads(state.read_text())["watermark"]
        frame = _read(source_url, "WHERE updated_at > :w", {"w": watermark})
        _publish(frame, workdir, merge=True)
    else:  # backfill, backfill-rerun: the rows of the window, merged into the target
        first, last = partitions.split("...")
        frame = _read(source_url, "WHERE updated_at >= :s AND updated_at < date(:e, '+1 day')",
                      {"s": first, "e": last})
        _publish(frame, workdir, merge=True)
    _save_watermark(state, frame)


def _save_watermark(state: Path, frame: pd.DataFrame) -> None:
    """The newest updated_at synced so far, as the seeds kept it between runs."""
    seen = [pd.to_datetime(frame["updated_at"]).max()] if len(frame) else []
    if state.exists():
        seen.append(pd.Timestamp(json.loads(state.read_text())["watermark"]))
    if seen:
        state.write_text(json.dumps({"watermark": str(max(seen))}))
