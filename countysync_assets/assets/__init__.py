"""countysync's software-defined assets, one module each, in the order rows flow:
master_parcels -> working, stats, parcel_geometry (+ geometry_rejects) -> use_code_summary;
deleted_parcels reconciles keys and removes deleted parcels from every current-state output."""

from countysync_assets.assets.deleted_parcels import deleted_parcels
from countysync_assets.assets.master_parcels import master_parcels
from countysync_assets.assets.parcel_geometry import parcel_geometry
from countysync_assets.assets.stats import stats
from countysync_assets.assets.use_code_summary import use_code_summary
from countysync_assets.assets.working import working

__all__ = ["deleted_parcels", "master_parcels", "parcel_geometry", "stats", "use_code_summary",
           "working"]
