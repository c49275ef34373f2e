"""countysync's software-defined assets, in the order rows flow: ``parcel_sync`` reads each
window once and writes master_parcels (+ parcel_rejects), working, stats and parcel_geometry
(+ geometry_rejects) from the same batches -> use_code_summary; deleted_parcels reconciles keys
and removes deleted parcels from every current-state output; sync_status_map draws every parcel
by its sync state on one web page."""

from countysync_assets.assets.deleted_parcels import deleted_parcels
from countysync_assets.assets.parcel_sync import parcel_sync
from countysync_assets.assets.sync_status_map import sync_status_map
from countysync_assets.assets.use_code_summary import use_code_summary

__all__ = ["deleted_parcels", "parcel_sync", "sync_status_map", "use_code_summary"]
