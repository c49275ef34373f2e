"""The base of every per-format IO manager, and the asset metadata keys they read.

Each format opens a *writer* for an output (``open``) that takes the rows batch by batch
(``write``) and stages them where no reader sees them yet; ``finish`` returns the staged
output, which is published only when told to (``commit``). So the sync streams every batch of
the extract into every output at once, and ``ExportIOManager`` publishes all the outputs of a
run, or none. Used alone, a format IO manager writes one frame and commits at once.
"""

import filecmp
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from dagster import (
    ConfigurableIOManager,
    InputContext,
    OutputContext,
    TimeWindow,
    TimeWindowPartitionsDefinition,
)
from pydantic import Field

from countysync_assets.io_managers.output_transactions import OutputTransactions
from countysync_assets.io_managers.publishing import (
    StagedWrite,
    asset_name,
    export_path,
    quote,
    staged_files,
    temp_sibling,
    timestamps_to_iso,
)
from countysync_assets.partitions import partition_keys_for, rows_window

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


@dataclass
class OutputTarget:
    """One output as its writers see it: the asset, how it is stored (its definition metadata)
    and the partitions the run writes (none for an unpartitioned asset)."""

    name: str
    metadata: dict
    run_id: str
    partition_keys: list[str] = field(default_factory=list)
    partitions_def: TimeWindowPartitionsDefinition | None = None

    @classmethod
    def of(cls, context: OutputContext) -> "OutputTarget":
        """The target of the output Dagster hands an IO manager."""
        if not context.has_asset_partitions:
            return cls(asset_name(context), context.definition_metadata or {}, context.run_id)
        return cls(asset_name(context), context.definition_metadata or {}, context.run_id,
                   list(context.asset_partition_keys), context.asset_partitions_def)


def input_window(context: InputContext) -> TimeWindow | None:
    """The cursor window of the upstream partitions an input asks for (the first partition's
    reaching back to 1970: the baseline), or None when it asks for the whole table: an
    unpartitioned asset (a county-wide summary, the delete check) depends on every partition,
    and rows outside the partitions' range count for it too."""
    cursor = (context.upstream_output.definition_metadata or {}).get(CURSOR_COLUMN)
    if not (cursor and context.has_asset_partitions):
        return None
    partitions_def, requested = context.asset_partitions_def, context.asset_partition_key_range
    if (requested.start, requested.end) == (partitions_def.get_first_partition_key(),
                                            partitions_def.get_last_partition_key()):
        return None
    return rows_window(partitions_def, context.asset_partitions_time_window)


def in_window(cursor: str, window: TimeWindow) -> str:
    """A filter in both SQLite's and OGR's SQL: the rows whose ``cursor`` (UTC ISO text, as
    every output stores it) falls in ``window``."""
    return (f"{quote(cursor)} >= '{window.start:%Y-%m-%dT%H:%M:%S}' AND "
            f"{quote(cursor)} < '{window.end:%Y-%m-%dT%H:%M:%S}'")


def removals(frame: pd.DataFrame, as_of: str) -> pd.DataFrame:
    """What a ``RemovalWriter`` takes: each id, and the version (its ``as_of`` column) up to
    which a stored row of that id goes. Rows without a time to compare (``as_of`` not a
    timestamp column) remove every stored version; rows without an id remove nothing."""
    ids = frame[["id"]].assign(as_of=frame[as_of] if pd.api.types.is_datetime64_any_dtype(
        frame[as_of]) else LATEST)
    return ids[ids["id"].notna()].reset_index(drop=True)


class BatchWriter:
    """Takes one output's rows batch by batch and stages them; ``finish`` returns what
    publishes them. ``discard`` removes what was staged (after a failure). ``database`` is
    the database file whose one transaction it writes in (None: files of its own), so
    writers of different files may finish side by side."""

    database: Path | None = None

    def write(self, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def finish(self) -> StagedWrite:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


class FormatIOManager(ConfigurableIOManager):
    """Writes an asset in one format under ``export_dir``."""

    export_dir: str = Field(default="exports", description="Folder that holds every output.")
    lock_wait_seconds: float = Field(
        default=120, description="How long a write waits for another program's lock on an "
        "output database before the run fails.")

    def open(self, target: OutputTarget, files: OutputTransactions) -> BatchWriter:
        """A writer for ``target``. Database writes go through ``files``, one transaction per
        file; file writes go to temp files renamed into place on commit."""
        raise NotImplementedError

    def open_delete(self, asset: str, metadata: dict, run_id: str, files: OutputTransactions
                    ) -> "RemovalWriter":
        """A writer that removes ids from ``asset``'s current state (stores that hold one)."""
        raise NotImplementedError(f"{type(self).__name__} holds no current state to delete from")

    def stage(self, target: OutputTarget, frame: pd.DataFrame,
              files: OutputTransactions) -> StagedWrite:
        """``frame`` written as one batch and staged."""
        writer = self.open(target, files)
        try:
            writer.write(frame)
            return writer.finish()
        except BaseException:
            writer.discard()
            raise

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        files = OutputTransactions(self.lock_wait_seconds)
        staged = self.stage(OutputTarget.of(context), obj, files)
        try:
            files.publish([staged])
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


class RemovalWriter:
    """Removes from an asset's current state each id (columns ``id``, ``as_of``) whose stored
    version is no newer than ``as_of``, batch by batch, in the output's transaction. Parcels
    deleted from the source also come as ``tombstones``, which a store may keep."""

    def write(self, removals: pd.DataFrame, tombstones: pd.DataFrame | None = None) -> None:
        raise NotImplementedError

    def finish(self) -> StagedWrite:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


class PartitionedFileIOManager(FormatIOManager):
    """One file per partition (the rows that changed in that window), published by rename.

    A run over a partition range writes every partition's file in one pass over the batches;
    a window with no changes gets an empty file, so every synced window has its file. A file
    whose content a rerun leaves as it was is not replaced (its time stays), so a folder
    mirrored by date is not recopied.
    """

    extension: ClassVar[str] = ""

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Conversions done once per batch, before it is split by partition."""
        return timestamps_to_iso(frame)

    def append(self, frame: pd.DataFrame, temp: Path, first: bool) -> None:
        """Add ``frame``'s rows to the file being written at ``temp`` (``first``: it is new)."""
        raise NotImplementedError

    def close(self, temp: Path, empty: pd.DataFrame, written: bool) -> None:
        """Complete the file at ``temp``; ``written`` False: it got no rows (``empty`` has the
        columns)."""
        raise NotImplementedError

    def open(self, target: OutputTarget, files: OutputTransactions) -> BatchWriter:
        return PartitionedFileWriter(self, target)

    def file_for(self, asset: str, key: str | None) -> Path:
        """Where ``asset``'s file for partition ``key`` is published (None: unpartitioned)."""
        if key is None:
            return export_path(self.export_dir, f"{asset}{self.extension}")
        return export_path(self.export_dir, asset, f"{key}{self.extension}")


class PartitionedFileWriter(BatchWriter):
    """The files of one output: a temp file per partition, filled as batches come."""

    def __init__(self, manager: PartitionedFileIOManager, target: OutputTarget):
        self.manager, self.target = manager, target
        self.finals = {key: manager.file_for(target.name, key)
                       for key in target.partition_keys or [None]}
        for final in self.finals.values():
            if final.exists() and not final.is_file():
                raise IsADirectoryError(
                    f"{final} is in the way of the {manager.extension} output: it is not a "
                    "file. Move it out of the export folder and re-run.")
        self.temps = {key: temp_sibling(final) for key, final in self.finals.items()}
        self.written: set[str | None] = set()
        self.empty: pd.DataFrame | None = None

    def write(self, frame: pd.DataFrame) -> None:
        prepared = self.manager.prepare(frame)
        if self.empty is None:
            self.empty = prepared.iloc[:0]
        if not len(frame):
            return
        if not self.target.partition_keys:
            self._append(None, prepared)
            return
        cursor = self.target.metadata[CURSOR_COLUMN]
        keys = self.target.partition_keys
        labels = partition_keys_for(self.target.partitions_def, keys, frame[cursor])
        if labels.isna().any():
            raise ValueError(
                f"{int(labels.isna().sum())} row(s) of {self.target.name} have {cursor} outside "
                f"the partitions being written ({keys[0]} to {keys[-1]}).")
        for key, group in prepared.groupby(labels, sort=False):
            self._append(key, group)

    def _append(self, key: str | None, frame: pd.DataFrame) -> None:
        self.manager.append(frame, self.temps[key], key not in self.written)
        self.written.add(key)

    def finish(self) -> StagedWrite:
        """Every file completed; commit renames those whose content changed."""
        renames = []
        try:
            for key, temp in self.temps.items():
                self.manager.close(temp, self.empty, key in self.written)
                final = self.finals[key]
                if final.is_file() and filecmp.cmp(temp, final, shallow=False):
                    temp.unlink()  # the same content: leave the published file as it is
                else:
                    renames.append((temp, final))
        except BaseException:
            self.discard()
            raise
        kind = self.manager.extension.lstrip(".")
        staged = staged_files(f"{self.target.name} {self.manager.extension}", renames)
        staged.metadata = {f"{kind}_files_changed": len(renames)}
        if len(self.finals) == 1:
            staged.metadata[f"{kind}_path"] = str(next(iter(self.finals.values())))
        else:
            staged.metadata[f"{kind}_folder"] = str(next(iter(self.finals.values())).parent)
        return staged

    def discard(self) -> None:
        for temp in self.temps.values():
            temp.unlink(missing_ok=True)
