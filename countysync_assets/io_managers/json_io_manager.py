"""JSON: one file per partition, an array of records, for web services and scripts."""

from pathlib import Path

import pandas as pd

from countysync_assets.io_managers.format_io_manager import PartitionedFileIOManager


class JsonIOManager(PartitionedFileIOManager):
    """``<export_dir>/<asset>/<partition>.json``: an array of records, one per line, ISO 8601
    timestamps with offset. Written batch by batch: pandas encodes each batch as JSON lines
    (in C), which become the array's elements."""

    extension = ".json"

    def append(self, frame: pd.DataFrame, temp: Path, first: bool) -> None:
        lines = frame.to_json(orient="records", lines=True, force_ascii=False,
                              date_format="iso").rstrip("\n")
        with open(temp, "w" if first else "a", encoding="utf-8") as out:
            out.write(("[\n" if first else ",\n") + lines.replace("}\n{", "},\n{"))

    def close(self, temp: Path, empty: pd.DataFrame | None, written: bool) -> None:
        with open(temp, "a" if written else "w", encoding="utf-8") as out:
            out.write("\n]\n" if written else "[]\n")
