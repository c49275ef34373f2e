"""CSV: one file per partition with the rows that changed in its window, for spreadsheets."""

from pathlib import Path

import pandas as pd

from countysync_assets.io_managers.format_io_manager import PartitionedFileIOManager


class CsvIOManager(PartitionedFileIOManager):
    """``<export_dir>/<asset>/<partition>.csv``: UTF-8, header row, ISO 8601 timestamps,
    fields quoted where they need it (pandas' csv module rules, as spreadsheets expect)."""

    extension = ".csv"

    def append(self, frame: pd.DataFrame, temp: Path, first: bool) -> None:
        frame.to_csv(temp, mode="w" if first else "a", header=first, index=False,
                     encoding="utf-8")

    def close(self, temp: Path, empty: pd.DataFrame | None, written: bool) -> None:
        if not written:  # the header alone
            (empty if empty is not None else pd.DataFrame()).to_csv(temp, index=False,
                                                                   encoding="utf-8")
