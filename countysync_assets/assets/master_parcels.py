"""``master_parcels``: the rows of the master table changed in the partition's time window.

Read from the source in keyset-paginated batches, renamed to the canonical key/cursor/geometry
names, checked for duplicate keys, and kept as the raw current-state mirror (``raw_db.sqlite``)
that ``working``, ``stats`` and ``parcel_geometry`` read their window from.
"""

import pandas as pd
from dagster import AssetExecutionContext, BackfillPolicy, Failure, Output, asset

from countysync_assets.assets.asset_metadata import (
    GROUP,
    PARCEL_COLUMNS,
    storage_metadata,
    window_metadata,
)
from countysync_assets.partitions import PARTITIONS
from countysync_assets.resources.master_parcels_source import SRID_COLUMN, MasterParcelsSource

COLUMNS = {
    **PARCEL_COLUMNS,
    "geometry": "geometry: parcel boundary as stored (WKT, or WKB from SQL Server)",
    SRID_COLUMN: "integer: EPSG code of the geometry",
}


@asset(
    partitions_def=PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"sql", "pandas", "sqlite"},
    metadata=storage_metadata(COLUMNS, ["sqlite"], sqlite_db="raw_db.sqlite"),
    description="Rows of the MasterParcels table whose updated_at falls in the window.",
)
def master_parcels(
    context: AssetExecutionContext, source: MasterParcelsSource
) -> Output[pd.DataFrame]:
    window = context.partition_time_window
    frame = pd.concat(list(source.iter_changed_batches(window.start, window.end)),
                      ignore_index=True)
    frame = frame.rename(columns={source.key_column: "id", source.cursor_column: "updated_at",
                                  source.geometry_column: "geometry"})
    duplicated = frame.loc[frame["id"].duplicated(keep=False), "id"]
    if len(duplicated):
        raise Failure(
            f"The source has {len(duplicated)} rows sharing {duplicated.nunique()} id(s) between "
            f"{window.start:%Y-%m-%d %H:%M} and {window.end:%Y-%m-%d %H:%M} UTC, e.g. "
            f"{sorted(duplicated.unique().tolist())[:10]}. Each parcel row needs a unique "
            f"{source.key_column}: fix the master table, then re-run this partition. "
            "No output was changed."
        )
    context.log.info(f"Read {len(frame)} changed rows from {source.display_url()}.")
    return Output(frame, metadata={**window_metadata(frame), "source": source.display_url()})
