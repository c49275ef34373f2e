"""One benchmark case in its own process: ``python -m benchmarks.case TOOL STEP WORKDIR URL
PARTITIONS``. Prints, as JSON, the wall seconds of the work itself (imports excluded) and the
process's peak RSS: ``VmHWM``, which belongs to this process's own address space, whereas
``ru_maxrss`` would carry over the parent's high-water mark across fork and exec."""

import importlib
import json
import os
import sys
import time
from pathlib import Path

MODULES = {"countysync": "benchmarks.case_countysync",
           "countysync-tabular": "benchmarks.case_countysync",
           "seeds-pandas": "benchmarks.case_seeds_pandas",
           "dlt": "benchmarks.case_dlt",
           "dlt+ogr2ogr": "benchmarks.case_dlt_ogr2ogr"}
# countysync writing only what dlt writes: the working and stats tables (and the summary)
TABULAR = {"master_parcels": [], "parcel_rejects": [], "working": ["sqlite"],
           "stats": ["sqlite"], "parcel_geometry": [], "geometry_rejects": []}


def main() -> None:
    tool, step, workdir, source_url, partitions = sys.argv[1:6]
    os.environ["DAGSTER_HOME"] = str(Path(workdir) / "dagster_home")
    if tool == "countysync-tabular":
        os.environ["COUNTYSYNC_FORMATS"] = json.dumps(TABULAR)
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(MODULES[tool])  # imports are not part of the timing
    started = time.perf_counter()
    module.run(step, Path(workdir), source_url, partitions)
    wall = time.perf_counter() - started
    peak_kb = next(int(line.split()[1]) for line in
                   Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"wall_s": wall, "peak_rss_mb": peak_kb / 1024}))


if __name__ == "__main__":
    main()
