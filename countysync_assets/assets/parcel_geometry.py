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
import shapely
from dagster import AssetExecutionContext, AssetOut, BackfillPolicy, Output, multi_asset

from countysync_assets.assets.asset_metadata import (
    GROUP,
    parcel_columns,
    storage_metadata,
    where_stored,
    window_metadata,
)
from countysync_assets.io_managers.format_io_manager import GPKG_LAYER, SUPERSEDES
from countysync_assets.partitions import PARTITIONS
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
    """Shapely geometries from WKT text or WKB bytes; None where a value cannot be parsed."""
    present = raw.dropna()
    values = raw.to_numpy(dtype=object)
    if len(present) and isinstance(present.iloc[0], bytes | bytearray | memoryview):
        return shapely.from_wkb(values, on_invalid="ignore")
    return shapely.from_wkt(values, on_invalid="ignore")


def _parse_error(value: object) -> str:
    """The parser's own message for one value that failed (called for rejects only)."""
    try:
        if isinstance(value, bytes | bytearray | memoryview):
            shapely.from_wkb(value, on_invalid="raise")
        else:
            shapely.from_wkt(value, on_invalid="raise")
    except shapely.errors.GEOSException as err:
        return str(err)
    return "unreadable"


def clean_geometry(frame: pd.DataFrame) -> tuple[gpd.GeoDataFrame, pd.DataFrame, int]:
    """(valid parcels, rejects with reasons, number of repaired geometries)."""
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
    other_srid = (srids.notna() & (srids != srid)).to_numpy() & reason.isna().to_numpy()
    reason[other_srid] = [f"SRID {int(s)} differs from the layer's EPSG:{srid}"
                          for s in srids[other_srid]]
    usable = reason.isna().to_numpy()
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
        geometry=repaired[usable], crs=f"EPSG:{srid}" if srid else None,
    ).reset_index(drop=True)
    rejects = frame.loc[~usable, ["id", "parcel_id", "updated_at"]].assign(
        reason=reason[~usable]).reset_index(drop=True)
    return parcels, rejects, int((invalid & ~collapsed).sum())


@multi_asset(
    outs={
        "parcel_geometry": AssetOut(
            description="Parcel boundaries in the source CRS (State Plane): geo_db.gpkg layer "
            "parcels holds the merged current state, GeoJSON (WGS 84) one file per "
            "window.",
            kinds={"geopandas", "gpkg", "geojson"},
            # a parcel is in the layer or in the rejects, as its current version decides
            metadata={**GEOMETRY_STORAGE,
                      SUPERSEDES: {"geometry_rejects": where_stored(REJECTS_STORAGE)}},
        ),
        "geometry_rejects": AssetOut(
            description="Parcels whose geometry was kept out of parcel_geometry, with why.",
            kinds={"pandas", "sqlite", "csv"},
            metadata={**REJECTS_STORAGE,
                      SUPERSEDES: {"parcel_geometry": where_stored(GEOMETRY_STORAGE)}},
        ),
    },
    partitions_def=PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
)
def parcel_geometry(context: AssetExecutionContext, master_parcels: pd.DataFrame):
    parcels, rejects, repaired = clean_geometry(master_parcels)
    if len(rejects):
        context.log.warning(
            f"{len(rejects)} parcel(s) kept out of parcel_geometry; see geometry_rejects "
            f"(e.g. id {rejects['id'].iloc[0]}: {rejects['reason'].iloc[0]})."
        )
    if repaired:
        context.log.info(f"Repaired {repaired} invalid geometries with make_valid.")
    yield Output(parcels, output_name="parcel_geometry", metadata={
        **window_metadata(parcels), "repaired_geometries": repaired,
        "rejected_rows": len(rejects), "crs": str(parcels.crs),
    })
    yield Output(rejects, output_name="geometry_rejects", metadata=window_metadata(rejects))
