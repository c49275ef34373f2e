"""The IO manager every asset uses: writes each asset to its configured formats, all or nothing.

Formats per asset come from the asset's ``countysync/formats`` metadata, overridden by the
``formats`` config (``COUNTYSYNC_FORMATS`` in the environment), so a county can add or drop a
format without code changes. Every format stages first; only when all have staged does any
publish, so if one writer fails the outputs stay exactly as they were before the run.
Inputs are loaded from the asset's first format that can load (SQLite or GeoPackage).
"""

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext
from pydantic import Field

from countysync_assets.io_managers.csv_io_manager import CsvIOManager
from countysync_assets.io_managers.format_io_manager import (
    DELETES_FROM,
    FIRST_WRITE,
    FORMATS,
    SUPERSEDES,
    FormatIOManager,
    removals,
)
from countysync_assets.io_managers.geojson_io_manager import GeoJsonIOManager
from countysync_assets.io_managers.geopackage_io_manager import GeoPackageIOManager
from countysync_assets.io_managers.json_io_manager import JsonIOManager
from countysync_assets.io_managers.output_transactions import (
    OutputTransactions,
    check_room,
    explain,
)
from countysync_assets.io_managers.publishing import asset_name, remove_stale_temps
from countysync_assets.io_managers.sqlite_io_manager import SQLiteIOManager

FORMAT_MANAGERS: dict[str, type[FormatIOManager]] = {
    "sqlite": SQLiteIOManager,
    "gpkg": GeoPackageIOManager,
    "csv": CsvIOManager,
    "json": JsonIOManager,
    "geojson": GeoJsonIOManager,
}
LOADABLE = ("sqlite", "gpkg")


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
        if unknown or not chosen:
            raise ValueError(f"COUNTYSYNC_FORMATS gives {name!r} the formats {chosen}; each must "
                             f"be one of {', '.join(FORMAT_MANAGERS)} and at least one is needed.")


def removals_from_others(
    definition_metadata: dict, obj: pd.DataFrame
) -> Iterator[tuple[str, dict, pd.DataFrame, pd.DataFrame | None]]:
    """What writing ``obj`` removes from other assets' current state, as (asset, its storage
    metadata, ids with the version they remove up to, tombstones to keep or None).

    Tombstones remove their ids as of ``deleted_at`` and are kept; an output that supersedes
    another removes the older versions of its ids there, so a parcel whose geometry is fixed
    leaves geometry_rejects and one whose geometry breaks leaves the GeoPackage."""
    for name, metadata in (definition_metadata.get(DELETES_FROM) or {}).items():
        yield name, metadata, removals(obj, "deleted_at"), obj
    for name, metadata in (definition_metadata.get(SUPERSEDES) or {}).items():
        yield name, metadata, removals(obj, "updated_at"), None


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

    def formats_for(self, context: OutputContext | InputContext) -> list[str]:
        metadata = (context.upstream_output if isinstance(context, InputContext)
                    else context).definition_metadata or {}
        return self.formats_of(asset_name(context), metadata)

    def formats_of(self, name: str, metadata: dict) -> list[str]:
        """The configured formats of asset ``name``, else those its metadata declares."""
        if name in self.formats:
            return self.formats[name]
        return list(metadata.get(FORMATS) or ["sqlite"])

    def manager(self, fmt: str) -> FormatIOManager:
        settings = {"export_dir": self.export_dir, "lock_wait_seconds": self.lock_wait_seconds}
        if fmt == "gpkg":
            return GeoPackageIOManager(**settings, file_name=self.gpkg_file_name)
        return FORMAT_MANAGERS[fmt](**settings)

    def databases(self) -> list[Path]:
        """Every database file an output may be written to."""
        root = Path(self.export_dir)
        return [*sorted(root.glob("*.sqlite")), root / self.gpkg_file_name]

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        try:
            self._publish(context, obj)
        except (OSError, sqlite3.Error) as err:
            clear = explain(err, asset_name(context), self.export_dir)
            if clear is None:
                raise
            raise clear from None

    def _publish(self, context: OutputContext, obj: Any) -> None:
        # Transactions commit first (in the order formats are listed): should one fail,
        # no file has been renamed into place yet.
        chosen = sorted(self.formats_for(context), key=list(FORMAT_MANAGERS).index)
        if removed := remove_stale_temps(self.export_dir):
            context.log.info(f"Removed {removed} bytes of staging files a killed run left.")
        files = OutputTransactions(self.lock_wait_seconds)
        if (context.definition_metadata or {}).get(FIRST_WRITE):
            check_room(self.export_dir, obj, asset_name(context))
            files.check_writable(self.databases())
        staged = []
        try:
            for name, metadata, ids, tombstones in removals_from_others(
                    context.definition_metadata or {}, obj):
                for fmt in self.formats_of(name, metadata):
                    if fmt in LOADABLE:
                        staged.append(self.manager(fmt).stage_delete(
                            name, metadata, ids, context.run_id, files, tombstones))
            for fmt in chosen:
                staged.append(self.manager(fmt).stage(context, obj, files))
        except BaseException:
            for write in staged:
                write.rollback()
            raise
        for position, write in enumerate(staged):
            try:
                write.commit()
            except BaseException:
                for later in staged[position + 1:]:
                    later.rollback()
                raise
        metadata: dict[str, Any] = {"formats": ", ".join(chosen)}
        for write in staged:
            metadata.update(write.metadata)
        context.add_output_metadata(metadata)

    def load_input(self, context: InputContext) -> Any:
        chosen = self.formats_for(context)
        for fmt in chosen:
            if fmt in LOADABLE:
                return self.manager(fmt).load_input(context)
        raise TypeError(
            f"{context.asset_key.to_user_string()} is written only as {chosen}, which cannot be "
            "read back; add 'sqlite' (or 'gpkg') to its formats to use it as an input."
        )
