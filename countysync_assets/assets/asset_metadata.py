"""Metadata every countysync asset carries: its column schema, and per run its row count and
the min/max ``updated_at`` of the rows it holds (plotted over time in the Dagster UI)."""

import pandas as pd
from dagster import MetadataValue, TableColumn, TableSchema

from countysync_assets.io_managers.format_io_manager import (
    CURSOR_COLUMN,
    FORMATS,
    GPKG_LAYER,
    KEY_COLUMNS,
    SQLITE_DB,
)

GROUP = "parcels"

# Every parcel column an asset may carry, with its type and meaning, in one place.
PARCEL_COLUMNS = {
    "id": "integer: parcel row key in the master table",
    "parcel_id": "string: county parcel number, e.g. 1-2345-678-9012",
    "owner": "string: owner of record",
    "situs_address": "string: site address",
    "use_code": "string: Washington DOR land use code",
    "acres": "float: parcel area in acres (as recorded)",
    "land_value": "integer: assessed land value, USD",
    "improvement_value": "integer: assessed improvement value, USD",
    "assessed_value": "integer: total assessed value, USD",
    "tax_year": "integer: assessment year",
    "updated_at": "timestamp: last change in the master table (UTC)",
}


def parcel_columns(*names: str) -> dict[str, str]:
    """``PARCEL_COLUMNS`` for ``names``, in that order."""
    return {name: PARCEL_COLUMNS[name] for name in names}


def column_schema(columns: dict[str, str]) -> TableSchema:
    """A Dagster table schema from ``{column: "type: description"}``."""
    return TableSchema(columns=[
        TableColumn(name, kind.split(":")[0].strip(), description=kind.partition(":")[2].strip())
        for name, kind in columns.items()
    ])


def storage_metadata(columns: dict[str, str], formats: list[str], sqlite_db: str | None = None,
                     keyed: bool = True) -> dict:
    """Definition metadata: the schema, and how the IO managers store the asset by default."""
    metadata = {"dagster/column_schema": column_schema(columns), FORMATS: formats}
    if keyed:
        metadata.update({KEY_COLUMNS: ["id"], CURSOR_COLUMN: "updated_at"})
    if sqlite_db:
        metadata[SQLITE_DB] = sqlite_db
    return metadata


STORAGE_KEYS = (FORMATS, SQLITE_DB, GPKG_LAYER, KEY_COLUMNS, CURSOR_COLUMN)


def where_stored(metadata: dict) -> dict:
    """The part of an asset's metadata that tells the IO managers where its current state
    is, for an asset that removes rows from it (tombstones, superseding outputs)."""
    return {key: metadata[key] for key in STORAGE_KEYS if key in metadata}


class Tally:
    """Row count and range of ``updated_at`` of the batches one output got in a run."""

    def __init__(self) -> None:
        self.rows = 0
        self.low: pd.Timestamp | None = None
        self.high: pd.Timestamp | None = None

    def add(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        if len(frame) and "updated_at" in frame:
            low, high = frame["updated_at"].min(), frame["updated_at"].max()
            self.low = low if self.low is None else min(self.low, low)
            self.high = high if self.high is None else max(self.high, high)

    def metadata(self, windows: int) -> dict:
        """For one window, its row count (plotted per partition in the UI) and range; for a
        run over several, the same figures named as the run's, since Dagster records one
        set of metadata for every window of a range run and a window's plot must not show
        the whole run's count."""
        prefix = "" if windows == 1 else "run_"
        metadata: dict = {"dagster/row_count" if windows == 1 else "run_rows": self.rows}
        if windows != 1:
            metadata["run_windows"] = windows
        if self.low is not None:
            metadata[f"{prefix}min_updated_at"] = MetadataValue.text(self.low.isoformat())
            metadata[f"{prefix}max_updated_at"] = MetadataValue.text(self.high.isoformat())
        return metadata
