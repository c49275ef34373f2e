"""Checks a county GIS analyst would run by hand on the published parcels, shown in the UI
after every run that writes them: the outputs hold the same parcels, every parcel is
numbered, the source's parcels are all published or rejected (reconciliation, after each
sync and each delete check), and per partition the run's outlines are valid polygons in the
source's CRS (blocking) and its GeoJSON files are WGS 84. (One row per id needs no check: each
output's storage enforces it, a primary key in SQLite and a unique index in the GeoPackage.)

They read the current state the outputs hold (ids and parcel numbers only, in chunks, kept as
integer indexes; the geometry checks only the run's windows) and the source's keys only (an
in-range flag computed by the database), so a check never holds the table; the county-wide
ones cost about 2.5 s per million parcels, after every sync (README, Performance). A failure
names how many parcels and a sample of their ids.
"""

from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pandas as pd
import pyogrio
import shapely
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    ResourceParam,
    TimeWindow,
    asset_check,
    multi_asset_check,
)

from countysync_assets.assets.asset_metadata import where_stored
from countysync_assets.assets.deleted_parcels import TARGETS
from countysync_assets.assets.master_parcels import SYNCED
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.partitions import PARTITIONS, rows_window
from countysync_assets.resources.master_parcels_source import (
    EARLIEST_CURSOR,
    MasterParcelsSource,
)

SAMPLE = 10  # ids listed in a failing check's metadata
LAYER = TARGETS["parcel_geometry"]
POLYGONS = ["Polygon", "MultiPolygon"]


def _chunks(io_manager: ExportIOManager, name: str, columns: list[str]
            ) -> Iterator[pd.DataFrame]:
    """``columns`` of the rows the asset's current state holds, chunk by chunk."""
    return io_manager.iter_columns(name, where_stored(SYNCED[name]), columns)


def _ids(chunks: list[pd.Series]) -> pd.Index:
    """One index of the ids in ``chunks`` (8 bytes a parcel, set operations in C)."""
    return pd.Index(np.concatenate([c.to_numpy() for c in chunks]) if chunks else [])


def _held_ids(io_manager: ExportIOManager, name: str) -> pd.Index:
    return _ids([chunk["id"] for chunk in _chunks(io_manager, name, ["id"])])


def _sample(ids: pd.Series) -> str:
    return ", ".join(str(i) for i in ids.head(SAMPLE)) + (", ..." if len(ids) > SAMPLE else "")


@multi_asset_check(
    specs=[AssetCheckSpec("outputs_agree", asset="working",
                          additional_deps=["stats", "parcel_geometry", "geometry_rejects"],
                          description="working, stats and the parcel layer hold the same "
                          "parcels (a parcel missing from the layer is listed in "
                          "geometry_rejects)."),
           AssetCheckSpec("parcel_id_present", asset="working",
                          description="Every published parcel has a parcel number."),
           AssetCheckSpec("source_rows_published", asset="working",
                          description="Row-count reconciliation after each sync: every source "
                          "parcel up to the newest synced change is in working or "
                          "parcel_rejects, and working holds no parcel the source deleted (a "
                          "warning until the delete check runs).")])
def published_parcels_checks(source: MasterParcelsSource,
                             io_manager: ResourceParam[ExportIOManager]
                             ) -> Iterator[AssetCheckResult]:
    """The three checks from one read of working's ids and parcel numbers."""
    ids, blank = [], []
    for chunk in _chunks(io_manager, "working", ["id", "parcel_id"]):
        ids.append(chunk["id"])
        blank.append(chunk["id"][chunk["parcel_id"].isna()
                                 | (chunk["parcel_id"].astype(str).str.strip() == "")])
    working = _ids(ids)
    # outputs COUNTYSYNC_FORMATS does not keep (or keeps only as files) are not compared
    kept = [name for name in ("stats", "parcel_geometry")
            if io_manager.holds_state(name, where_stored(SYNCED[name]))]
    differ = pd.Series(working.symmetric_difference(_held_ids(io_manager, "stats"))
                       if "stats" in kept else [], dtype=object)
    unmapped = pd.Series(working.difference(_held_ids(io_manager, "parcel_geometry"))
                         .difference(_held_ids(io_manager, "geometry_rejects"))
                         if "parcel_geometry" in kept else [], dtype=object)
    yield AssetCheckResult(check_name="outputs_agree", passed=differ.empty and unmapped.empty,
                           metadata={"parcels": len(working),
                                     "compared_with": ", ".join(kept) or "nothing kept",
                                     "in_working_or_stats_only": len(differ),
                                     "sample_ids_working_vs_stats": _sample(differ),
                                     "not_in_layer_nor_rejected": len(unmapped),
                                     "sample_ids_not_in_layer": _sample(unmapped)})
    blank_ids = pd.Series(_ids(blank))
    yield AssetCheckResult(check_name="parcel_id_present", passed=blank_ids.empty, metadata={
        "parcels": len(working), "parcels_without_parcel_id": len(blank_ids),
        "sample_ids": _sample(blank_ids)})
    yield _reconcile(io_manager, source, working, "source_rows_published")


def _run_window(context: AssetCheckExecutionContext) -> TimeWindow:
    """The rows the run published: its partitions' windows (the first one with the
    baseline)."""
    return rows_window(PARTITIONS, context.partition_time_window)


@asset_check(asset="parcel_geometry", partitions_def=PARTITIONS, blocking=True,
             description="Every outline the run published is a valid polygon in the layer's "
             "CRS, the source's EPSG code (blocking: the map is not built from a bad layer).")
def geometry_valid_in_crs(context: AssetCheckExecutionContext, source: MasterParcelsSource,
                          io_manager: ResourceParam[ExportIOManager]) -> AssetCheckResult:
    expected, crs, rows = source.resolve_srid(), None, 0
    invalid, not_polygon = [], []
    for chunk in io_manager.iter_features("parcel_geometry", LAYER, ["id"],
                                          window=_run_window(context)):
        crs, rows = chunk.crs.to_epsg() if chunk.crs else None, rows + len(chunk)
        shapes = chunk.geometry.values
        invalid.append(chunk["id"][~shapely.is_valid(shapes)])
        not_polygon.append(chunk["id"][~chunk.geometry.geom_type.isin(POLYGONS)])
    invalid_ids = pd.concat(invalid) if invalid else pd.Series([], dtype="int64")
    other_ids = pd.concat(not_polygon) if not_polygon else pd.Series([], dtype="int64")
    in_crs = rows == 0 or crs == expected
    return AssetCheckResult(
        passed=bool(in_crs and invalid_ids.empty and other_ids.empty),
        metadata={"outlines_checked": rows, "layer_epsg": crs or 0, "source_epsg": expected,
                  "invalid": len(invalid_ids), "sample_invalid_ids": _sample(invalid_ids),
                  "not_polygons": len(other_ids), "sample_not_polygon_ids": _sample(other_ids)})


@asset_check(asset="parcel_geometry", partitions_def=PARTITIONS,
             description="The run's GeoJSON files open in GDAL, in WGS 84 (RFC 7946), every "
             "coordinate within longitude -180..180 and latitude -90..90.")
def geojson_in_wgs84(context: AssetCheckExecutionContext,
                     io_manager: ResourceParam[ExportIOManager]) -> AssetCheckResult:
    files = io_manager.files_for("parcel_geometry", LAYER, "geojson", context.partition_keys)
    features, wrong_crs, outside = 0, [], []
    for path in files:
        if not path.exists():
            wrong_crs.append(f"{path.name} (missing)")
            continue
        info = pyogrio.read_info(path)
        features += info["features"]
        if info["features"] and info["crs"] != "EPSG:4326":
            wrong_crs.append(f"{path.name} ({info['crs']})")
        bounds = pyogrio.read_bounds(path)[1]  # xmin, ymin, xmax, ymax per feature
        if bounds.size and not ((bounds[[0, 2]] >= -180) & (bounds[[0, 2]] <= 180)
                                & (bounds[[1, 3]] >= -90) & (bounds[[1, 3]] <= 90)).all():
            outside.append(path.name)
    return AssetCheckResult(
        passed=not wrong_crs and not outside,
        metadata={"files": len(files), "features": features,
                  "files_not_wgs84": ", ".join(wrong_crs[:SAMPLE]),
                  "files_out_of_range": ", ".join(outside[:SAMPLE])})


def _reconcile(io_manager: ExportIOManager, source: MasterParcelsSource,
               published: pd.Index, check_name: str | None = None) -> AssetCheckResult:
    """Source ids against what the outputs hold (``published``: working's ids): every parcel
    the source had by the newest sync is published or listed in parcel_rejects, and nothing
    published is gone from the source (a pending delete, a warning until the delete check
    removes it)."""
    newest = io_manager.newest_synced({"working": SYNCED["working"]})
    # due: the rows a window holds (unplaced ones are listed in unplaced_parcels) up to the
    # newest synced change
    census = source.key_census(EARLIEST_CURSOR, newest + timedelta(microseconds=1)
                               if newest else EARLIEST_CURSOR)
    in_source, due = pd.Index(census["id"]), pd.Index(census["id"][census["inside"]])
    rejected = pd.Index(pd.to_numeric(_ids([c["id"] for c in _chunks(
        io_manager, "parcel_rejects", ["id"])]), errors="coerce")).dropna()
    missing = pd.Series(due.difference(published).difference(rejected))
    gone = pd.Series(published.difference(in_source))
    return AssetCheckResult(
        check_name=check_name, passed=missing.empty and gone.empty,
        severity=AssetCheckSeverity.ERROR if len(missing) else AssetCheckSeverity.WARN,
        metadata={"source_parcels": len(in_source), "published_parcels": len(published),
                  "rejected_parcels": len(rejected),
                  "synced_through": newest.isoformat() if newest else "",
                  "missing_from_outputs": len(missing), "sample_missing_ids": _sample(missing),
                  "deleted_in_source_still_published": len(gone),
                  "sample_deleted_ids": _sample(gone)})


@asset_check(asset="deleted_parcels", name="source_rows_published",
             description="Row-count reconciliation after the delete check: the outputs hold "
             "exactly the source's parcels (published or rejected), none it deleted.")
def source_rows_published_after_deletes(source: MasterParcelsSource,
                                        io_manager: ResourceParam[ExportIOManager]
                                        ) -> AssetCheckResult:
    return _reconcile(io_manager, source, _held_ids(io_manager, "working"))
