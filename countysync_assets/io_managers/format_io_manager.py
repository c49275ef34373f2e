"""The base of every per-format IO manager, and the asset metadata keys they read.

Each format stages its output (``stage``) and publishes it only when told to (``commit``), so
``ExportIOManager`` can write one asset to several formats all-or-nothing. Used alone, a
format IO manager stages and commits at once.
"""

from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext, TimeWindow
from pydantic import Field

from countysync_assets.io_managers.output_transactions import OutputTransactions
from countysync_assets.io_managers.publishing import (
    StagedWrite,
    asset_name,
    export_path,
    staged_files,
    temp_sibling,
    timestamps_to_iso,
)
from countysync_assets.partitions import partition_keys_for

# Asset definition metadata that tells the IO managers how to store an asset.
KEY_COLUMNS = "countysync/key_columns"  # merge key of current-state stores, e.g. ["id"]
CURSOR_COLUMN = "countysync/cursor_column"  # the time column partitions are windows over
SQLITE_DB = "countysync/sqlite_db"  # database file name; default "<asset>.sqlite"
GPKG_LAYER = "countysync/gpkg_layer"  # GeoPackage layer name; default the asset name
DELETES_FROM = "countysync/deletes_from"  # tombstone assets: the assets their ids leave
# outputs whose rows take the place of older versions of the same ids in these assets (a
# parcel is in parcel_geometry or in geometry_rejects, as its current version decides)
SUPERSEDES = "countysync/supersedes"
FORMATS = "countysync/formats"  # the asset's default formats, e.g. ["sqlite", "csv"]
# the first output a run writes: it waits for every output database to be free of other
# programs' locks first, so a lock never leaves some outputs written and others not
FIRST_WRITE = "countysync/first_write"
# newer than any stored version: what a removal without a comparable time removes up to
LATEST = pd.Timestamp.max.tz_localize("UTC").floor("us")


def input_window(context: InputContext) -> TimeWindow | None:
    """The cursor window of the upstream partitions an input asks for, or None when it asks
    for the whole table: an unpartitioned asset (a county-wide summary, the delete check)
    depends on every partition, and rows outside the partitions' range count for it too."""
    cursor = (context.upstream_output.definition_metadata or {}).get(CURSOR_COLUMN)
    if not (cursor and context.has_asset_partitions):
        return None
    partitions_def, requested = context.asset_partitions_def, context.asset_partition_key_range
    if (requested.start, requested.end) == (partitions_def.get_first_partition_key(),
                                            partitions_def.get_last_partition_key()):
        return None
    return context.asset_partitions_time_window


def removals(frame: pd.DataFrame, as_of: str) -> pd.DataFrame:
    """What ``stage_delete`` takes: each id, and the version (its ``as_of`` column) up to
    which a stored row of that id goes. Rows without a time to compare (``as_of`` not a
    timestamp column) remove every stored version; rows without an id remove nothing."""
    ids = frame[["id"]].assign(as_of=frame[as_of] if pd.api.types.is_datetime64_any_dtype(
        frame[as_of]) else LATEST)
    return ids[ids["id"].notna()].reset_index(drop=True)


class FormatIOManager(ConfigurableIOManager):
    """Writes an asset in one format under ``export_dir``."""

    export_dir: str = Field(default="exports", description="Folder that holds every output.")
    lock_wait_seconds: float = Field(
        default=120, description="How long a write waits for another program's lock on an "
        "output database before the run fails.")

    def stage(self, context: OutputContext, obj: Any, files: OutputTransactions) -> StagedWrite:
        """Write ``obj`` where no reader sees it yet; must clean up after itself on failure.
        Database writes go through ``files``, one transaction per file."""
        raise NotImplementedError

    def stage_delete(self, asset: str, metadata: dict, removals: pd.DataFrame, run_id: str,
                     files: OutputTransactions, tombstones: pd.DataFrame | None = None
                     ) -> StagedWrite:
        """Remove from ``asset``'s current state (stores that hold one) each ``removals`` id
        (columns ``id``, ``as_of``) whose stored version is no newer than ``as_of``. Parcels
        deleted from the source also come as ``tombstones``, which the store keeps."""
        raise NotImplementedError(f"{type(self).__name__} holds no current state to delete from")

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        staged = self.stage(context, obj, OutputTransactions(self.lock_wait_seconds))
        try:
            staged.commit()
        except BaseException:
            staged.rollback()
            raise
        context.add_output_metadata(staged.metadata)

    def load_input(self, context: InputContext) -> Any:
        raise TypeError(
            f"{type(self).__name__} publishes files for people and other systems; it cannot "
            f"load {context.asset_key.to_user_string()} as an input. Store the asset in SQLite "
            "or GeoPackage too (first in its formats list) to use it downstream."
        )


class PartitionedFileIOManager(FormatIOManager):
    """One file per partition (the rows that changed in that window), published by rename.

    A run over a partition range writes one file per partition in the range; a window with
    no changes gets an empty file, so every synced window has its file and a rerun replaces it.
    """

    extension: ClassVar[str] = ""

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Conversions done once for the whole output, before it is split by partition."""
        return timestamps_to_iso(frame)

    def write_file(self, frame: pd.DataFrame, temp: Path, final: Path) -> None:
        """Write ``frame`` to ``temp``; it is renamed to ``final`` when the run commits."""
        raise NotImplementedError

    def stage(self, context: OutputContext, obj: pd.DataFrame,
              files: OutputTransactions) -> StagedWrite:
        name = asset_name(context)
        prepared = self.prepare(obj)
        if not context.has_asset_partitions:
            targets = [(export_path(self.export_dir, f"{name}{self.extension}"), prepared)]
        else:
            keys = context.asset_partition_keys
            cursor = context.definition_metadata[CURSOR_COLUMN]
            labels = partition_keys_for(context.asset_partitions_def, keys, obj[cursor])
            if labels.isna().any():
                raise ValueError(
                    f"{int(labels.isna().sum())} row(s) of {name} have {cursor} outside the "
                    f"partitions being written ({keys[0]} to {keys[-1]})."
                )
            groups = dict(iter(prepared.groupby(labels, sort=False))) if len(obj) else {}
            targets = [
                (export_path(self.export_dir, name, f"{key}{self.extension}"),
                 groups.get(key, prepared.iloc[:0]))
                for key in keys
            ]
        files = []
        try:
            for final, frame in targets:
                if final.exists() and not final.is_file():
                    raise IsADirectoryError(
                        f"{final} is in the way of the {self.extension} output: it is not a "
                        "file. Move it out of the export folder and re-run.")
                temp = temp_sibling(final)
                files.append((temp, final))
                self.write_file(frame, temp, final)
        except BaseException:
            staged_files(name, files).rollback()
            raise
        staged = staged_files(f"{name} {self.extension}", files)
        staged.metadata = {
            f"{self.extension.lstrip('.')}_files": len(files),
            f"{self.extension.lstrip('.')}_path": str(targets[-1][0]),
        }
        return staged
