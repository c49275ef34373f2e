"""Key reconciliation: what a cursor sync can never see.

``deleted_parcels``: parcels deleted from the master table. The ids held by *each* current-state
output are compared with the ids the source still has (keys only, streamed), so a delete that
was interrupted half-way (one file updated, another not) is finished by the next check. Writing
the tombstones removes those parcels from every current-state output in the same step (see
``ExportIOManager``); each SQLite database keeps them in its ``deleted_parcels`` table, and the
run's change files (deleted_parcels.csv/.json) list them. A mass delete (the source emptied for
a reload, a wrong table) is refused unless a person confirms it.

``unplaced_parcels``: source rows no sync window can hold (no key; ``updated_at`` NULL, before
1970, in the future such as 9999-12-31, or unreadable), listed with the reason and kept out of
the outputs until the master table gives them a key and a real last-modified time.
"""

from datetime import UTC, datetime

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetOut,
    BackfillPolicy,
    Config,
    Failure,
    MetadataValue,
    Output,
    ResourceParam,
    multi_asset,
)
from pydantic import Field

from countysync_assets.assets.asset_metadata import (
    GROUP,
    parcel_columns,
    storage_metadata,
    where_stored,
)
from countysync_assets.assets.change_map import OUTLINES, ChangeMap
from countysync_assets.assets.master_parcels import PUBLISHED
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.io_managers.format_io_manager import (
    DELETES_FROM,
    FIRST_WRITE,
    SUPERSEDES,
)
from countysync_assets.partitions import PARTITIONS
from countysync_assets.resources.master_parcels_source import MasterParcelsSource

COLUMNS = {
    **parcel_columns("id", "parcel_id", "updated_at"),
    "deleted_at": "timestamp: when the reconciliation found the parcel gone (UTC)",
}
UNPLACED_COLUMNS = {
    "id": "string: the row's key as the source holds it (empty if it has none)",
    **parcel_columns("parcel_id"),
    "updated_at": "string: the row's updated_at exactly as the source holds it",
    "reason": "string: why no sync window can hold the row, and what to fix",
}
UNPLACED_STORAGE = storage_metadata(UNPLACED_COLUMNS, ["sqlite", "csv"],
                                    sqlite_db="rejects_db.sqlite", keyed=False)
CONFIRM_TAG = "countysync/confirm_mass_delete"
# The current-state outputs a tombstone removes the parcel from, and whose ids are compared
# with the source. Not the rejects tables yet: a row deleted from the source while it was
# rejected stays listed there (known limit, README).
TARGETS = {name: where_stored(PUBLISHED[name])
           for name in ("master_parcels", "working", "stats", "parcel_geometry")}


def synced_rows(io_manager: ExportIOManager) -> pd.DataFrame:
    """Id and ``updated_at`` (UTC) of every row each output holds, newest version per id: read
    in chunks as compact columns (16 bytes a row), never the geometry or the text."""
    parts = []
    for name, storage in TARGETS.items():
        for chunk in io_manager.iter_columns(name, storage, ["id", "updated_at"]):
            parts.append(pd.DataFrame({
                "id": chunk["id"].astype("int64"),
                "updated_at": pd.to_datetime(chunk["updated_at"], utc=True, format="ISO8601")
                .astype("datetime64[us, UTC]")}))
    if not parts:
        return pd.DataFrame({"id": pd.Series([], dtype="int64"),
                             "updated_at": pd.Series([], dtype="datetime64[us, UTC]")})
    rows = pd.concat(parts, ignore_index=True)
    del parts
    return rows.sort_values("updated_at").drop_duplicates("id", keep="last")


def compare_keys(io_manager: ExportIOManager, source: MasterParcelsSource
                 ) -> tuple[pd.DataFrame, pd.Series]:
    """(id and updated_at of every synced row, every id the source has), keys only, streamed.
    The synced ids are read before the source is scanned, so a parcel synced in between is
    never mistaken for a deleted one."""
    synced = synced_rows(io_manager)
    # a Series, not an array: a key column with a stray text key stays comparable
    kept = pd.concat([pd.Series(batch) for batch in source.iter_keys()]
                     or [pd.Series([], dtype="int64")], ignore_index=True)
    return synced, kept


def parcel_numbers(io_manager: ExportIOManager, ids: pd.Series) -> pd.Series:
    """The parcel number each output holds for ``ids`` (the few that are gone), by id."""
    found = []
    for name, storage in TARGETS.items():
        names = {column.name for column in PUBLISHED[name]["dagster/column_schema"].columns}
        if "parcel_id" in names:
            for chunk in io_manager.iter_columns(name, storage, ["id", "parcel_id"]):
                found.append(chunk[chunk["id"].isin(ids)])
    numbers = pd.concat(found, ignore_index=True) if found else pd.DataFrame(
        columns=["id", "parcel_id"])
    return numbers.dropna().drop_duplicates("id").set_index("id")["parcel_id"]


def deleted_map(io_manager: ExportIOManager, ids: pd.Series) -> str | None:
    """The map of the parcels the check deletes, drawn from the layer before they leave it
    (at most ``OUTLINES`` of them)."""
    change_map = ChangeMap()
    for features in io_manager.iter_features("parcel_geometry", TARGETS["parcel_geometry"],
                                             ["id"], ids.head(OUTLINES).tolist()):
        change_map.add("deleted", features.geometry)
    more = f" (the first {OUTLINES:,} of {len(ids):,})" if len(ids) > OUTLINES else ""
    return change_map.markdown(f"Parcels deleted{more}")


class DeleteCheckConfig(Config):
    """How many deletes the check may make without a person confirming them."""

    max_share: float = Field(
        default=0.05, ge=0, le=1,
        description="Refuse to delete more than this share of the synced parcels (0.05 = 5%).")
    max_rows: int = Field(
        default=0, ge=0, description="Refuse to delete more than this many parcels (0: no "
        "limit by count).")
    confirm_mass_delete: bool = Field(
        default=False, description="Delete even above the limits: the parcels really are "
        "gone (also the run tag countysync/confirm_mass_delete=true).")


def _reason(row_id: object, cursor: object) -> str:
    if row_id is None:
        return "no id (NULL): give the row a key in the master table"
    if cursor is None:
        return ("updated_at is NULL: the change sensor cannot place the row in a sync "
                "window; give it its real last-modified time in the master table")
    return (f"updated_at {cursor!r} is not an edit time between 1970 and now (a placeholder, "
            "a future date, or text that is no time): give the row its real last-modified "
            "time in the master table")


def unplaced_rows(source: MasterParcelsSource) -> pd.DataFrame:
    """The source rows no partition holds, with the reason for each."""
    newest_end = PARTITIONS.time_window_for_partition_key(PARTITIONS.get_last_partition_key()).end
    frames = list(source.iter_unplaced(newest_end))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["id", "parcel_id", "updated_at"])
    if "parcel_id" not in rows:
        rows["parcel_id"] = None
    rows = rows.astype(object).where(rows.notna(), None)
    rows["reason"] = [_reason(i, c) for i, c in zip(rows["id"], rows["updated_at"], strict=True)]
    rows["id"] = rows["id"].map(lambda v: None if v is None else str(v))
    return rows[list(UNPLACED_COLUMNS)]


def check_share(context: AssetExecutionContext, config: DeleteCheckConfig, gone: int,
                synced: int) -> None:
    """Refuse a mass delete unless confirmed: an emptied or swapped source table must not
    empty the county's outputs."""
    confirmed = config.confirm_mass_delete or \
        context.run.tags.get(CONFIRM_TAG, "").lower() == "true"
    too_many = gone > config.max_share * synced or (config.max_rows and gone > config.max_rows)
    if not gone or not too_many or confirmed:
        return
    limit = f"{config.max_share:.0%} of the synced parcels" + (
        f" or {config.max_rows} parcels" if config.max_rows else "")
    raise Failure(
        f"The delete check refuses to delete {gone} of {synced} synced parcels (more than "
        f"{limit}): the source looks emptied, truncated for a reload or swapped. Nothing was "
        "deleted. If these parcels really are gone, run reconcile_deletes again with "
        f"confirm_mass_delete: true in the run config, or the tag {CONFIRM_TAG}=true.")


@multi_asset(
    outs={
        "deleted_parcels": AssetOut(
            description="Parcels deleted from MasterParcels since they were synced: removed "
            "from every current-state output, kept as tombstones (table deleted_parcels) and "
            "listed in deleted_parcels.csv/.json. Runs nightly and on demand; refuses a mass "
            "delete unless confirmed.",
            kinds={"sql", "pandas", "sqlite", "csv", "json"},
            metadata={**storage_metadata(COLUMNS, ["csv", "json"], keyed=False),
                      DELETES_FROM: TARGETS, FIRST_WRITE: True},
        ),
        "unplaced_parcels": AssetOut(
            description="Source rows no sync window can hold (no id; updated_at NULL, before "
            "1970, in the future or unreadable), with the reason: kept out of the outputs "
            "until fixed in the master table (rejects_db.sqlite, unplaced_parcels.csv).",
            kinds={"pandas", "sqlite", "csv"},
            metadata={**UNPLACED_STORAGE, SUPERSEDES: {name: where_stored(storage)
                                   for name, storage in PUBLISHED.items()}},
        ),
    },
    deps=list(TARGETS),
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
)
def deleted_parcels(context: AssetExecutionContext, config: DeleteCheckConfig,
                    source: MasterParcelsSource, io_manager: ResourceParam[ExportIOManager]):
    synced, kept = compare_keys(io_manager, source)
    gone, source_parcels = synced[~synced["id"].isin(kept)], len(kept)
    del kept
    check_share(context, config, len(gone), len(synced))
    tombstones = gone.assign(parcel_id=gone["id"].map(parcel_numbers(io_manager, gone["id"])),
                             deleted_at=pd.Timestamp(datetime.now(UTC)).as_unit("us"))
    tombstones = tombstones[list(COLUMNS)]
    context.log.info(f"{len(tombstones)} of {len(synced)} synced parcels are no longer "
                     "in the source.")
    unplaced = unplaced_rows(source)
    if len(unplaced):
        context.log.warning(
            f"{len(unplaced)} source row(s) cannot be placed in a sync window and are listed "
            f"in unplaced_parcels (e.g. id {unplaced['id'].iloc[0]}: "
            f"{unplaced['reason'].iloc[0]}).")
    metadata = {"dagster/row_count": len(tombstones), "synced_parcels": len(synced),
                "source_parcels": source_parcels}
    if drawn := deleted_map(io_manager, tombstones["id"]):
        metadata["change_map"] = MetadataValue.md(drawn)
    yield Output(tombstones.reset_index(drop=True), output_name="deleted_parcels",
                 metadata=metadata)
    yield Output(unplaced, output_name="unplaced_parcels",
                 metadata={"dagster/row_count": len(unplaced)})
