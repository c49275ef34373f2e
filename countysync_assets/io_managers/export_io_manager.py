"""The IO manager every asset uses: writes each asset to its configured formats, all or nothing.

Formats per asset come from the asset's ``countysync/formats`` metadata, overridden by the
``formats`` config (``COUNTYSYNC_FORMATS`` in the environment), so a county can add or drop a
format without code changes (an empty list: the asset is not written). A step opens its
outputs together (``open_outputs``), feeds them batch by batch, and publishes them all or
none: every format stages first; only when all have staged does any publish, so if one
writer fails the outputs stay exactly as they were before the run. Inputs are loaded from
the asset's first format that can load (SQLite or GeoPackage).
"""

import json
import sqlite3
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
    TableColumn,
    TableMetadataValue,
    TableRecord,
    TableSchema,
    TimeWindow,
    get_dagster_logger,
)
from pydantic import Field

from countysync_assets.io_managers.csv_io_manager import CsvIOManager
from countysync_assets.io_managers.format_io_manager import (
    DELETES_FROM,
    FIRST_WRITE,
    FORMATS,
    SUPERSEDES,
    BatchWriter,
    FormatIOManager,
    OutputTarget,
    RemovalWriter,
    removals,
)
from countysync_assets.io_managers.geojson_io_manager import GeoJsonIOManager
from countysync_assets.io_managers.geopackage_io_manager import GeoPackageIOManager
from countysync_assets.io_managers.json_io_manager import JsonIOManager
from countysync_assets.io_managers.output_process import OutputProcess
from countysync_assets.io_managers.output_transactions import (
    OutputTransactions,
    check_room,
    explain,
)
from countysync_assets.io_managers.publishing import (
    StagedWrite,
    asset_name,
    remove_stale_temps,
)
from countysync_assets.io_managers.sqlite_io_manager import SQLiteIOManager

FORMAT_MANAGERS: dict[str, type[FormatIOManager]] = {
    "sqlite": SQLiteIOManager,
    "gpkg": GeoPackageIOManager,
    "csv": CsvIOManager,
    "json": JsonIOManager,
    "geojson": GeoJsonIOManager,
}
LOADABLE = ("sqlite", "gpkg")
# written by a big run's second process: the GeoPackage and the per-window files, which
# measured as about half the work of a first sync (the SQLite tables stay with the run)
SECOND_PROCESS_FORMATS = ("gpkg", "geojson", "csv", "json")
PARALLEL_ROWS = 100_000
PREVIEW_ROWS = 5  # rows of what a run wrote, shown in its materialization's metadata


def preview(rows: pd.DataFrame) -> TableMetadataValue:
    """The rows as a table in the UI (Dagster's table metadata), without geometry or bytes.
    (A markdown table needed tabulate, whose import took ~0.1 s of every run.)"""
    shown = rows[[c for c in rows.columns if c != "geometry"
                  and not rows[c].map(lambda v: isinstance(v, bytes)).any()]]
    cells = shown.astype(object).where(shown.notna(), None)
    return MetadataValue.table(
        records=[TableRecord({column: _cell(value) for column, value in row.items()})
                 for row in cells.to_dict("records")],
        schema=TableSchema(columns=[TableColumn(str(column), str(dtype))
                                    for column, dtype in shown.dtypes.items()]))


def _cell(value: object) -> str | int | float | bool | None:
    """A value as a table cell holds it: numbers and text as they are, times as text."""
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def parse_formats(text: str | None) -> dict[str, list[str]]:
    """``COUNTYSYNC_FORMATS`` (JSON, e.g. ``{"working": ["sqlite", "csv"]}``) as a mapping."""
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"COUNTYSYNC_FORMATS is not valid JSON ({err.msg}); write it like "
            '{"working": ["sqlite", "csv"], "stats": ["sqlite"]}.'
        ) from None
    if not isinstance(value, dict) or not all(
        isinstance(v, list) and all(isinstance(f, str) for f in v) for v in value.values()
    ):
        raise ValueError('COUNTYSYNC_FORMATS must map asset names to lists of formats, like '
                         '{"working": ["sqlite", "csv"]}.')
    return value


def check_formats(formats: dict[str, list[str]], asset_names: set[str]) -> None:
    """Refuse unknown assets and formats with a message that lists the valid ones."""
    for name, chosen in formats.items():
        if name not in asset_names:
            raise ValueError(f"COUNTYSYNC_FORMATS names asset {name!r}, which does not exist; "
                             f"assets: {', '.join(sorted(asset_names))}.")
        unknown = [f for f in chosen if f not in FORMAT_MANAGERS]
        if unknown:
            raise ValueError(f"COUNTYSYNC_FORMATS gives {name!r} the formats {chosen}; each must "
                             f"be one of {', '.join(FORMAT_MANAGERS)} (or none: [] turns the "
                             "asset's files off).")


def removal_targets(definition_metadata: dict) -> Iterator[tuple[str, dict, bool]]:
    """The assets an output's rows remove ids from, as (asset, its storage metadata, whether
    the rows are tombstones).

    Tombstones remove their ids as of ``deleted_at`` and are kept; an output that supersedes
    another removes the older versions of its ids there (as of ``updated_at``), so a parcel
    whose geometry is fixed leaves geometry_rejects and one whose geometry breaks leaves the
    GeoPackage."""
    for name, metadata in (definition_metadata.get(DELETES_FROM) or {}).items():
        yield name, metadata, True
    for name, metadata in (definition_metadata.get(SUPERSEDES) or {}).items():
        yield name, metadata, False


def chosen_formats(manager: "ExportIOManager", name: str, metadata: dict,
                   only: Collection[str] | None) -> list[str]:
    """The formats of asset ``name`` that a set of outputs limited to ``only`` (None: all)
    writes, databases first."""
    chosen = [fmt for fmt in manager.formats_of(name, metadata) if only is None or fmt in only]
    return sorted(chosen, key=list(FORMAT_MANAGERS).index)


def changes_any(manager: "ExportIOManager", target: OutputTarget,
                only: Collection[str]) -> bool:
    """Whether rows of ``target`` change anything stored in the formats ``only``: its own
    files there, or removals from another asset stored there."""
    return bool(chosen_formats(manager, target.name, target.metadata, only)) or any(
        fmt in LOADABLE
        for other, metadata, _ in removal_targets(target.metadata)
        for fmt in chosen_formats(manager, other, metadata, only))


class OutputSet:
    """The outputs of one step, written batch by batch and published together: every format
    of every output stages first; only when all have staged does any publish, so if one
    writer fails the outputs stay exactly as they were before the run. ``only`` limits the
    set to some formats (``ParallelOutputs`` gives the rest to another process)."""

    def __init__(self, manager: "ExportIOManager", targets: list[OutputTarget],
                 only: Collection[str] | None = None):
        self.manager, self.only = manager, only
        self.targets = {target.name: target for target in targets}
        self.files = OutputTransactions(manager.lock_wait_seconds)
        self.writers: dict[str, list[tuple[str, BatchWriter]]] = {}
        self.removers: dict[tuple[str, str], RemovalWriter] = {}
        self.staged: list[StagedWrite] = []
        self.previews: dict[str, pd.DataFrame] = {}  # each output's first rows of the run
        if any(target.metadata.get(FIRST_WRITE) for target in targets):
            self.files.check_writable(manager.databases(only))
        try:
            for target in targets:
                self.writers[target.name] = []
                for fmt in chosen_formats(manager, target.name, target.metadata, only):
                    # each kept as it opens, so a failure rolls it back too
                    self.writers[target.name].append(
                        (fmt, manager.manager(fmt).open(target, self.files)))
        except BaseException:
            self.rollback()
            raise

    def formats(self, name: str) -> list[str]:
        return [fmt for fmt, _ in self.writers[name]]

    def write(self, name: str, frame: pd.DataFrame) -> None:
        """One batch of output ``name``: it removes what it supersedes elsewhere, and goes to
        every format of the output."""
        if name not in self.previews and len(frame):
            self.previews[name] = frame.head(PREVIEW_ROWS)
        try:
            for other, metadata, tombstones in removal_targets(self.targets[name].metadata):
                stores = [fmt for fmt in chosen_formats(self.manager, other, metadata, self.only)
                          if fmt in LOADABLE]
                if stores:
                    ids = removals(frame, "deleted_at" if tombstones else "updated_at")
                    for fmt in stores:
                        self._remover(other, fmt, metadata).write(
                            ids, frame if tombstones else None)
            for _, writer in self.writers[name]:
                writer.write(frame)
        except BaseException:
            self.rollback()
            raise

    def _remover(self, asset: str, fmt: str, metadata: dict) -> RemovalWriter:
        if (asset, fmt) not in self.removers:
            self.removers[asset, fmt] = self.manager.manager(fmt).open_delete(
                asset, metadata, next(iter(self.targets.values())).run_id, self.files)
        return self.removers[asset, fmt]

    def stage(self) -> dict[str, dict]:
        """Stage what is left (indexes, merges, file ends); returns each output's metadata.

        Each database file's writers finish on a thread of their own, beside the other
        files' and the per-window files: SQLite lets go of Python's lock while it merges and
        builds indexes, so the tables' merges overlap (a 1% sync of 1,000,000 parcels spent
        ~0.5 s merging its tables and GeoPackage one after the other)."""
        writers = [(name, writer) for name, pairs in self.writers.items()
                   for _, writer in pairs]
        by_file: dict[object, list[int]] = {}  # writers sharing a transaction: in turn
        for position, (_, writer) in enumerate(writers):
            by_file.setdefault(writer.database or position, []).append(position)

        def finish(positions: list[int]) -> list[tuple[int, StagedWrite]]:
            return [(position, writers[position][1].finish()) for position in positions]

        metadata: dict[str, dict] = {}
        try:
            # raises the first failure once every thread has ended; then all are discarded
            with ThreadPoolExecutor(max(len(by_file), 1)) as pool:
                finished = dict(pair for pairs in pool.map(finish, by_file.values())
                                for pair in pairs)
            self.staged.extend(finished[position] for position in range(len(writers)))
            for name in self.writers:
                metadata[name] = {"formats": ", ".join(self.formats(name))}
                if name in self.previews:
                    metadata[name]["preview"] = preview(self.previews[name])
            for position, (name, _) in enumerate(writers):
                metadata[name].update(finished[position].metadata)
            for (asset, _), remover in self.removers.items():  # after the layers
                self.staged.append(remover.finish())
                if asset in metadata:
                    metadata[asset].update(self.staged[-1].metadata)
        except BaseException:
            self.rollback()
            raise
        return metadata

    def commit(self) -> None:
        """Publish every staged output (after ``stage``)."""
        self.files.publish(self.staged)

    def publish(self) -> dict[str, dict]:
        """Stage, then publish every output; returns each output's metadata."""
        metadata = self.stage()
        self.commit()
        return metadata

    def rollback(self) -> None:
        for write in self.staged:
            write.rollback()
        for writers in self.writers.values():
            for _, writer in writers:
                writer.discard()
        for remover in self.removers.values():
            remover.discard()
        self.files.rollback()


class ParallelOutputs:
    """The outputs of a big step on two cores: the GeoPackage and the per-window files
    (``SECOND_PROCESS_FORMATS``) staged by a second process, the SQLite tables here. Both
    sides stage before either publishes, so the rule of ``OutputSet`` holds: all outputs or
    none."""

    def __init__(self, manager: "ExportIOManager", targets: list[OutputTarget]):
        self.manager = manager
        self.local = OutputSet(manager, targets, [f for f in FORMAT_MANAGERS
                                                  if f not in SECOND_PROCESS_FORMATS])
        try:
            self.remote = OutputProcess(manager, targets, SECOND_PROCESS_FORMATS)
        except BaseException:
            self.local.rollback()
            raise
        self.sent = {target.name for target in targets
                     if changes_any(manager, target, SECOND_PROCESS_FORMATS)}
        get_dagster_logger().info(
            f"Writing the {', '.join(SECOND_PROCESS_FORMATS)} outputs in a second process (pid "
            f"{self.remote.process.pid}), the others in this one.")
        self.targets = {target.name: target for target in targets}

    def formats(self, name: str) -> list[str]:
        return chosen_formats(self.manager, name, self.targets[name].metadata, None)

    def write(self, name: str, frame: pd.DataFrame) -> None:
        try:
            if name in self.sent:
                self.remote.write(name, frame)
            self.local.write(name, frame)
        except BaseException:
            self.rollback()
            raise

    def publish(self) -> dict[str, dict]:
        """Both sides stage side by side; then the other process publishes, then this one."""
        try:
            self.remote.ask("stage")
            metadata = self.local.stage()
            for name, theirs in self.remote.answer().items():
                metadata[name] = {**metadata.get(name, {}), **theirs,
                                  "formats": ", ".join(self.formats(name))}
            self.remote.commit()
        except BaseException:
            self.rollback()
            raise
        self.local.commit()
        return metadata

    def rollback(self) -> None:
        self.remote.rollback()
        self.local.rollback()


class ExportIOManager(ConfigurableIOManager):
    """Routes each asset to its formats under one export folder."""

    export_dir: str = Field(default="exports", description="Folder that holds every output.")
    formats: dict[str, list[str]] = Field(
        default_factory=dict, description="Formats per asset name, overriding the defaults."
    )
    gpkg_file_name: str = Field(default="geo_db.gpkg", description="GeoPackage file name.")
    lock_wait_seconds: float = Field(
        default=120, description="How long a write waits for another program's lock on an "
        "output database (a desktop GIS editing it) before the run fails.")
    parallel_rows: int = Field(
        default=PARALLEL_ROWS, ge=0, description="A run that reads at least this many rows "
        "writes the GeoPackage and the CSV, JSON and GeoJSON files in a second process, on "
        "another core; 0: never. Below it, starting a process costs more than it saves.")

    def formats_for(self, context: OutputContext | InputContext) -> list[str]:
        metadata = (context.upstream_output if isinstance(context, InputContext)
                    else context).definition_metadata or {}
        return self.formats_of(asset_name(context), metadata)

    def formats_of(self, name: str, metadata: dict) -> list[str]:
        """The configured formats of asset ``name``, else those its metadata declares."""
        if name in self.formats:
            return self.formats[name]
        return list(metadata.get(FORMATS, ["sqlite"]))

    def holds_state(self, name: str, metadata: dict) -> bool:
        """Whether asset ``name`` keeps its current state in a format that can be read back
        (SQLite or GeoPackage), so checks can compare it; not where COUNTYSYNC_FORMATS leaves
        it out or writes only files."""
        return self._state_format(name, metadata) is not None

    def manager(self, fmt: str) -> FormatIOManager:
        settings = {"export_dir": self.export_dir, "lock_wait_seconds": self.lock_wait_seconds}
        if fmt == "gpkg":
            return GeoPackageIOManager(**settings, file_name=self.gpkg_file_name)
        return FORMAT_MANAGERS[fmt](**settings)

    def databases(self, only: Collection[str] | None = None) -> list[Path]:
        """Every database file an output (in the formats ``only``) may be written to."""
        root = Path(self.export_dir)
        return [*(sorted(root.glob("*.sqlite")) if only is None or "sqlite" in only else []),
                *([root / self.gpkg_file_name] if only is None or "gpkg" in only else [])]

    def open_outputs(self, targets: list[OutputTarget], rows: int = 0,
                     only: Collection[str] | None = None) -> "OutputSet | ParallelOutputs":
        """Writers for the outputs of one step, to be fed batch by batch and published
        together (see ``OutputSet``); for ``rows`` of at least ``parallel_rows``, on two cores
        (``ParallelOutputs``); ``only``: just these formats. Staging files a killed run left
        are removed first."""
        if removed := remove_stale_temps(self.export_dir):
            get_dagster_logger().info(
                f"Removed {removed} bytes of staging files a killed run left.")
        if (only is None and self.parallel_rows and rows >= self.parallel_rows
                and any(changes_any(self, target, SECOND_PROCESS_FORMATS) for target in targets)):
            return ParallelOutputs(self, targets)
        return OutputSet(self, targets, only)

    def newest_synced(self, outputs: dict[str, dict]) -> datetime | None:
        """The newest ``updated_at`` (UTC) the SQLite outputs among ``outputs`` (asset ->
        definition metadata) hold, however they were written; None if none is."""
        values = [self.manager("sqlite").newest(name, metadata)
                  for name, metadata in outputs.items()
                  if "sqlite" in self.formats_of(name, metadata)]
        values = [v for v in values if v]
        return datetime.fromisoformat(max(values)) if values else None

    def _state_format(self, name: str, metadata: dict) -> str | None:
        """The first format of asset ``name`` that keeps its current state (see
        ``holds_state``)."""
        return next((fmt for fmt in self.formats_of(name, metadata) if fmt in LOADABLE), None)

    def iter_columns(self, name: str, metadata: dict, columns: list[str],
                     window: TimeWindow | None = None) -> Iterator[pd.DataFrame]:
        """``columns`` of every row asset ``name`` holds (last changed in ``window``, if
        given), in chunks, from its first format that can be read (SQLite or GeoPackage);
        nothing if it was never written."""
        if fmt := self._state_format(name, metadata):
            yield from self.manager(fmt).iter_columns(name, metadata, columns, window)

    def count_rows(self, name: str, metadata: dict) -> int:
        """How many rows asset ``name``'s current state holds (0 if it keeps none)."""
        fmt = self._state_format(name, metadata)
        return self.manager(fmt).count(name, metadata) if fmt else 0

    def iter_features(self, name: str, metadata: dict, columns: list[str],
                      ids: list[int] | None = None, window: TimeWindow | None = None,
                      geometry: bool = True) -> Iterator[pd.DataFrame]:
        """``columns`` and (unless ``geometry`` is False) the geometry of the features asset
        ``name`` holds (those with ``ids``, or last changed in ``window``, if given), in
        chunks, from its GeoPackage layer; nothing if it has none."""
        if "gpkg" in self.formats_of(name, metadata):
            yield from self.manager("gpkg").iter_features(name, metadata, columns, ids, window,
                                                          geometry)

    def files_for(self, name: str, metadata: dict, fmt: str, keys: list[str]) -> list[Path]:
        """The published per-partition files of asset ``name`` in format ``fmt`` for
        ``keys`` (none if the asset is not stored in that format)."""
        if fmt not in self.formats_of(name, metadata):
            return []
        return [self.manager(fmt).file_for(name, key) for key in keys]

    def check_room(self, expected_bytes: int, what: str) -> None:
        """Refuse to start when the export disk cannot hold what the run will write."""
        check_room(self.export_dir, expected_bytes, what)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """One output written as a single batch."""
        with self.explained(asset_name(context)):
            target = OutputTarget.of(context)
            if target.metadata.get(FIRST_WRITE):
                self.check_room(int(obj.memory_usage(deep=True).sum()), target.name)
            outputs = self.open_outputs([target])
            outputs.write(target.name, obj)
            context.add_output_metadata(outputs.publish()[target.name])

    @contextmanager
    def explained(self, what: str) -> Iterator[None]:
        """Failures of the machine (a full disk, a read-only folder) as one clear line."""
        try:
            yield
        except (OSError, sqlite3.Error) as err:
            clear = explain(err, what, self.export_dir)
            if clear is None:
                raise
            raise clear from None

    def load_input(self, context: InputContext) -> Any:
        metadata = context.upstream_output.definition_metadata or {}
        if fmt := self._state_format(asset_name(context), metadata):
            return self.manager(fmt).load_input(context)
        raise TypeError(
            f"{context.asset_key.to_user_string()} is written only as "
            f"{self.formats_for(context)}, which cannot be read back; add 'sqlite' (or 'gpkg') "
            "to its formats to use it as an input."
        )
