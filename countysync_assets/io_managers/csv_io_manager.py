"""CSV: one file per partition with the rows that changed in its window, for spreadsheets."""

from pathlib import Path

import pandas as pd

from countysync_assets.io_managers.format_io_manager import PartitionedFileIOManager


class CsvIOManager(PartitionedFileIOManager):
    """``<export_dir>/<asset>/<partition>.csv``: UTF-8, header row, ISO 8601 timestamps."""

    extension = ".csv"

    def write_file(self, frame: pd.DataFrame, temp: Path, final: Path) -> None:
        frame.to_csv(temp, index=False, encoding="utf-8")
