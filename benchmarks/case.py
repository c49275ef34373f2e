"""One benchmark case in its own process: ``python -m benchmarks.case TOOL STEP WORKDIR ARGS...``
(the sync cases: the source URL and the partitions; the appraisal cases: the release and the
target database). Prints, as JSON, the wall seconds of the work itself (imports excluded) and the
peak RSS: the process's ``VmHWM`` (its own address space, whereas ``ru_maxrss`` would carry
over the parent's high-water mark across fork and exec) plus the largest ``VmHWM`` of its
child processes (the sync's second process, ogr2ogr), sampled while they run."""

import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil

MODULES = {"countysync": "benchmarks.case_countysync",
           "countysync-tabular": "benchmarks.case_countysync",
           "seeds-pandas": "benchmarks.case_seeds_pandas",
           "dlt": "benchmarks.case_dlt",
           "dlt+ogr2ogr": "benchmarks.case_dlt_ogr2ogr",
           "appraisal-countysync": "benchmarks.case_appraisal_countysync",
           "appraisal-per-row": "benchmarks.case_appraisal_per_row",
           "appraisal-pandas": "benchmarks.case_appraisal_pandas"}
# countysync writing only what dlt writes: the working and stats tables (and the summary)
TABULAR = {"master_parcels": [], "parcel_rejects": [], "working": ["sqlite"],
           "stats": ["sqlite"], "parcel_geometry": [], "geometry_rejects": []}


def main() -> None:
    tool, step, workdir, *args = sys.argv[1:]
    os.environ["DAGSTER_HOME"] = str(Path(workdir) / "dagster_home")
    if tool == "countysync-tabular":
        os.environ["COUNTYSYNC_FORMATS"] = json.dumps(TABULAR)
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(MODULES[tool])  # imports are not part of the timing
    children: dict[int, int] = {}
    done = threading.Event()
    watcher = threading.Thread(target=watch_children, args=(children, done), daemon=True)
    watcher.start()
    started = time.perf_counter()
    module.run(step, Path(workdir), *args)
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    peak_kb = peak_rss_kb("self") + max(children.values(), default=0)
    print(json.dumps({"wall_s": wall, "peak_rss_mb": peak_kb / 1024}))


def peak_rss_kb(pid: int | str) -> int:
    """``VmHWM`` of a process, in kB."""
    return next(int(line.split()[1]) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:"))


def watch_children(peaks: dict[int, int], done: threading.Event) -> None:
    """Keep the peak RSS of each child process of this one until ``done``."""
    me = psutil.Process()
    while not done.wait(0.05):
        for child in me.children(recursive=True):
            try:
                peaks[child.pid] = max(peaks.get(child.pid, 0), peak_rss_kb(child.pid))
            except (OSError, StopIteration):  # it ended meanwhile
                continue


if __name__ == "__main__":
    main()
