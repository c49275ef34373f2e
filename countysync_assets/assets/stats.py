"""``stats``: the assessment figures of each parcel, for the assessor's summaries."""

from dagster import AssetSpec

from countysync_assets.assets.asset_metadata import GROUP, parcel_columns, storage_metadata
from countysync_assets.assets.frame_types import StatsFrame

COLUMNS = parcel_columns("id", "use_code", "acres", "land_value", "improvement_value",
                         "assessed_value", "tax_year", "updated_at")

STORAGE = storage_metadata(COLUMNS, ["sqlite", "csv"], sqlite_db="stats_db.sqlite")
FRAME_TYPE = StatsFrame  # checked on every batch before it is written

SPEC = AssetSpec(
    "stats",
    deps=["master_parcels"],
    group_name=GROUP,
    kinds={"pandas", "sqlite", "csv"},
    metadata=STORAGE,
    description="Assessment figures of parcels changed in the window; stats_db.sqlite holds "
    "the merged current state, CSV one file per window.",
)
