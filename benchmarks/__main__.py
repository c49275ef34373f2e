"""Run the benchmark: ``python -m benchmarks [--sizes 100000 1000000] [--repeat 3]``;
``python -m benchmarks --report`` prints the tables of the latest results again.

For each source size: a demo source, then for each tool (countysync, on Dagster's local
SQLite instance and on the production one, ``countysync-pg-instance``; countysync writing
only dlt's tables; the seeds' pandas path; dlt; dlt followed by ogr2ogr) and step (full,
incremental after 1% churn, backfill of 30 daily partitions and its rerun; for countysync
also the delete check that removes the churn's deletes, which the
peers' incremental steps do not: dlt's merge keeps deleted rows, the seeds replace whole
tables; for countysync and dlt also an incremental sync of the same 1,000 changed rows at
every size, which should not grow with the table) the median wall time of ``--repeat``
runs, rows/s and peak RSS, each run in its own process. Prints a table and writes
``benchmarks/results/<timestamp>-<rows>.json`` and ``latest-<rows>.json`` (``latest.json``:
the largest size of the newest run).

The appraisal step (``--appraisal-rows``, 1,600,000 by default, HCAD's size; 0 skips it)
imports one real_acct-format file into SQLite and PostgreSQL with countysync's pipeline, the
seed's per-row importer and plain pandas (``benchmarks/appraisal.py``): its table is printed
and written to ``benchmarks/results/appraisal-<timestamp>-<rows>.json`` and
``appraisal-latest.json``.

``python -m benchmarks --profile --sizes 100000`` runs each countysync step once under
pyinstrument instead and writes where the time goes to ``benchmarks/results/profiles/``.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa

from benchmarks import appraisal
from benchmarks.measure import INSTANCE_URL_ENV, machine, measure
from countysync_assets.demo_source import churn, create_demo_source
from countysync_assets.partitions import START_ENV, build_partitions_def

TOOLS = ("countysync", "countysync-pg-instance", "countysync-tabular", "seeds-pandas", "dlt",
         "dlt+ogr2ogr")
STEPS = ("full", "incremental", "delete-check", "incremental-1000", "backfill",
         "backfill-rerun")
PEER_STEPS = ("full", "incremental", "incremental-1000", "backfill", "backfill-rerun")
TOOL_STEPS = {"countysync": STEPS,
              "countysync-pg-instance": STEPS,
              "countysync-tabular": PEER_STEPS,
              "seeds-pandas": ("full", "incremental", "backfill", "backfill-rerun"),
              "dlt": PEER_STEPS,
              "dlt+ogr2ogr": PEER_STEPS}
OUTPUTS = {
    "countysync": ["working_db.sqlite", "stats_db.sqlite", "geo_db.gpkg", "csv", "json",
                   "geojson", "use_code_summary"],
    # the same, its Dagster instance the production one (deploy/): PostgreSQL, events batched
    "countysync-pg-instance": ["working_db.sqlite", "stats_db.sqlite", "geo_db.gpkg", "csv",
                               "json", "geojson", "use_code_summary"],
    # configured (COUNTYSYNC_FORMATS) to write what dlt writes, for a same-work ratio
    "countysync-tabular": ["working_db.sqlite", "stats_db.sqlite", "use_code_summary"],
    "seeds-pandas": ["working_db.sqlite", "stats_db.sqlite", "geo_db.gpkg", "csv", "json",
                     "geojson"],
    "dlt": ["working (sqlite)", "stats (sqlite)"],  # dlt has no GeoPackage/GeoJSON output
    "dlt+ogr2ogr": ["working (sqlite)", "stats (sqlite)", "geo.gpkg", "parcels.geojson"],
}
PEERS = ("seeds-pandas", "dlt", "dlt+ogr2ogr")
# The benchmark's county went live this many days before today, as a county sets
# COUNTYSYNC_PARTITION_START: its older history is the first partition's baseline, and the
# backfill of the last 30 windows stays out of it.
GO_LIVE_DAYS = 31
CHURN = {"updates": 0.008, "inserts": 0.001, "deletes": 0.001}  # 1% of rows
WARM_UP_ROWS = 1_000  # the untimed sync before a run's first case
# the same 1,000 changed rows at every size (1% where the table is smaller than 100,000):
# an incremental sync should cost what the change costs, however big the table
FIXED_CHURN = {"updates": 800, "inserts": 100, "deletes": 100}


def go_live() -> str:
    return (datetime.now(UTC) - timedelta(days=GO_LIVE_DAYS)).date().isoformat()


def partitions():
    """The benchmark county's partitions (the cases get the same start: ``measure``)."""
    return build_partitions_def(start=go_live())


def partition_range(url: str, newer_than: datetime | None = None) -> tuple[str, str]:
    """First and last partition holding rows (newer than ``newer_than``, if given)."""
    engine = sa.create_engine(url)
    query = 'SELECT min(updated_at), max(updated_at) FROM "MasterParcels"'
    params = {}
    if newer_than is not None:
        query += " WHERE updated_at > :t"
        params = {"t": newer_than.strftime("%Y-%m-%d %H:%M:%S.%f")}
    with engine.connect() as conn:
        low, high = conn.execute(sa.text(query), params).one()
    engine.dispose()
    windows = partitions()
    keys = [windows.get_partition_key_for_timestamp(max(
        datetime.fromisoformat(value).replace(tzinfo=UTC), windows.start).timestamp())
        for value in (low, high)]  # the baseline before go-live is the first partition's
    return keys[0], keys[1]


def rows_between(url: str, first: str, last: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(sa.text(
            'SELECT count(*) FROM "MasterParcels" WHERE updated_at >= :s AND '
            "updated_at < date(:e, '+1 day')"), {"s": first, "e": last}).scalar()
    engine.dispose()
    return count


class Step(NamedTuple):
    source: str  # URL of the source the step reads
    partitions: str  # first...last
    rows: int  # rows the step moves
    kind: str  # the workdir a repeat of the step works in


def prepare(rows: int, root: Path, days: float) -> tuple[dict[str, Step], dict]:
    """The source, copies of it after 1% and after 1,000 rows of churn, and what each step
    reads; and the 1% churn."""
    base = root / f"source-{rows}.sqlite"
    url = f"sqlite:///{base}"
    create_demo_source(url, rows=rows, seed=42, days=days)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        synced_until = datetime.fromisoformat(conn.execute(sa.text(
            'SELECT max(updated_at) FROM "MasterParcels"')).scalar())
    engine.dispose()

    def churned(name: str, counts: dict[str, int]) -> tuple[str, dict, str]:
        """A copy of the source after ``counts`` changes: (url, the churn, partitions)."""
        shutil.copy(base, root / f"source-{rows}-{name}.sqlite")
        copy_url = f"sqlite:///{root / f'source-{rows}-{name}.sqlite'}"
        return (copy_url, churn(copy_url, seed=7, **counts),
                "...".join(partition_range(copy_url, newer_than=synced_until)))

    churned_url, changes, touched = churned(
        "churned", {k: max(1, int(rows * v)) for k, v in CHURN.items()})
    fixed_url, fixed, fixed_touched = churned(
        "churned-1000", {k: max(1, min(v, int(rows * CHURN[k]))) for k, v in FIXED_CHURN.items()})
    full_range = partition_range(url)
    keys = partitions().get_partition_keys()
    last = keys.index(full_range[1])
    backfill = (keys[max(0, last - 29)], keys[last])
    plan = {
        "full": Step(url, "...".join(full_range), rows, "full"),
        "incremental": Step(churned_url, touched, changes["updated"] + changes["inserted"],
                            "incremental"),
        # every key on both sides is compared: the rows it reads are the whole table
        "delete-check": Step(churned_url, touched, rows + changes["inserted"], "incremental"),
        "incremental-1000": Step(fixed_url, fixed_touched, fixed["updated"] + fixed["inserted"],
                                 "incremental-1000"),
        "backfill": Step(url, "...".join(backfill), rows_between(url, *backfill), "backfill"),
    }
    plan["backfill-rerun"] = plan["backfill"]
    return plan, changes


def starts_afresh(step: str) -> bool:
    """Whether a step starts from nothing (full, backfill) or from a copy of the full sync's
    state (the incremental steps), rather than where the step before it left off."""
    return step in ("full", "backfill") or step.startswith("incremental")


def run_step(tool: str, step: str, plan: dict[str, Step], root: Path, attempt: int,
             profile: Path | None = None) -> tuple[float, float]:
    """One run of a step in its own process, in the workdir of this repeat: full and backfill
    start empty, the incremental steps from a copy of the fully synced state, the rest where
    the step before them left off."""
    source, partitions, _, kind = plan[step]
    workdir, full = root / tool / f"{kind}-{attempt}", root / tool / f"full-{attempt}"
    if starts_afresh(step):
        shutil.rmtree(workdir, ignore_errors=True)
    if step.startswith("incremental"):
        shutil.copytree(full, workdir)
        # the copy on disk before the clock starts: at 2,000,000 parcels its gigabytes were
        # still being written back during the timed sync (2.5-2.7 s against 2.0-2.2 s)
        os.sync()
    warm(source)
    env = {START_ENV: go_live()}  # the benchmark's go-live date over the person's setting
    if tool == "countysync-pg-instance":
        env[INSTANCE_URL_ENV] = instance_database(workdir, step, full)
    return measure(tool, step, workdir, [source, partitions], env, profile)


def warm(url: str) -> None:
    """Read the source's file once, untimed: every case starts with the source in the page
    cache, as a database server keeps in memory a table it is asked about every 30 s. The
    cases before it (gigabytes of outputs at 2,000,000 parcels) could have pushed it out, and
    then a case measured the disk: a 1,000-row sync of 1,000,000 parcels took 2.2 s with the
    page cache dropped, 1.5-1.7 s with only the source read back in, 1.3 s warm (dlt's 2.0 s
    cold against 1.9 s: it does not count the table)."""
    with Path(url.removeprefix("sqlite:///")).open("rb") as source:
        while source.read(1 << 24):
            pass


def instance_database(workdir: Path, step: str, full: Path) -> str:
    """The URL of the PostgreSQL database that holds the Dagster instance of ``workdir``, as
    the step needs it: empty for full and backfill, a copy of the full sync's for the
    incremental steps (as their workdir is a copy of full's), as left for the rest."""
    def name(folder: Path) -> str:
        return "countysync_bench_" + folder.name.replace("-", "_")

    admin = sa.create_engine(appraisal.POSTGRES + "postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if starts_afresh(step):
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name(workdir)} WITH (FORCE)"))
            template = f" TEMPLATE {name(full)}" if step.startswith("incremental") else ""
            conn.execute(sa.text(f"CREATE DATABASE {name(workdir)}{template}"))
    admin.dispose()
    # dagster-postgres is written for psycopg2
    return (appraisal.POSTGRES + name(workdir)).replace("+psycopg:", "+psycopg2:")


def bench_size(rows: int, repeat: int, root: Path, tools: tuple[str, ...],
               days: float = 365) -> dict:
    plan, changes = prepare(rows, root, days)
    cases = []
    for tool in tools:
        steps = TOOL_STEPS[tool]
        walls: dict[str, list[float]] = {step: [] for step in steps}
        rss: dict[str, list[float]] = {step: [] for step in steps}
        for attempt in range(repeat):
            for step in steps:
                wall, peak = run_step(tool, step, plan, root, attempt)
                walls[step].append(wall)
                rss[step].append(peak)
                print(f"  {rows:>9} {tool:<13} {step:<16} run {attempt + 1}: {wall:8.2f} s "
                      f"{peak:8.0f} MB", flush=True)
        for step in steps:
            median = statistics.median(walls[step])
            cases.append({"tool": tool, "step": step, "outputs": OUTPUTS[tool],
                          "runs": len(walls[step]), "wall_s_median": round(median, 3),
                          "rows": plan[step].rows,
                          "rows_per_s": round(plan[step].rows / median, 1) if median else None,
                          "peak_rss_mb": round(max(rss[step]), 1),
                          "partitions": plan[step].partitions})
    add_ratios(cases)
    return {"machine": machine(), "source_rows": rows, "source_days": days,
            "churn": changes | {"updated_at": str(changes["updated_at"])}, "cases": cases}


def warm_up(rows: int, root: Path, tools: tuple[str, ...], days: float) -> None:
    """Each tool's full sync of a small source once, untimed: the first case of a run read
    ~20% slow (12.3 s against 9.6-10.3 s for the same 100,000-parcel sync outside it), from
    the disk cache and Python's bytecode cache, not from the tool."""
    plan, _ = prepare(rows, root, days)
    for tool in tools:
        run_step(tool, "full", plan, root, 0)


def profile_size(rows: int, root: Path, out: Path, days: float = 365,
                 steps: tuple[str, ...] = TOOL_STEPS["countysync"]) -> list[Path]:
    """Each countysync step once under pyinstrument, on the benchmark's data: where the time
    goes, as text reports ``out/profiles/<rows>-<step>.txt`` (times there are the profiler's,
    not the benchmark's)."""
    plan, _ = prepare(rows, root, days)
    reports = []
    for step in steps:  # in the benchmark's order: the incremental steps start from full's
        report = out / "profiles" / f"{rows}-{step}.txt"
        run_step("countysync", step, plan, root, 0, profile=report)
        reports.append(report)
    return reports


def add_ratios(cases: list[dict]) -> None:
    """``x_vs_<peer>``: the peer's median wall time over this case's (above 1 = faster)."""
    by = {(c["tool"], c["step"]): c for c in cases}
    for case in cases:
        for peer in PEERS:
            other = by.get((peer, case["step"]))
            if other and case["tool"] != peer and case["wall_s_median"]:
                case[f"x_vs_{peer}"] = round(other["wall_s_median"] / case["wall_s_median"], 2)


def table(result: dict) -> str:
    lines = [f"source rows: {result['source_rows']:,}", "",
             "| tool | step | wall s (median) | rows/s | peak RSS MB | x vs seeds | x vs dlt "
             "| x vs dlt+ogr2ogr |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in result["cases"]:
        lines.append(f"| {c['tool']} | {c['step']} | {c['wall_s_median']:.2f} | "
                     f"{c['rows_per_s']:,.0f} | {c['peak_rss_mb']:.0f} | "
                     f"{c.get('x_vs_seeds-pandas', '')} | {c.get('x_vs_dlt', '')} | "
                     f"{c.get('x_vs_dlt+ogr2ogr', '')} |")
    return "\n".join(lines)


def scaling(small: dict, large: dict) -> str:
    """Each case at two source sizes: the incremental sync should stay flat as the table
    grows (it touches the changed rows only); the full sync and the delete check cannot."""
    sizes = f"{small['source_rows']:,} → {large['source_rows']:,} rows"
    lines = [f"| tool | step | wall s ({sizes}) | growth | peak RSS MB ({sizes}) |",
             "|---|---|---:|---:|---:|"]
    before = {(c["tool"], c["step"]): c for c in small["cases"]}
    for c in large["cases"]:
        b = before.get((c["tool"], c["step"]))
        if b:
            lines.append(f"| {c['tool']} | {c['step']} | {b['wall_s_median']:.2f} → "
                         f"{c['wall_s_median']:.2f} | {c['wall_s_median'] / b['wall_s_median']:.1f}"
                         f"x | {b['peak_rss_mb']:.0f} → {c['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def report(out: Path) -> str:
    """The tables of the latest results in ``out``, and how they scale between sizes."""
    results = sorted((json.loads(path.read_text()) for path in out.glob("latest-*.json")),
                     key=lambda result: result["source_rows"])
    parts = [table(result) for result in results]
    if len(results) > 1:
        parts.append(scaling(results[0], results[-1]))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000],
                        help="source sizes of the sync benchmark (none: skip it)")
    parser.add_argument("--appraisal-rows", type=int, default=1_600_000,
                        help="real_acct rows of the appraisal import benchmark (0: skip it)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--days", type=float, default=365,
                        help="days of history in the source (daily partitions of the full sync)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--report", action="store_true",
                        help="only print the tables of the latest results in --out")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                        help="with --profile: the countysync steps to profile (the incremental "
                        "steps need full before them)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing, profile each countysync step once with "
                        "pyinstrument: reports in --out/profiles/")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
        latest = args.out / "appraisal-latest.json"
        if latest.exists():
            print("\n" + appraisal.table(json.loads(latest.read_text())))
        return 0
    if args.profile:
        with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
            for rows in sorted(args.sizes):
                steps = tuple(step for step in STEPS if step in args.steps)
                for path in profile_size(rows, Path(scratch) / str(rows), args.out, args.days,
                                         steps):
                    print(path)
        return 0
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        if args.sizes:
            warm_up(min(WARM_UP_ROWS, *args.sizes), Path(scratch) / "warm-up",
                    tuple(args.tools), args.days)
        for rows in sorted(args.sizes):
            started = time.monotonic()
            result = bench_size(rows, args.repeat, Path(scratch) / str(rows), tuple(args.tools),
                                args.days)
            text = json.dumps(result, indent=1, default=str)
            (args.out / f"{stamp}-{rows}.json").write_text(text)
            (args.out / f"latest-{rows}.json").write_text(text)
            (args.out / "latest.json").write_text(text)
            print(table(result))
            print(f"({time.monotonic() - started:.0f} s for this size)\n", flush=True)
        if args.appraisal_rows:
            result = appraisal.bench(args.appraisal_rows, args.repeat,
                                     Path(scratch) / "appraisal") | {"machine": machine()}
            text = json.dumps(result, indent=1)
            (args.out / f"appraisal-{stamp}-{args.appraisal_rows}.json").write_text(text)
            (args.out / "appraisal-latest.json").write_text(text)
            print(appraisal.table(result), flush=True)
    if len(args.sizes) > 1:
        print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
