"""The sync job: every asset, for the partitions a run is given (one, or a range)."""

from dagster import AssetSelection, define_asset_job

sync_job = define_asset_job(
    "sync_parcels",
    selection=AssetSelection.all(),
    description="Extract changed parcels for the chosen windows and publish every output.",
)
