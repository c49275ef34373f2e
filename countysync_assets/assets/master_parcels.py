"""``master_parcels``: the rows of the master table changed in the partition's time window,
and ``parcel_rejects``: those of them that cannot be published, with the reasons.

Read from the source in keyset-paginated batches, renamed to the canonical key/cursor/geometry
names and checked row by row (``row_checks``). A rejected row leaves every output (its earlier
version would be stale) until the master table fixes it, and a fixed row leaves
``parcel_rejects``. The raw mirror of the good rows (``raw_db.sqlite``) is optional: no
output is built from it, so it is off unless ``COUNTYSYNC_FORMATS`` names a format for it.
"""

from collections.abc import Iterator

import pandas as pd
from dagster import AssetSpec, Failure, TimeWindow

from countysync_assets.assets.asset_metadata import (
    GROUP,
    PARCEL_COLUMNS,
    parcel_columns,
    storage_metadata,
    where_stored,
)
from countysync_assets.assets.parcel_geometry import GEOMETRY_STORAGE
from countysync_assets.assets.parcel_geometry import REJECTS_STORAGE as GEOMETRY_REJECTS
from countysync_assets.assets.row_checks import check_rows
from countysync_assets.assets.stats import STORAGE as STATS_STORAGE
from countysync_assets.assets.working import STORAGE as WORKING_STORAGE
from countysync_assets.io_managers.format_io_manager import FIRST_WRITE, SUPERSEDES
from countysync_assets.resources.master_parcels_source import SRID_COLUMN, MasterParcelsSource

COLUMNS = {
    **PARCEL_COLUMNS,
    "geometry": "geometry: parcel boundary as stored (WKT, or WKB from SQL Server)",
    SRID_COLUMN: "integer: EPSG code of the geometry",
}
REJECT_COLUMNS = {
    "id": "string: the row's key as the source holds it (a bad key may be text)",
    **parcel_columns("parcel_id"),
    "updated_at": "timestamp: last change (UTC); the window's end where it could not be read",
    "reason": "string: every problem found in the row, with the value, separated by '; '",
}
RAW_STORAGE = storage_metadata(COLUMNS, [], sqlite_db="raw_db.sqlite")
REJECTS_STORAGE = storage_metadata(REJECT_COLUMNS, ["sqlite", "csv"],
                                   sqlite_db="rejects_db.sqlite")
# Where the rows of this window are published: a rejected row's earlier version leaves each.
PUBLISHED = {"master_parcels": RAW_STORAGE, "working": WORKING_STORAGE, "stats": STATS_STORAGE,
             "parcel_geometry": GEOMETRY_STORAGE, "geometry_rejects": GEOMETRY_REJECTS}

SPEC = AssetSpec(
    "master_parcels",
    group_name=GROUP,
    kinds={"sql", "pandas"},
    # a fixed row leaves parcel_rejects; the first output written checks every lock
    metadata={**RAW_STORAGE, FIRST_WRITE: True,
              SUPERSEDES: {"parcel_rejects": where_stored(REJECTS_STORAGE)}},
    description="Rows of the MasterParcels table whose updated_at falls in the window (the "
    "first window: every row before it too, the baseline) and that passed the row checks. "
    "Read once per run; every output is written from the same batches. Stored only if "
    "COUNTYSYNC_FORMATS names a format for it (sqlite: raw_db.sqlite).",
)
REJECTS_SPEC = AssetSpec(
    "parcel_rejects",
    group_name=GROUP,
    kinds={"pandas", "sqlite", "csv"},
    metadata={**REJECTS_STORAGE, SUPERSEDES: {
        name: where_stored(storage) for name, storage in PUBLISHED.items()}},
    description="Rows of the window that cannot be published, with every reason "
    "(rejects_db.sqlite table parcel_rejects, CSV per window). Fix them in the master "
    "table: the next sync publishes them and removes them from here.",
)
# the outputs whose rows tell how far a sync got (a run publishes them all or none)
SYNCED = {**PUBLISHED, "parcel_rejects": dict(REJECTS_SPEC.metadata)}


def checked_batches(source: MasterParcelsSource, window: TimeWindow, outlines: bool = True
                    ) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(good rows, rejects) of each batch the source reads for ``window``: canonical column
    names, typed, checked; with the geometry if ``outlines`` (no output wants it when only
    tables are configured). The first batch comes even if empty, so every output gets its
    columns."""
    # only what the outputs hold: a county's master table has many more columns
    for batch in source.iter_changed_batches(window.start, window.end, PARCEL_COLUMNS,
                                             outlines=outlines):
        frame = batch.rename(columns={source.key_column: "id",
                                      source.cursor_column: "updated_at",
                                      source.geometry_column: "geometry"})
        missing = [column for column in PARCEL_COLUMNS if column not in frame]
        if missing:  # else existing parcels would keep stale values and new ones get NULL
            raise Failure(
                f"{source.table} has no column(s) {', '.join(missing)}, which the outputs "
                f"hold ({source.display_url()}). Restore them, or point COUNTYSYNC_SOURCE_TABLE "
                "at a view that provides them under these names, then re-run. No output was "
                "changed.")
        yield check_rows(frame, window)
