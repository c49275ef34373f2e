"""``working``: the editable working set GIS staff use: who owns which parcel, and where."""

import pandas as pd
from dagster import AssetIn, BackfillPolicy, Output, asset

from countysync_assets.assets.asset_metadata import (
    GROUP,
    parcel_columns,
    storage_metadata,
    window_metadata,
)
from countysync_assets.assets.frame_types import WorkingFrame
from countysync_assets.partitions import PARTITIONS

COLUMNS = parcel_columns("id", "parcel_id", "owner", "use_code", "situs_address", "updated_at")

STORAGE = storage_metadata(COLUMNS, ["sqlite", "csv", "json"],
                           sqlite_db="working_db.sqlite")


@asset(
    # only its own columns are read from raw_db.sqlite: never the geometry
    ins={"master_parcels": AssetIn(metadata={"columns": list(COLUMNS)})},
    partitions_def=PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    dagster_type=WorkingFrame,
    kinds={"pandas", "sqlite", "csv", "json"},
    metadata=STORAGE,
    description="Working set (owner, address, use code) of parcels changed in the window; "
    "working_db.sqlite holds the merged current state, CSV/JSON one file per window.",
)
def working(master_parcels: pd.DataFrame) -> Output[pd.DataFrame]:
    """The window's rows, read with only these columns (the input's metadata)."""
    return Output(master_parcels, metadata=window_metadata(master_parcels))
