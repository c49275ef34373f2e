"""``deleted_parcels``: parcels deleted from the master table, found by key reconciliation.

A cursor sync never sees a deleted row. This asset compares the ids synced so far with the
ids the source still has (keys only, streamed) and records a tombstone for each one gone.
Writing the tombstones removes those parcels from every current-state output in the same
all-or-nothing step (see ``ExportIOManager``); each SQLite database keeps them in its
``deleted_parcels`` table, and the run's change files (deleted_parcels.csv/.json) list them.
"""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    BackfillPolicy,
    Output,
    asset,
)

from countysync_assets.assets.asset_metadata import (
    GROUP,
    parcel_columns,
    storage_metadata,
    where_stored,
)
from countysync_assets.assets.master_parcels import master_parcels as master_parcels_asset
from countysync_assets.assets.parcel_geometry import parcel_geometry as parcel_geometry_asset
from countysync_assets.assets.stats import stats as stats_asset
from countysync_assets.assets.working import working as working_asset
from countysync_assets.io_managers.format_io_manager import DELETES_FROM
from countysync_assets.resources.master_parcels_source import MasterParcelsSource

COLUMNS = {
    **parcel_columns("id", "parcel_id", "updated_at"),
    "deleted_at": "timestamp: when the reconciliation found the parcel gone (UTC)",
}


def _storage(*assets_defs: AssetsDefinition) -> dict[str, dict]:
    """Where each asset keeps its current state: the metadata its IO managers read."""
    return {key.path[-1]: where_stored(spec.metadata)
            for assets_def in assets_defs for key, spec in assets_def.specs_by_key.items()}


# The current-state outputs a tombstone removes the parcel from.
TARGETS = _storage(master_parcels_asset, working_asset, stats_asset, parcel_geometry_asset)


@asset(
    ins={"master_parcels": AssetIn(metadata={"columns": ["id", "parcel_id", "updated_at"]})},
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"sql", "pandas", "sqlite", "csv", "json"},
    metadata={**storage_metadata(COLUMNS, ["csv", "json"], keyed=False),
              DELETES_FROM: TARGETS},
    description="Parcels deleted from MasterParcels since they were synced: removed from "
    "every current-state output, kept as tombstones (table deleted_parcels) and listed in "
    "deleted_parcels.csv/.json. Runs nightly and on demand.",
)
def deleted_parcels(context: AssetExecutionContext, source: MasterParcelsSource,
                    master_parcels: pd.DataFrame) -> Output[pd.DataFrame]:
    # The synced ids were read (as the input) before the source is scanned, so a parcel
    # synced in between is never mistaken for a deleted one.
    # isin hashes the kept ids itself; they need no sorting or de-duplication first
    kept = np.concatenate([np.asarray(batch) for batch in source.iter_keys()]
                          or [np.array([], dtype=master_parcels["id"].dtype)])
    gone = master_parcels[~master_parcels["id"].isin(kept)]
    tombstones = gone.assign(deleted_at=pd.Timestamp(datetime.now(UTC)).as_unit("us"))
    context.log.info(f"{len(tombstones)} of {len(master_parcels)} synced parcels are no longer "
                     "in the source.")
    return Output(tombstones.reset_index(drop=True), metadata={
        "dagster/row_count": len(tombstones), "synced_parcels": len(master_parcels),
        "source_parcels": len(kept)})
