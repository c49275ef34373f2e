"""Jobs: the sync (every asset but the delete check, for the partitions a run is given) and
the delete check (key reconciliation, then the county-wide summary it changes)."""

from dagster import AssetSelection, define_asset_job

from countysync_assets.assets.asset_metadata import GROUP

RECONCILE = AssetSelection.assets("deleted_parcels", "unplaced_parcels")
# the runs that write the county's outputs: the production instance runs one at a time
# (deploy/dagster.production.yaml, tag_concurrency_limits)
WRITES_OUTPUTS = {"countysync/writes": "exports"}

sync_job = define_asset_job(
    "sync_parcels",
    selection=AssetSelection.groups(GROUP) - RECONCILE,
    description="Extract changed parcels for the chosen windows and publish every output.",
    tags=WRITES_OUTPUTS,
)

reconcile_deletes_job = define_asset_job(
    "reconcile_deletes",
    selection=RECONCILE | AssetSelection.assets("use_code_summary"),
    description="Find parcels deleted from the source and remove them from every output.",
    tags=WRITES_OUTPUTS,
)
