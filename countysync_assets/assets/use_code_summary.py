"""``use_code_summary``: parcels, acres and assessed value per land use code, county-wide."""

import pandas as pd
from dagster import (
    AssetIn,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    BackfillPolicy,
    DefaultSensorStatus,
    Output,
    asset,
)

from countysync_assets.assets.asset_metadata import GROUP, storage_metadata
from countysync_assets.assets.automation import once_settled

COLUMNS = {
    "use_code": "string: Washington DOR land use code",
    "parcel_count": "integer: parcels with this use code",
    "total_acres": "float: their total area in acres",
    "total_assessed_value": "integer: their total assessed value, USD",
}


# A delete check started on its own (deleted_parcels materialized alone in the UI) changes the
# totals: the summary follows it. A run that rebuilt the summary after the check (the sync,
# reconcile_deletes) has handled it already: the same tick's update resets the condition.
FOLLOWS_DELETES = once_settled(AutomationCondition.any_deps_updated()
                               .allow(AssetSelection.assets("deleted_parcels")))


@asset(
    # totalled by SQLite where stats are stored: memory and time stay flat as the county grows
    ins={"stats": AssetIn(metadata={"aggregate": {"by": "use_code", "values": {
        "parcel_count": ["count", "*"], "total_acres": ["sum", "acres"],
        "total_assessed_value": ["sum", "assessed_value"]}}})},
    deps=["deleted_parcels"],  # deletes change the totals too
    automation_condition=FOLLOWS_DELETES,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"pandas", "sqlite", "csv"},
    metadata=storage_metadata(COLUMNS, ["sqlite", "csv"], sqlite_db="stats_db.sqlite",
                              keyed=False),
    description="Parcel count, total acres and total assessed value per use code over the "
    "whole current parcel set (stats_db.sqlite table use_code_summary, use_code_summary.csv).",
)
def use_code_summary(stats: pd.DataFrame) -> Output[pd.DataFrame]:
    """``stats`` arrives already totalled per use code (the input's ``aggregate``)."""
    summary = stats.sort_values("use_code", ignore_index=True).astype(
        {"parcel_count": "Int64", "total_acres": "float64", "total_assessed_value": "Int64"})
    summary["total_acres"] = summary["total_acres"].round(4)  # (an empty county: no rows)
    return Output(summary, metadata={
        "dagster/row_count": len(summary),
        "parcels": int(summary["parcel_count"].sum()),
        "total_assessed_value": int(summary["total_assessed_value"].sum()),
    })


# RUNNING: a summary that silently disagrees with the parcels is what a county notices first
summary_follows_deletes = AutomationConditionSensorDefinition(
    "use_code_summary_follows_deletes", target=AssetSelection.assets("use_code_summary"),
    default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
    description="Rebuilds use_code_summary after a delete check that did not rebuild it.")
