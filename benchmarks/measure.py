"""Running one benchmark case in its own process, and what the results record about the
machine and the code measured."""

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# the database of a case's Dagster instance, for countysync-pg-instance
INSTANCE_URL_ENV = "COUNTYSYNC_BENCH_INSTANCE_URL"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    memory_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text()
                         .splitlines() if line.startswith("MemTotal")))
    versions = {}
    for package in ("dagster", "pandas", "geopandas", "pyogrio", "fiona", "dlt", "SQLAlchemy",
                    "pyarrow", "psycopg"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpus": os.cpu_count(), "memory_gb": round(memory_kb / 2**20, 1),
            "versions": versions, "countysync_commit": measured_commit()}


def measured_commit() -> str | None:
    """The commit measured, with ``-dirty`` if its code (not its results) was changed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=Path(__file__).parents[1]).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--", "countysync_assets", "benchmarks/*.py",
                  "pyproject.toml")
    return (commit + ("-dirty" if changed else "")) or None


def measure(tool: str, step: str, workdir: Path, args: list[str], env: dict | None = None,
            profile: Path | None = None) -> tuple[float, float]:
    """(wall seconds of the work, peak RSS in MB of its process) of one case in its own
    process, ``args`` passed to its ``run`` and ``env`` set over this one's (and over any
    ``.env`` of the person running it). With ``profile``, the case runs under pyinstrument,
    which writes its text report there (and slows the run)."""
    workdir.mkdir(parents=True, exist_ok=True)
    profiler = []
    if profile:
        profile.parent.mkdir(parents=True, exist_ok=True)
        profiler = ["-m", "pyinstrument", "-r", "text", "--no-color", "-o", str(profile)]
    command = [sys.executable, *profiler, "-m", "benchmarks.case", tool, step, str(workdir),
               *args]
    with open(workdir / f"{tool}-{step}.log", "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                   env={**os.environ, "COUNTYSYNC_ENV_FILE": os.devnull,
                                        **(env or {})},
                                   cwd=Path(__file__).parents[1])
        output = process.stdout.read()
        process.wait()
    if process.returncode:
        raise RuntimeError(f"{tool} {step} failed; see {workdir / f'{tool}-{step}.log'}:\n"
                           + (workdir / f"{tool}-{step}.log").read_text()[-2000:])
    measured = json.loads(output.strip().splitlines()[-1])
    return measured["wall_s"], measured["peak_rss_mb"]
