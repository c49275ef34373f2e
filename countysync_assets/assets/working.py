"""``working``: the editable working set GIS staff use: who owns which parcel, and where."""

from dagster import AssetSpec

from countysync_assets.assets.asset_metadata import GROUP, parcel_columns, storage_metadata
from countysync_assets.assets.frame_types import WorkingFrame

COLUMNS = parcel_columns("id", "parcel_id", "owner", "use_code", "situs_address", "updated_at")

STORAGE = storage_metadata(COLUMNS, ["sqlite", "csv", "json"],
                           sqlite_db="working_db.sqlite")
FRAME_TYPE = WorkingFrame  # checked on every batch before it is written

SPEC = AssetSpec(
    "working",
    deps=["master_parcels"],
    group_name=GROUP,
    kinds={"pandas", "sqlite", "csv", "json"},
    metadata=STORAGE,
    description="Working set (owner, address, use code) of parcels changed in the window; "
    "working_db.sqlite holds the merged current state, CSV/JSON one file per window.",
)
