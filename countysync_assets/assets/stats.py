"""``stats``: the assessment figures of each parcel, for the assessor's summaries."""

import pandas as pd
from dagster import AssetIn, BackfillPolicy, Output, asset

from countysync_assets.assets.asset_metadata import (
    GROUP,
    parcel_columns,
    storage_metadata,
    window_metadata,
)
from countysync_assets.assets.frame_types import StatsFrame
from countysync_assets.partitions import PARTITIONS

COLUMNS = parcel_columns("id", "use_code", "acres", "land_value", "improvement_value",
                         "assessed_value", "tax_year", "updated_at")

STORAGE = storage_metadata(COLUMNS, ["sqlite", "csv"], sqlite_db="stats_db.sqlite")


@asset(
    # only its own columns are read from raw_db.sqlite: never the geometry
    ins={"master_parcels": AssetIn(metadata={"columns": list(COLUMNS)})},
    partitions_def=PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    dagster_type=StatsFrame,
    kinds={"pandas", "sqlite", "csv"},
    metadata=STORAGE,
    description="Assessment figures of parcels changed in the window; stats_db.sqlite holds "
    "the merged current state, CSV one file per window.",
)
def stats(master_parcels: pd.DataFrame) -> Output[pd.DataFrame]:
    """The window's rows, read with only these columns (the input's metadata)."""
    metadata = window_metadata(master_parcels)
    metadata["total_assessed_value"] = int(master_parcels["assessed_value"].sum())
    return Output(master_parcels, metadata=metadata)
