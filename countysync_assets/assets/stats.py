"""``stats``: the assessment figures of each parcel, for the assessor's summaries."""

import pandas as pd
from dagster import BackfillPolicy, Output, asset

from countysync_assets.assets.asset_metadata import (
    GROUP,
    select_columns,
    storage_metadata,
    window_metadata,
)
from countysync_assets.assets.frame_types import StatsFrame
from countysync_assets.partitions import PARTITIONS

COLUMNS = {
    "id": "integer: parcel row key in the master table",
    "use_code": "string: Washington DOR land use code",
    "acres": "float: parcel area in acres",
    "land_value": "integer: assessed land value, USD",
    "improvement_value": "integer: assessed improvement value, USD",
    "assessed_value": "integer: total assessed value, USD",
    "tax_year": "integer: assessment year",
    "updated_at": "timestamp: last change in the master table (UTC)",
}


@asset(
    partitions_def=PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    dagster_type=StatsFrame,
    kinds={"pandas", "sqlite", "csv"},
    metadata=storage_metadata(COLUMNS, ["sqlite", "csv"], sqlite_db="stats_db.sqlite"),
    description="Assessment figures of parcels changed in the window; stats_db.sqlite holds "
    "the merged current state, CSV one file per window.",
)
def stats(master_parcels: pd.DataFrame) -> Output[pd.DataFrame]:
    frame = select_columns(master_parcels, list(COLUMNS), "stats")
    metadata = window_metadata(frame)
    metadata["total_assessed_value"] = int(frame["assessed_value"].sum())
    return Output(frame, metadata=metadata)
