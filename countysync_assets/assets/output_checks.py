"""Checks a county GIS analyst would run by hand on the published parcels, shown in the UI
after every run that writes them: the outputs hold the same parcels, and every parcel is
numbered. (One row per id needs no check: each output's storage enforces it, a primary key
in SQLite and a unique index in the GeoPackage.)

They read the current state the outputs hold (ids and parcel numbers only, in chunks), so a
check never holds the table. A failure names how many parcels and a sample of their ids.
"""

from collections.abc import Iterator

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSpec, ResourceParam, multi_asset_check

from countysync_assets.assets.asset_metadata import where_stored
from countysync_assets.assets.master_parcels import SYNCED
from countysync_assets.io_managers.export_io_manager import ExportIOManager

SAMPLE = 10  # ids listed in a failing check's metadata


def _held(io_manager: ExportIOManager, name: str, columns: list[str]) -> pd.DataFrame:
    """``columns`` of every row the asset's current state holds."""
    chunks = list(io_manager.iter_columns(name, where_stored(SYNCED[name]), columns))
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(
        {c: pd.Series([], dtype=object) for c in columns})


def _sample(ids: pd.Series) -> str:
    return ", ".join(str(i) for i in ids.head(SAMPLE)) + (", ..." if len(ids) > SAMPLE else "")


@multi_asset_check(
    specs=[AssetCheckSpec("outputs_agree", asset="working",
                          additional_deps=["stats", "parcel_geometry", "geometry_rejects"],
                          description="working, stats and the parcel layer hold the same "
                          "parcels (a parcel missing from the layer is listed in "
                          "geometry_rejects)."),
           AssetCheckSpec("parcel_id_present", asset="working",
                          description="Every published parcel has a parcel number.")])
def published_parcels_checks(io_manager: ResourceParam[ExportIOManager]
                             ) -> Iterator[AssetCheckResult]:
    """Both checks from one read of working's ids and parcel numbers."""
    working = _held(io_manager, "working", ["id", "parcel_id"])
    ids = {"working": set(working["id"]),
           **{name: set(_held(io_manager, name, ["id"])["id"])
              for name in ("stats", "parcel_geometry", "geometry_rejects")}}
    differ = pd.Series(sorted(ids["working"] ^ ids["stats"]))
    unmapped = pd.Series(sorted(ids["working"] - ids["parcel_geometry"]
                                - ids["geometry_rejects"]))
    yield AssetCheckResult(check_name="outputs_agree", passed=differ.empty and unmapped.empty,
                           metadata={"parcels": len(ids["working"]),
                                     "in_working_or_stats_only": len(differ),
                                     "sample_ids_working_vs_stats": _sample(differ),
                                     "not_in_layer_nor_rejected": len(unmapped),
                                     "sample_ids_not_in_layer": _sample(unmapped)})
    blank = working["parcel_id"].isna() | (working["parcel_id"].astype(str).str.strip() == "")
    yield AssetCheckResult(check_name="parcel_id_present", passed=not blank.any(), metadata={
        "parcels": len(working), "parcels_without_parcel_id": int(blank.sum()),
        "sample_ids": _sample(working.loc[blank, "id"])})
