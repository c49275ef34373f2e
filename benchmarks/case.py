"""One benchmark case in its own process: ``python -m benchmarks.case TOOL STEP WORKDIR ARGS...``
(the sync cases: the source URL and the partitions; the appraisal cases: the release and the
target database). Prints, as JSON, the wall seconds of the work itself (imports excluded) and the
peak RSS of the case's processes together (the sync's second process, ogr2ogr): their summed RSS
sampled every 50 ms, and never less than one process's own ``VmHWM`` (a peak between samples;
its own address space, whereas ``ru_maxrss`` would carry over the parent's high-water mark
across fork and exec). Shared library pages count once per process, so this errs high."""

import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil

from benchmarks.measure import INSTANCE_URL_ENV

MODULES = {"countysync": "benchmarks.case_countysync",
           "countysync-pg-instance": "benchmarks.case_countysync",
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
    home = Path(workdir) / "dagster_home"
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    if tool == "countysync-tabular":
        os.environ["COUNTYSYNC_FORMATS"] = json.dumps(TABULAR)
    if tool.startswith("countysync"):
        shipped_instance(tool, home, Path(workdir))
    module = importlib.import_module(MODULES[tool])  # imports are not part of the timing
    peaks = {"together": 0, "one": 0}
    done = threading.Event()
    watcher = threading.Thread(target=watch_processes, args=(peaks, done), daemon=True)
    watcher.start()
    started = time.perf_counter()
    module.run(step, Path(workdir), *args)
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    peak_kb = max(peaks["together"], peaks["one"], peak_rss_kb("self"))
    print(json.dumps({"wall_s": wall, "peak_rss_mb": peak_kb / 1024}))


def shipped_instance(tool: str, home: Path, workdir: Path) -> None:
    """``home`` with the dagster.yaml countysync ships, its run log file in ``workdir``: the
    local one (SQLite, as scripts/demo.sh copies it), or for ``countysync-pg-instance`` the
    production one, its storage the database the benchmark made for this case."""
    root = Path(__file__).parents[1]
    if tool == "countysync-pg-instance":
        settings = (root / "deploy" / "dagster.production.yaml").read_text()
        os.environ["COUNTYSYNC_DAGSTER_PG_URL"] = os.environ[INSTANCE_URL_ENV]
    else:
        settings = (root / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(
        settings.replace("/var/log/countysync/", f"{workdir}/")
        .replace("filename: countysync.log", f"filename: {workdir}/countysync.log"))


def peak_rss_kb(pid: int | str) -> int:
    """``VmHWM`` of a process, in kB."""
    return next(int(line.split()[1]) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:"))


def watch_processes(peaks: dict[str, int], done: threading.Event) -> None:
    """Until ``done``, keep the peak of this process's and its children's RSS summed
    (``together``) and the largest child ``VmHWM`` (``one``), in kB."""
    me = psutil.Process()
    while not done.wait(0.05):
        together = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                together += process.memory_info().rss // 1024
                if process is not me:
                    peaks["one"] = max(peaks["one"], peak_rss_kb(process.pid))
            except (psutil.Error, OSError, StopIteration):  # it ended meanwhile
                continue
        peaks["together"] = max(peaks["together"], together)


if __name__ == "__main__":
    main()
