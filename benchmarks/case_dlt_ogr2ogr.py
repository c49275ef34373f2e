"""The peer stack a GIS engineer would assemble for countysync's outputs: dlt for the two
tabular SQLite tables (``case_dlt``), and GDAL's ``ogr2ogr`` (Debian's gdal-bin) for the
GeoPackage in the source CRS and the GeoJSON in WGS 84, both read from the same source.

ogr2ogr has no incremental merge keyed on ``id``, so every step rewrites the geo outputs from
the rows it covers: the whole table for the full sync and the incremental steps (``-upsert``
would need the id as the GeoPackage's fid), the range's rows for a backfill. One GeoJSON per
step, not per window: the per-window split is countysync's extra work, not the peer's.
"""

import subprocess
from pathlib import Path

import sqlalchemy as sa

from benchmarks import case_dlt

COLUMNS = "id, parcel_id, owner, situs_address, use_code, acres, assessed_value, updated_at"


def ogr2ogr(out: Path, driver: str, source: str, where: str, *options: str) -> None:
    sql = (f"SELECT {COLUMNS}, ST_Multi(GeomFromText(geometry, 2286)) AS geom "
           f"FROM MasterParcels{where}")
    out.unlink(missing_ok=True)
    subprocess.run(["ogr2ogr", "-f", driver, str(out), source, "-dialect", "SQLite",
                    "-sql", sql, "-nln", "parcels", "-nlt", "MULTIPOLYGON", *options],
                   check=True, capture_output=True)


def run(step: str, workdir: Path, source_url: str, partitions: str) -> None:
    case_dlt.run(step, workdir, source_url, partitions)
    source = sa.make_url(source_url).database
    where = ""
    if step.startswith("backfill"):
        first, last = partitions.split("...")
        where = f" WHERE updated_at >= '{first}' AND updated_at < date('{last}', '+1 day')"
    ogr2ogr(workdir / "geo.gpkg", "GPKG", source, where, "-a_srs", "EPSG:2286")
    ogr2ogr(workdir / "parcels.geojson", "GeoJSON", source, where, "-s_srs", "EPSG:2286",
            "-t_srs", "EPSG:4326", "-lco", "RFC7946=YES")
