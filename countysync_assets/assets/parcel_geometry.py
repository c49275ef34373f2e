"""``parcel_geometry``: parcel boundaries as a GeoDataFrame in the source's native CRS.

Geometry is parsed with vectorized shapely. Invalid polygons are repaired with ``make_valid``
and counted; rows whose geometry cannot be used (missing, unparseable, not a polygon, another
SRID) are kept out and recorded with their reason in ``geometry_rejects``. A parcel is in one
of the two, as its current version decides: a fixed geometry leaves ``geometry_rejects``, a
broken one leaves the GeoPackage layer (its old boundary would show stale attributes).
"""

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from dagster import AssetSpec

from countysync_assets.assets.asset_metadata import (
    GROUP,
    parcel_columns,
    storage_metadata,
    where_stored,
)
from countysync_assets.io_managers.format_io_manager import GPKG_LAYER, SUPERSEDES
from countysync_assets.io_managers.publishing import as_multipolygons
from countysync_assets.resources.master_parcels_source import SRID_COLUMN

COLUMNS = {
    **parcel_columns("id", "parcel_id", "owner", "situs_address", "use_code", "acres",
                     "assessed_value", "updated_at"),
    "geometry": "geometry: parcel boundary, MultiPolygon in the source CRS",
}
REJECT_COLUMNS = {
    **parcel_columns("id", "parcel_id", "updated_at"),
    "reason": "string: why the geometry was kept out",
}
GEOMETRY_STORAGE = {**storage_metadata(COLUMNS, ["gpkg", "geojson"]), GPKG_LAYER: "parcels"}
REJECTS_STORAGE = storage_metadata(REJECT_COLUMNS, ["sqlite", "csv"],
                                   sqlite_db="rejects_db.sqlite")


def parse_geometry(raw: pd.Series) -> np.ndarray:
    """Shapely geometries from WKT text or WKB bytes, each value by its own kind (a table may
    mix them); None where a value cannot be parsed."""
    values = raw.to_numpy(dtype=object)
    binary = np.array([isinstance(v, bytes | bytearray | memoryview) for v in values], bool)
    text = np.array([isinstance(v, str) for v in values], bool)
    geometry = np.full(len(values), None, dtype=object)
    with np.errstate(invalid="ignore"):  # unparseable values are None, and rejected
        geometry[binary] = shapely.from_wkb([bytes(v) for v in values[binary]],
                                            on_invalid="ignore")
        geometry[text] = shapely.from_wkt(values[text], on_invalid="ignore")
    return geometry


def _parse_error(value: object) -> str:
    """The parser's own message for one value that failed (called for rejects only)."""
    try:
        if isinstance(value, bytes | bytearray | memoryview):
            shapely.from_wkb(bytes(value), on_invalid="raise")
        elif isinstance(value, str):
            shapely.from_wkt(value, on_invalid="raise")
        else:
            return f"a {type(value).__name__} is neither WKT text nor WKB bytes"
    except shapely.errors.GEOSException as err:
        return str(err)
    return "unreadable"


def _not_finite(geometry: np.ndarray) -> np.ndarray:
    """Which geometries have a NaN or infinite coordinate (make_valid would invent a shape)."""
    coords, index = shapely.get_coordinates(geometry, return_index=True)  # x, y (Z is dropped)
    bad = np.zeros(len(geometry), dtype=bool)
    bad[index[~np.isfinite(coords).all(axis=1)]] = True
    return bad


def _outside_area(geometry: np.ndarray, srid: int | None) -> np.ndarray:
    """Which geometries lie outside the area the CRS is defined for, by more than a tenth of its
    size: lon/lat degrees or another CRS's numbers stored under this SRID."""
    outside = np.zeros(len(geometry), dtype=bool)
    area = pyproj.CRS.from_epsg(srid).area_of_use if srid else None
    if area is None or not len(geometry):
        return outside
    crs_bounds = pyproj.Transformer.from_crs(4326, srid, always_xy=True).transform_bounds(
        *area.bounds)
    minx, miny, maxx, maxy = crs_bounds
    margin_x, margin_y = (maxx - minx) / 10, (maxy - miny) / 10
    bounds = shapely.bounds(geometry)
    with np.errstate(invalid="ignore"):
        outside = (bounds[:, 0] < minx - margin_x) | (bounds[:, 2] > maxx + margin_x) | \
            (bounds[:, 1] < miny - margin_y) | (bounds[:, 3] > maxy + margin_y)
    return outside & ~np.isnan(bounds[:, 0])


def clean_geometry(frame: pd.DataFrame) -> tuple[gpd.GeoDataFrame, pd.DataFrame, dict]:
    """(valid parcels, rejects with reasons, counts of repaired and 3-D geometries).

    Kept out, with the reason: no geometry, unparseable, not a polygon, empty, another SRID,
    a NaN or infinite coordinate, outside the CRS's area, invalid beyond repair. Changed,
    and counted: invalid polygons repaired with ``make_valid``; Z values dropped (the layers
    are 2-D). Every outline a MultiPolygon, the layers' one type (once here, not in each
    writer)."""
    geometry = parse_geometry(frame["geometry"])
    srids = frame[SRID_COLUMN]
    srid = int(srids.mode().iloc[0]) if srids.notna().any() else None
    reason = pd.Series(None, index=frame.index, dtype=object)
    missing = frame["geometry"].isna().to_numpy()
    unparsed = pd.isna(geometry) & ~missing
    reason[missing] = "no geometry (NULL)"
    for position in np.flatnonzero(unparsed):
        reason.iloc[position] = "cannot parse geometry: " + _parse_error(
            frame["geometry"].iloc[position])
    parsed = ~pd.isna(geometry)
    kinds = shapely.get_type_id(geometry)
    not_polygon = parsed & ~np.isin(kinds, [3, 6])  # 3 Polygon, 6 MultiPolygon
    reason[not_polygon] = [f"not a polygon ({g.geom_type})" for g in geometry[not_polygon]]
    empty = parsed & ~not_polygon & shapely.is_empty(geometry)
    reason[empty] = "empty geometry"
    not_finite = reason.isna().to_numpy() & parsed & _not_finite(geometry)
    reason[not_finite] = "a coordinate is NaN or infinite"
    other_srid = (srids.notna() & (srids != srid)).to_numpy() & reason.isna().to_numpy()
    reason[other_srid] = [f"SRID {int(s)} differs from the layer's EPSG:{srid}"
                          for s in srids[other_srid]]
    far = reason.isna().to_numpy() & parsed & _outside_area(geometry, srid)
    reason[far] = [f"lies outside the area EPSG:{srid} covers (bounds {_rounded(g)}): "
                   "coordinates of another CRS, such as longitude/latitude?"
                   for g in geometry[far]]
    usable = reason.isna().to_numpy()
    three_d = usable & shapely.has_z(geometry)
    geometry[three_d] = shapely.force_2d(geometry[three_d])
    invalid = usable & ~shapely.is_valid(geometry)
    repaired = geometry.copy()
    repaired[invalid] = shapely.make_valid(geometry[invalid], method="structure",
                                           keep_collapsed=False)
    collapsed = invalid & (shapely.is_empty(repaired) | ~np.isin(
        shapely.get_type_id(repaired), [3, 6]))
    reason[collapsed] = "invalid geometry that repair reduces to no area"
    usable &= ~collapsed
    parcels = gpd.GeoDataFrame(
        frame.loc[usable, [c for c in COLUMNS if c != "geometry"]],
        geometry=as_multipolygons(repaired[usable]), crs=f"EPSG:{srid}" if srid else None,
    ).reset_index(drop=True)
    rejects = frame.loc[~usable, ["id", "parcel_id", "updated_at"]].assign(
        reason=reason[~usable]).reset_index(drop=True)
    return parcels, rejects, {"repaired_geometries": int((invalid & ~collapsed).sum()),
                              "z_dropped": int(three_d.sum())}


def _rounded(geometry: object) -> str:
    return ", ".join(f"{v:.6g}" for v in shapely.bounds(geometry))


SPEC = AssetSpec(
    "parcel_geometry",
    deps=["master_parcels"],
    group_name=GROUP,
    kinds={"geopandas", "gpkg", "geojson"},
    # a parcel is in the layer or in the rejects, as its current version decides
    metadata={**GEOMETRY_STORAGE, SUPERSEDES: {"geometry_rejects": where_stored(REJECTS_STORAGE)}},
    description="Parcel boundaries in the source CRS (State Plane): geo_db.gpkg layer parcels "
    "holds the merged current state, GeoJSON (WGS 84, RFC 7946) one file per window.",
)
REJECTS_SPEC = AssetSpec(
    "geometry_rejects",
    deps=["master_parcels"],
    group_name=GROUP,
    kinds={"pandas", "sqlite", "csv"},
    metadata={**REJECTS_STORAGE, SUPERSEDES: {"parcel_geometry": where_stored(GEOMETRY_STORAGE)}},
    description="Parcels whose geometry was kept out of parcel_geometry, with why.",
)
