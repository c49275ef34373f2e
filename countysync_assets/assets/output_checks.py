"""Checks a county GIS analyst would run by hand on the published parcels, shown in the UI
after every run that writes them: the outputs hold the same parcels, every parcel is
numbered, the source's parcels are all published or rejected (reconciliation, after each
sync and each delete check), and the run's outlines are valid polygons in the source's CRS
(blocking) and its GeoJSON files are WGS 84. (One row per id needs no check: each output's
storage enforces it, a primary key in SQLite and a unique index in the GeoPackage.)

After a sync they compare ids in the run's windows (index ranges: the cost follows the rows
synced, not the county) and the county by counts (each output's rows, the source's keys
counted by the database); only when the counts show parcels missing do they read every id, to
name them (parcels deleted in the source are counted; the delete check names them). The
delete check's reconciliation (nightly) compares every id. A failure names how
many parcels and a sample of their ids. The five checks of a sync's partitions are evaluated
in one step (``published_outputs_checks``; each can still be run alone from the UI).
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

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
COUNTY = "every parcel by id"
RUN = "the run's windows by id, the county by counts"


def _chunks(io_manager: ExportIOManager, name: str, columns: list[str],
            window: TimeWindow | None = None) -> Iterator[pd.DataFrame]:
    """``columns`` of the rows the asset's current state holds (last changed in ``window``,
    if given), chunk by chunk."""
    return io_manager.iter_columns(name, where_stored(SYNCED[name]), columns, window)


def _ids(chunks: list[pd.Series]) -> pd.Index:
    """One index of the ids in ``chunks`` (8 bytes a parcel, set operations in C)."""
    return pd.Index(np.concatenate([c.to_numpy() for c in chunks]) if chunks else [])


def _held_ids(io_manager: ExportIOManager, name: str, window: TimeWindow | None = None
              ) -> pd.Index:
    return _ids([chunk["id"] for chunk in _chunks(io_manager, name, ["id"], window)])


def _count(io_manager: ExportIOManager, name: str) -> int:
    return io_manager.count_rows(name, where_stored(SYNCED[name]))


def _sample(ids: pd.Series) -> str:
    return ", ".join(str(i) for i in ids.head(SAMPLE)) + (", ..." if len(ids) > SAMPLE else "")


def _run_window(context: AssetCheckExecutionContext) -> TimeWindow:
    """The rows the run published: its partitions' windows (the first one with the
    baseline)."""
    return rows_window(PARTITIONS, context.partition_time_window)


def outputs_agree(context: AssetCheckExecutionContext, source: MasterParcelsSource,
                  io_manager: ExportIOManager) -> AssetCheckResult:
    """working, stats and the layer (or geometry_rejects) hold the same parcels."""
    # outputs COUNTYSYNC_FORMATS does not keep (or keeps only as files) are not compared
    kept = [name for name in ("stats", "parcel_geometry")
            if io_manager.holds_state(name, where_stored(SYNCED[name]))]
    mapped = "parcel_geometry" in kept  # then each parcel is in the layer or geometry_rejects
    counts = {name: _count(io_manager, name)
              for name in ["working", *kept, *(["geometry_rejects"] if mapped else [])]}
    agree = (counts.get("stats", counts["working"]) == counts["working"]
             and (not mapped or counts["parcel_geometry"] + counts["geometry_rejects"]
                  == counts["working"]))
    window = _run_window(context) if agree else None  # else every id, to name the parcels
    working = _held_ids(io_manager, "working", window)
    differ = pd.Series(working.symmetric_difference(_held_ids(io_manager, "stats", window))
                       if "stats" in kept else [], dtype=object)
    unmapped = pd.Series(working.difference(_held_ids(io_manager, "parcel_geometry", window))
                         .difference(_held_ids(io_manager, "geometry_rejects", window))
                         if mapped else [], dtype=object)
    return AssetCheckResult(passed=agree and differ.empty and unmapped.empty, metadata={
        "parcels": counts["working"], "compared_with": ", ".join(kept) or "nothing kept",
        "checked": RUN if agree else COUNTY, "parcels_compared_by_id": len(working),
        **{f"rows_{name}": count for name, count in counts.items()},
        "in_working_or_stats_only": len(differ), "sample_ids_working_vs_stats": _sample(differ),
        "not_in_layer_nor_rejected": len(unmapped),
        "sample_ids_not_in_layer": _sample(unmapped)})


def parcel_id_present(context: AssetCheckExecutionContext, source: MasterParcelsSource,
                      io_manager: ExportIOManager) -> AssetCheckResult:
    """Every parcel of the run's windows has a parcel number."""
    rows, blank = 0, []
    for chunk in _chunks(io_manager, "working", ["id", "parcel_id"], _run_window(context)):
        rows += len(chunk)
        blank.append(chunk["id"][chunk["parcel_id"].isna()
                                 | (chunk["parcel_id"].astype(str).str.strip() == "")])
    blank_ids = pd.Series(_ids(blank))
    return AssetCheckResult(passed=blank_ids.empty, metadata={
        "parcels_checked": rows, "parcels_without_parcel_id": len(blank_ids),
        "sample_ids": _sample(blank_ids)})


def source_rows_published(context: AssetCheckExecutionContext, source: MasterParcelsSource,
                          io_manager: ExportIOManager) -> AssetCheckResult:
    """Every source parcel up to the newest synced change is published or rejected."""
    until = _synced_until(io_manager)
    in_source, due = source.key_counts(until)
    published_count, rejected_count = (_count(io_manager, "working"),
                                       _count(io_manager, "parcel_rejects"))
    if published_count + rejected_count < due:  # a parcel missing for sure: name them all
        return _reconcile(io_manager, source, _held_ids(io_manager, "working"))
    window = _run_window(context)
    synced = (source.key_census(window.start, min(window.end, until), only_inside=True)["id"]
              if window.start < until else [])
    published = _held_ids(io_manager, "working", window)
    missing = pd.Series(pd.Index(synced).difference(published)
                        .difference(_rejected_ids(io_manager)))
    # changed in the source since, or deleted there
    moved = published.difference(pd.Index(synced)).tolist()
    gone = pd.Series(pd.Index(moved).difference(
        source.rows_with_keys(moved, columns=[], outlines=False)[source.key_column]))
    # more held than the source has: deletes the nightly delete check will remove (and name;
    # naming them here would read every id after every sync)
    deleted = max(len(gone), published_count + rejected_count - in_source)
    return _reconciled(missing, gone, {
        "checked": RUN, "source_parcels": in_source, "published_parcels": published_count,
        "rejected_parcels": rejected_count, "synced_through": _synced_text(until)}, deleted)


def _synced_until(io_manager: ExportIOManager) -> datetime:
    """Just after the newest change the outputs hold (1970 if none): what a sync has read."""
    newest = io_manager.newest_synced({"working": SYNCED["working"]})
    return newest + timedelta(microseconds=1) if newest else EARLIEST_CURSOR


def _synced_text(until: datetime) -> str:
    return "" if until == EARLIEST_CURSOR else (until - timedelta(microseconds=1)).isoformat()


def _rejected_ids(io_manager: ExportIOManager) -> pd.Index:
    """The numeric ids parcel_rejects lists (a key that is not a number is in no output)."""
    return pd.Index(pd.to_numeric(_held_ids(io_manager, "parcel_rejects"),
                                  errors="coerce")).dropna()


def _reconciled(missing: pd.Series, gone: pd.Series, metadata: dict,
                deleted: int | None = None) -> AssetCheckResult:
    """The reconciliation's result: missing parcels an error, deleted ones (``gone``, or
    ``deleted`` where only counted) a warning."""
    deleted = len(gone) if deleted is None else deleted
    return AssetCheckResult(
        check_name="source_rows_published", passed=missing.empty and not deleted,
        severity=AssetCheckSeverity.ERROR if len(missing) else AssetCheckSeverity.WARN,
        metadata={**metadata, "missing_from_outputs": len(missing),
                  "sample_missing_ids": _sample(missing),
                  "deleted_in_source_still_published": deleted,
                  "sample_deleted_ids": _sample(gone) if len(gone) or not deleted
                  else "listed in deleted_parcels by the next delete check"})


def geometry_valid_in_crs(context: AssetCheckExecutionContext, source: MasterParcelsSource,
                          io_manager: ExportIOManager) -> AssetCheckResult:
    """The run's outlines are valid polygons in the source's CRS."""
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


def geojson_in_wgs84(context: AssetCheckExecutionContext, source: MasterParcelsSource,
                     io_manager: ExportIOManager) -> AssetCheckResult:
    """The run's GeoJSON files are WGS 84, every coordinate in range."""
    files = io_manager.files_for("parcel_geometry", LAYER, "geojson", context.partition_keys)
    features, wrong_crs, outside = 0, [], []
    for path in files:
        if not path.exists():
            wrong_crs.append(f"{path.name} (missing)")
            continue
        # every coordinate is within range when the file's extent is (GDAL reads the file
        # once for the count and the extent; per-feature bounds took twice as long again)
        info = pyogrio.read_info(path, force_feature_count=True, force_total_bounds=True)
        features += info["features"]
        if info["features"] and info["crs"] != "EPSG:4326":
            wrong_crs.append(f"{path.name} ({info['crs']})")
        xmin, ymin, xmax, ymax = info["total_bounds"] or (0, 0, 0, 0)  # none: no geometry
        if not (-180 <= xmin <= xmax <= 180 and -90 <= ymin <= ymax <= 90):
            outside.append(path.name)
    return AssetCheckResult(
        passed=not wrong_crs and not outside,
        metadata={"files": len(files), "features": features,
                  "files_not_wgs84": ", ".join(wrong_crs[:SAMPLE]),
                  "files_out_of_range": ", ".join(outside[:SAMPLE])})


def _reconcile(io_manager: ExportIOManager, source: MasterParcelsSource,
               published: pd.Index) -> AssetCheckResult:
    """Every source id against what the outputs hold (``published``: working's ids): every
    parcel the source had by the newest sync is published or listed in parcel_rejects, and
    nothing published is gone from the source (a pending delete, a warning until the delete
    check removes it)."""
    until = _synced_until(io_manager)
    # due: the rows a window holds (unplaced ones are listed in unplaced_parcels) up to the
    # newest synced change
    census = source.key_census(EARLIEST_CURSOR, until)
    in_source, due = pd.Index(census["id"]), pd.Index(census["id"][census["inside"]])
    rejected = _rejected_ids(io_manager)
    return _reconciled(pd.Series(due.difference(published).difference(rejected)),
                       pd.Series(published.difference(in_source)), {
        "checked": COUNTY, "source_parcels": len(in_source), "published_parcels": len(published),
        "rejected_parcels": len(rejected), "synced_through": _synced_text(until)})


@asset_check(asset="deleted_parcels", name="source_rows_published",
             description="Row-count reconciliation after the delete check: the outputs hold "
             "exactly the source's parcels (published or rejected), none it deleted.")
def source_rows_published_after_deletes(source: MasterParcelsSource,
                                        io_manager: ResourceParam[ExportIOManager]
                                        ) -> AssetCheckResult:
    return _reconcile(io_manager, source, _held_ids(io_manager, "working"))


# each check of a sync's partitions with what it runs
CHECKS = [
    (AssetCheckSpec(
        "outputs_agree", asset="working", partitions_def=PARTITIONS,
        additional_deps=["stats", "parcel_geometry", "geometry_rejects"],
        description="working, stats and the parcel layer hold the same parcels (a parcel "
        "missing from the layer is listed in geometry_rejects): the run's by id, the county's "
        "by count."), outputs_agree),
    (AssetCheckSpec(
        "parcel_id_present", asset="working", partitions_def=PARTITIONS,
        description="Every parcel the run published has a parcel number."), parcel_id_present),
    (AssetCheckSpec(
        "source_rows_published", asset="working", partitions_def=PARTITIONS,
        description="Reconciliation after each sync: every source parcel up to the newest "
        "synced change is in working or parcel_rejects, and working holds no parcel the source "
        "deleted (a warning until the delete check removes and names them); the run's windows "
        "by id, the county by counts."), source_rows_published),
    (AssetCheckSpec(
        "geometry_valid_in_crs", asset="parcel_geometry", partitions_def=PARTITIONS,
        blocking=True,
        description="Every outline the run published is a valid polygon in the layer's CRS, "
        "the source's EPSG code (blocking: the map is not built from a bad layer)."),
     geometry_valid_in_crs),
    (AssetCheckSpec(
        "geojson_in_wgs84", asset="parcel_geometry", partitions_def=PARTITIONS,
        description="The run's GeoJSON files open in GDAL, in WGS 84 (RFC 7946), every "
        "coordinate within longitude -180..180 and latitude -90..90."), geojson_in_wgs84),
]


@multi_asset_check(specs=[spec for spec, _ in CHECKS], can_subset=True,
                   name="published_outputs_checks",
                   description="The checks after a sync, of the run's partitions.")
def published_outputs_checks(context: AssetCheckExecutionContext, source: MasterParcelsSource,
                             io_manager: ResourceParam[ExportIOManager]
                             ) -> Iterator[AssetCheckResult]:
    """Each selected check, in one step: a step of its own each cost Dagster a start, an
    output and a success event, committed one by one (~0.3 s of every sync). The checks run
    on two threads, the layer's first: GDAL and GEOS, which read and test the geo files, let
    go of Python's lock, so after a first sync GDAL reads the GeoJSON on one core while the
    other checks run on the other (at 1,000,000 parcels the GeoJSON alone takes ~6 s)."""
    selected = [(spec, check) for spec, check in CHECKS
                if spec.key in context.selected_asset_check_keys]
    layer_first = sorted(selected, key=lambda pair: pair[0].asset_key.path != ["parcel_geometry"])
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="checks") as pool:
        running = {spec.key: pool.submit(check, context, source, io_manager)
                   for spec, check in layer_first}
        results = {key: future.result() for key, future in running.items()}
    for spec, _ in selected:
        yield results[spec.key]._replace(asset_key=spec.asset_key, check_name=spec.name)
