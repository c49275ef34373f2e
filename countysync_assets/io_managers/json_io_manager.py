"""JSON: one file per partition, an array of records, for web services and scripts."""

from pathlib import Path

import pandas as pd

from countysync_assets.io_managers.format_io_manager import PartitionedFileIOManager


class JsonIOManager(PartitionedFileIOManager):
    """``<export_dir>/<asset>/<partition>.json``: records, ISO 8601 timestamps with offset."""

    extension = ".json"

    def write_file(self, frame: pd.DataFrame, temp: Path, final: Path) -> None:
        frame.to_json(temp, orient="records", force_ascii=False, indent=1)
