"""``parcel_sync``: one step that reads the window's changed rows once and writes every output
from the same batches, top to bottom:

    source batch -> row checks -> master_parcels (optional raw mirror)  | parcel_rejects
                               -> working, stats
                               -> geometry checks -> parcel_geometry    | geometry_rejects

Nothing is written and read back to make another output, and a run holds one batch of the
extract in memory (``COUNTYSYNC_SOURCE_BATCH_SIZE`` rows), however big the county. Every output
is staged as the batches come (open transactions, temp files) and published together at the
end, all or nothing. A run of many rows writes the GeoPackage and the CSV, JSON and GeoJSON
files in a second process, on the other core (``ParallelOutputs``). Each asset still reports
its own materialization and metadata.
"""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    multi_asset,
)

from countysync_assets.assets import master_parcels, parcel_geometry, stats, working
from countysync_assets.assets.asset_metadata import Tally
from countysync_assets.assets.change_map import ChangeMap, changes
from countysync_assets.assets.deleted_parcels import TARGETS
from countysync_assets.assets.frame_types import check_frame
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.io_managers.format_io_manager import OutputTarget
from countysync_assets.memory import give_back_freed_batches
from countysync_assets.partitions import PARTITIONS, rows_window
from countysync_assets.resources.master_parcels_source import MasterParcelsSource

SPECS = [master_parcels.SPEC, master_parcels.REJECTS_SPEC, working.SPEC, stats.SPEC,
         parcel_geometry.SPEC, parcel_geometry.REJECTS_SPEC]
TYPED = {"working": working.FRAME_TYPE, "stats": stats.FRAME_TYPE}


@multi_asset(
    specs=SPECS,
    partitions_def=PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    name="parcel_sync",
)
def parcel_sync(context: AssetExecutionContext, source: MasterParcelsSource,
                 io_manager: ResourceParam[ExportIOManager]):
    window = rows_window(PARTITIONS, context.partition_time_window)
    keys = context.partition_keys
    targets = [OutputTarget(spec.key.path[-1], dict(spec.metadata), context.run.run_id, keys,
                            PARTITIONS) for spec in SPECS]
    tallies = {target.name: Tally() for target in targets}
    figures = {"source_rows": 0, "repaired_geometries": 0, "z_dropped": 0,
               "total_assessed_value": 0}
    rows = source.count_since(window.start, window.end)
    give_back_freed_batches()
    with io_manager.explained("the sync's outputs"):
        outputs = io_manager.open_outputs(targets, rows)  # a big run: on both cores
        geometry_wanted = bool(outputs.formats("parcel_geometry") or
                               outputs.formats("geometry_rejects"))
        raw_wanted = bool(outputs.formats("master_parcels"))
        change_map = ChangeMap()
        try:
            batches = master_parcels.checked_batches(source, window,
                                                     outlines=geometry_wanted or raw_wanted)
            for position, (good, rejects) in enumerate(batches):
                if position == 0 and len(good):
                    # room for the whole window, judged by its first batch, before any write
                    per_row = good.memory_usage(deep=True).sum() / len(good)
                    io_manager.check_room(int(per_row * rows), "the sync's outputs")
                figures["source_rows"] += len(good) + len(rejects)
                if len(rejects):
                    context.log.warning(
                        f"{len(rejects)} row(s) cannot be published and are listed in "
                        f"parcel_rejects (e.g. id {rejects['id'].iloc[0]}: "
                        f"{rejects['reason'].iloc[0]}).")
                # not stored: the rows as read, for its figures and the rejects they clear
                batch = {"master_parcels": good[list(master_parcels.COLUMNS)] if raw_wanted
                         else good,
                         "parcel_rejects": rejects,
                         "working": good[list(working.COLUMNS)],
                         "stats": good[list(stats.COLUMNS)]}
                if geometry_wanted:
                    parcels, geometry_rejects, changed = parcel_geometry.clean_geometry(good)
                    if len(geometry_rejects):
                        context.log.warning(
                            f"{len(geometry_rejects)} parcel(s) kept out of parcel_geometry; "
                            f"see geometry_rejects (e.g. id {geometry_rejects['id'].iloc[0]}: "
                            f"{geometry_rejects['reason'].iloc[0]}).")
                    batch.update(parcel_geometry=parcels, geometry_rejects=geometry_rejects)
                    # what the layer held for these parcels before the run: inserted or updated
                    held = list(io_manager.iter_features(
                        "parcel_geometry", TARGETS["parcel_geometry"], ["id", "updated_at"],
                        ids=parcels["id"].tolist(), geometry=False))
                    kinds = changes(parcels, pd.concat(held) if held else parcels.iloc[:0])
                    for kind in ("inserted", "updated"):
                        change_map.add(kind, parcels.geometry[kinds == kind])
                    figures["repaired_geometries"] += changed["repaired_geometries"]
                    figures["z_dropped"] += changed["z_dropped"]
                figures["total_assessed_value"] += int(good["assessed_value"].sum())
                for name, frame in batch.items():
                    if name in TYPED:  # dagster-pandas: a broken key fails before publishing
                        result = check_frame(TYPED[name], frame)
                        if not result.success:
                            raise TypeError(f"{name}: {result.description}")
                    outputs.write(name, frame)
                    tallies[name].add(frame)
        except BaseException:
            outputs.rollback()
            raise
        written = outputs.publish()
    context.log.info(f"Read {figures['source_rows']} changed rows from {source.display_url()}.")
    if figures["repaired_geometries"] or figures["z_dropped"]:
        context.log.info(f"Repaired {figures['repaired_geometries']} invalid geometries with "
                         f"make_valid; dropped the Z values of {figures['z_dropped']}.")
    for target in targets:
        name = target.name
        metadata = {**tallies[name].metadata(len(keys)), **written[name]}
        if name == "master_parcels":
            metadata.update(source=source.display_url(), source_rows=figures["source_rows"],
                            rejected_rows=tallies["parcel_rejects"].rows)
        elif name == "stats":
            metadata["total_assessed_value"] = figures["total_assessed_value"]
        elif name == "parcel_geometry":
            metadata.update(repaired_geometries=figures["repaired_geometries"],
                            z_dropped=figures["z_dropped"],
                            rejected_rows=tallies["geometry_rejects"].rows)
            if drawn := change_map.markdown("What this run changed"):
                # one picture for the whole run: named as the run's in a range run
                metadata["change_map" if len(keys) == 1 else "run_change_map"] = \
                    MetadataValue.md(drawn)
        yield MaterializeResult(asset_key=name, metadata=metadata)

