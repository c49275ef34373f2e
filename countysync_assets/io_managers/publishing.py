"""What every format writer shares: safe paths under the export folder, staged writes that
publish atomically (rename or commit) or roll back, one text form for timestamps and one
geometry type for parcels (MultiPolygon).

A writer *stages* its output first (temp files, an open transaction) and only *commits* once
every format of the asset has staged, so a failing writer leaves all outputs as they were.
"""

import os
import re
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from dagster import InputContext, OutputContext

from countysync_assets.processes import process_alive

_SAFE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


def safe_part(name: str) -> str:
    """A file-name part from an asset or partition key; refuses anything that could escape.

    Hourly keys (``2026-01-05-13:00``) lose the colon, which Windows file systems refuse.
    """
    cleaned = name.replace(":", "")
    if not _SAFE_PART.fullmatch(cleaned) or ".." in cleaned:
        raise ValueError(
            f"{name!r} cannot be used in an export file name: asset and partition keys may "
            "only hold letters, digits, '_', '-', '.' and ':'."
        )
    return cleaned


def export_path(export_dir: str | os.PathLike, *parts: str) -> Path:
    """``export_dir/part/...``, guaranteed to stay inside ``export_dir``."""
    root = Path(export_dir).resolve()
    path = root.joinpath(*(safe_part(p) for p in parts)).resolve()
    if root not in path.parents:
        raise ValueError(f"{path} is outside the export folder {root}.")
    return path


def asset_name(context: OutputContext | InputContext) -> str:
    """The asset's name (last key part), which names its table, layer and files."""
    return context.asset_key.path[-1]


def temp_sibling(path: Path) -> Path:
    """A hidden temp path in the same folder, so ``os.replace`` onto ``path`` is atomic.

    It keeps the extension last, as GDAL expects of a GeoPackage, and names the process that
    writes it, so a later run can tell a dead writer's leftovers (``remove_stale_temps``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp{path.suffix}")


_TEMP = re.compile(r"^\..*\.(\d+)-[0-9a-f]{6}\.tmp")


def remove_stale_temps(export_dir: str | os.PathLike) -> int:
    """Delete the staging files that writers killed before they could clean up left behind
    (their process is gone, or is a newer one with the same number); bytes removed."""
    removed = 0
    root = Path(export_dir)
    for path in [*root.glob(".*.tmp*"), *root.glob("*/.*.tmp*")]:
        match = _TEMP.match(path.name)
        if not match:
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:  # its writer just published or discarded it
            continue
        if process_alive(int(match.group(1)), stat.st_mtime):
            continue  # its writer still runs
        removed += stat.st_size
        path.unlink(missing_ok=True)
    return removed


def as_multipolygons(geometry: np.ndarray) -> np.ndarray:
    """Polygons wrapped as one-part MultiPolygons (one geometry type per layer); the rest
    as they are. The sync's outlines come as MultiPolygons already (``clean_geometry``), so
    the writers only check."""
    multi = geometry.copy()
    single = shapely.get_type_id(geometry) == 3  # Polygon
    if single.any():
        multi[single] = shapely.multipolygons(geometry[single],
                                              indices=np.arange(int(single.sum())))
    return multi


def timestamps_to_iso(frame: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns as ISO 8601 UTC text with microseconds and offset; other columns kept.

    The fixed width makes the text sort like the instant, which the SQLite merge relies on.
    """
    converted = {}
    for column, dtype in frame.dtypes.items():
        if not pd.api.types.is_datetime64_any_dtype(dtype):
            continue
        values = frame[column]
        if isinstance(dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        # numpy formats in C; strftime would be a Python call per value
        text = np.datetime_as_string(values.to_numpy(dtype="datetime64[us]"), unit="us")
        converted[column] = pd.Series(np.char.add(text, "+00:00"), index=frame.index,
                                      dtype=object).where(values.notna(), None)
    return frame.assign(**converted) if converted else frame


@dataclass
class StagedWrite:
    """Output staged by one writer: ``commit`` publishes it, ``rollback`` discards it."""

    description: str
    commit_steps: list[Callable[[], None]] = field(default_factory=list)
    rollback_steps: list[Callable[[], None]] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def commit(self) -> None:
        for step in self.commit_steps:
            step()

    def rollback(self) -> None:
        for step in self.rollback_steps:
            step()


def staged_files(description: str, files: list[tuple[Path, Path]]) -> StagedWrite:
    """Temp files already written; commit renames each onto its final path."""

    def publish() -> None:
        for temp, final in files:
            os.replace(temp, final)

    def discard() -> None:
        for temp, _ in files:
            temp.unlink(missing_ok=True)

    return StagedWrite(description, [publish], [discard])


def abandon(conn: sqlite3.Connection) -> None:
    """Roll back whatever the connection has begun, and close it (a failed stage; closing
    twice is harmless)."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.ProgrammingError:  # already closed
        return
    finally:
        conn.close()


def quote(identifier: str) -> str:
    """An SQLite identifier, quoted so any column name is safe."""
    return '"' + identifier.replace('"', '""') + '"'


