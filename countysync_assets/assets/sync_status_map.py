"""``sync_status_map``: one self-contained web page that shows every parcel coloured by its
sync state, for the GIS desk to see at a glance where the published layer and the master table
disagree:

- green, synced: the layer holds the parcel as the source has it now;
- yellow, pending: the source changed it since the last sync, added it (not synced yet), or
  deleted it (the delete check removes it);
- red, error: the sync keeps it out (parcel_rejects, geometry_rejects, unplaced_parcels),
  with the reason in its popup.

Parcels are drawn from the current GeoPackage layer, simplified and in WGS 84; those the
layer does not hold (new, rejected) from the source where their geometry can be read. Leaflet
is inlined from the package (``maps/leaflet``, vendored from npm): the page opens from a file
share on a closed network. Written to ``<export_dir>/maps/sync_status.html`` by atomic
rename and rebuilt after the syncs by its own automation sensor.
"""

import filecmp
import json
import os
from importlib import resources
from pathlib import Path

import geopandas as gpd
import pandas as pd
import shapely
from dagster import (
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    Config,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
)
from pydantic import Field

from countysync_assets.assets.asset_metadata import where_stored
from countysync_assets.assets.automation import once_settled
from countysync_assets.assets.change_map import milliseconds
from countysync_assets.assets.deleted_parcels import TARGETS, UNPLACED_STORAGE
from countysync_assets.assets.master_parcels import REJECTS_STORAGE, SYNCED
from countysync_assets.assets.parcel_geometry import parse_geometry
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.io_managers.publishing import export_path, temp_sibling
from countysync_assets.resources.master_parcels_source import SRID_COLUMN, MasterParcelsSource

COLOURS = {"synced": "#1a9850", "pending": "#f2c200", "error": "#d73027"}
LAYER = TARGETS["parcel_geometry"]
# where the rows kept out of the outputs are listed, with their reason
REJECTED = {"parcel_rejects": where_stored(REJECTS_STORAGE),
            "geometry_rejects": where_stored(SYNCED["geometry_rejects"]),
            "unplaced_parcels": where_stored(UNPLACED_STORAGE)}


class StatusMapConfig(Config):
    """How much of the county the page draws."""

    simplify: float = Field(
        default=1.0, ge=0, description="Simplify outlines to this tolerance, in the layer's "
        "CRS units (US feet in State Plane): a smaller page, the same picture.")
    max_synced: int = Field(
        default=250_000, ge=0, description="Draw at most this many synced parcels (pending "
        "and error parcels are always drawn); the legend says how many were left out.")


def _rejected(io_manager: ExportIOManager) -> pd.Series:
    """The reason each rejected or unplaced parcel is kept out of the outputs, by id."""
    reasons = []
    for name, storage in REJECTED.items():
        for chunk in io_manager.iter_columns(name, storage, ["id", "reason"]):
            chunk = chunk.assign(id=pd.to_numeric(chunk["id"], errors="coerce")).dropna()
            reasons.append(chunk.assign(reason=f"{name}: " + chunk["reason"].astype(str)))
    if not reasons:
        return pd.Series([], dtype=object)
    rows = pd.concat(reasons, ignore_index=True).drop_duplicates("id")
    return rows.set_index(rows["id"].astype("int64"))["reason"]


def _features(parcels: gpd.GeoDataFrame, status, why, tolerance: float) -> list[dict]:
    """GeoJSON features in WGS 84 of ``parcels`` (id, parcel_id, geometry), simplified."""
    shapes = parcels.geometry.simplify(tolerance) if tolerance else parcels.geometry
    shapes = shapely.set_precision(shapes.to_crs(4326).values, 1e-6)  # ~0.1 m
    return [{"type": "Feature", "geometry": json.loads(shapely.to_geojson(shape)),
             "properties": {"id": int(i), "parcel_id": p if isinstance(p, str) else None,
                            "status": s, "why": w if isinstance(w, str) else None}}
            for i, p, s, w, shape in zip(parcels["id"], parcels["parcel_id"], status, why,
                                         shapes, strict=True) if shape is not None]


def page(parcels: list[dict], counts: dict[str, int], note: str) -> str:
    """The HTML page: Leaflet and the parcels inlined."""
    folder = resources.files("countysync_assets") / "maps"
    data = json.dumps({"parcels": {"type": "FeatureCollection", "features": parcels},
                       "colours": COLOURS, "counts": counts, "note": note},
                      separators=(",", ":"), allow_nan=False)
    data = data.replace("</", "<\\/")  # the data cannot end its <script> element
    return ((folder / "sync_status.html").read_text(encoding="utf-8")
            .replace("__LEAFLET_VERSION__", (folder / "leaflet" / "VERSION").read_text().strip())
            .replace("__LEAFLET_CSS__", (folder / "leaflet" / "leaflet.css").read_text())
            .replace("__LEAFLET_JS__", (folder / "leaflet" / "leaflet.js").read_text())
            .replace("__STATUS_JSON__", data))


@asset(
    deps=["parcel_geometry", "parcel_rejects", "geometry_rejects", "deleted_parcels"],
    # rebuilt when a sync or delete check changed the layer, once they are done
    automation_condition=once_settled(AutomationCondition.any_deps_updated()),
    group_name="maps",
    kinds={"html", "leaflet"},
    description="Every parcel coloured by sync state (green synced, yellow pending, red "
    "error) on one self-contained web page: maps/sync_status.html in the export folder, "
    "linked from each materialization. Rebuilt after the syncs.",
)
def sync_status_map(config: StatusMapConfig, source: MasterParcelsSource,
                    io_manager: ResourceParam[ExportIOManager]) -> MaterializeResult:
    in_source = source.changes_since(None)
    # a key that is no whole number (text, a fraction) is a reject no map can place
    keys = pd.to_numeric(in_source["id"], errors="coerce")
    whole = keys.notna() & (keys == keys.round())
    # one row per id, its newest version (a duplicated key is the sync's reject to report)
    in_source = in_source[whole].assign(id=keys[whole].astype("int64")) \
        .drop_duplicates("id", keep="last")
    current = pd.Series(milliseconds(in_source["updated_at"]), index=in_source["id"].to_numpy())
    rejected = _rejected(io_manager)
    features, counts, synced_drawn, in_layer = [], dict.fromkeys(COLOURS, 0), 0, []
    for chunk in io_manager.iter_features("parcel_geometry", LAYER,
                                          ["id", "parcel_id", "updated_at"]):
        now = current.reindex(chunk["id"].to_numpy()).to_numpy()
        synced = pd.Series(now == milliseconds(chunk["updated_at"]), index=chunk.index)
        status = synced.map({True: "synced", False: "pending"})
        why = pd.Series(None, index=chunk.index, dtype=object)
        why[~synced] = "changed in the source since the sync"
        why[pd.isna(now)] = "deleted from the source: the delete check removes it"
        counts["synced"] += int(synced.sum())
        counts["pending"] += int((~synced).sum())
        keep = ~synced | (synced.cumsum() <= config.max_synced - synced_drawn)
        synced_drawn += int((synced & keep).sum())
        features += _features(chunk[keep], status[keep], why[keep], config.simplify)
        in_layer.append(chunk["id"].to_numpy())

    # parcels the layer does not hold: new in the source, or kept out with a reason
    held_ids = pd.Index(pd.concat([pd.Series(ids) for ids in in_layer]) if in_layer else [])
    missing = in_source["id"][~in_source["id"].isin(held_ids)]
    status = pd.Series("pending", index=missing.to_numpy(), dtype=object)
    status[status.index.isin(rejected.index)] = "error"
    counts["pending"] += int((status == "pending").sum())
    # every parcel kept out with a reason, and the rows whose key is no whole number
    counts["error"] += len(rejected.index.difference(held_ids)) + int((~whole).sum())
    rows = source.rows_with_keys(missing.tolist(), columns=["parcel_id"])
    if len(rows):
        rows = rows.rename(columns={source.key_column: "id",
                                    source.geometry_column: "geometry"})
        shapes = gpd.GeoDataFrame(
            rows[["id", "parcel_id"]],
            geometry=gpd.GeoSeries(parse_geometry(rows["geometry"]),
                                   crs=int(rows[SRID_COLUMN].iloc[0])))
        outlines = shapes.geometry.values  # missing, empty or invalid: counted, not drawn
        shapes = shapes[shapely.is_valid(outlines) & ~shapely.is_empty(outlines)]
        why = rejected.reindex(shapes["id"]).fillna("new in the source, not synced yet")
        features += _features(shapes, status.reindex(shapes["id"]).to_numpy(),
                              why.to_numpy(), config.simplify)

    left_out = counts["synced"] - synced_drawn
    note = (f"{left_out:,} synced parcels not drawn (max_synced). " if left_out else "") + \
        "Parcels without a readable outline are counted, not drawn."
    path = export_path(io_manager.export_dir, "maps", "sync_status.html")
    temp = temp_sibling(path)
    try:
        temp.write_text(page(features, counts, note), encoding="utf-8")
        if not (path.is_file() and filecmp.cmp(temp, path, shallow=False)):
            os.replace(temp, path)  # an unchanged page is left as it is (folder mirrors)
    finally:
        temp.unlink(missing_ok=True)
    return MaterializeResult(metadata={
        "map": MetadataValue.url(Path(path).resolve().as_uri()),
        "map_path": MetadataValue.path(str(path)),
        **{f"{kind}_parcels": n for kind, n in counts.items()},
        "drawn_parcels": len(features),
        "page_bytes": path.stat().st_size,
    })


# RUNNING: the map is what the GIS desk looks at; it follows every sync on its own
status_map_follows_syncs = AutomationConditionSensorDefinition(
    "sync_status_map_follows_syncs", target=AssetSelection.assets("sync_status_map"),
    default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=300,
    description="Rebuilds sync_status_map after syncs and delete checks (at most every 5 "
    "minutes).")
