"""``countysync``: the things that are not assets (the demo source, and helpers for scripts).

    countysync demo-source --rows 50000 [--path P | --url URL] [--seed S]
    countysync churn --updates N --inserts N --deletes N [--path P | --url URL]
    countysync partition-range        first...last partition, for --partition-range
    countysync outputs                where each output is and what it holds
    countysync status                 last syncs, the watermark, how far behind the source
    countysync check                  configuration, source, columns, export folder: one line each
    countysync appraisal-demo --accounts N --year Y [--out DIR]   demo release files
    countysync appraisal-import --config hcad.yaml --year Y        download .. load, one run
    countysync appraisal-rollback --config hcad.yaml --import-id N undo the newest import
"""

import argparse
import os
import sqlite3
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from countysync_assets import demo_source
from countysync_assets.resources.master_parcels_source import SourceError

GO_LIVE_DAYS = 30  # the demo's history before this many days is its baseline


def _add_target(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--path", help="SQLite file of the demo source "
                        "(default data/demo_source.sqlite)")
    target.add_argument("--url", help="SQLAlchemy URL to write the demo source to instead, "
                        "e.g. postgresql+psycopg://postgres@127.0.0.1/countysync")


def _print_demo(args: argparse.Namespace) -> None:
    as_of = datetime.fromisoformat(args.as_of) if args.as_of else None
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    result = demo_source.create_demo_source(demo_source.source_url(args.path, args.url),
                                            rows=args.rows, seed=args.seed, as_of=as_of,
                                            days=args.days)
    print(f"Created demo source {result['url']}: {result['rows']} parcels (seed {result['seed']}),"
          f" updated_at {result['updated_from']} .. {result['updated_to']} UTC.")
    if args.env_file:
        from countysync_assets.partitions import START_ENV  # reads the settings: not for --help

        go_live = (result["updated_to"] - timedelta(days=GO_LIVE_DAYS)).date().isoformat()
        set_env(Path(args.env_file), START_ENV, go_live)
        print(f"Set {START_ENV}={go_live} in {args.env_file}: the first window holds every "
              f"row changed before it (the baseline), then one window per day ({GO_LIVE_DAYS}).")


def set_env(path: Path, name: str, value: str) -> None:
    """Set ``name=value`` in a .env file, keeping its other lines."""
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if not line.startswith(f"{name}=")] + [f"{name}={value}"]
    path.write_text("\n".join(lines) + "\n")


def _print_churn(args: argparse.Namespace) -> None:
    result = demo_source.churn(demo_source.source_url(args.path, args.url), updates=args.updates,
                               inserts=args.inserts, deletes=args.deletes, seed=args.seed)
    print(f"Churned the demo source: {result['updated']} updated, {result['inserted']} inserted, "
          f"{result['deleted']} deleted at {result['updated_at']:%Y-%m-%d %H:%M:%S} UTC.")


def _print_partition_range(args: argparse.Namespace) -> None:
    """The partitions that hold the source's rows (all partitions with ``--all``)."""
    from countysync_assets.partitions import PARTITIONS
    from countysync_assets.resources.source_config import source_from_env
    from countysync_assets.sensors.source_changes_sensor import newest_end

    keys = PARTITIONS.get_partition_keys()
    first, last = keys[0], keys[-1]
    bounds = None if args.all else source_from_env(as_env_vars=False).cursor_bounds(
        until=newest_end())
    if bounds is not None:
        low, high = (max(b, PARTITIONS.start) for b in bounds)
        first = PARTITIONS.get_partition_key_for_timestamp(low.timestamp())
        last = min(PARTITIONS.get_partition_key_for_timestamp(high.timestamp()), last)
    print(f"{first}...{last}")


def _print_outputs(args: argparse.Namespace) -> None:
    root = Path(args.export_dir or os.environ.get("COUNTYSYNC_EXPORT_DIR") or "exports")
    if not root.is_dir():
        print(f"No outputs yet: {root} does not exist.")
        return
    print(f"Outputs in {root.resolve()}:")
    for path in sorted(root.glob("*.sqlite")) + sorted(root.glob("*.gpkg")):
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'gpkg%' "
                "AND name NOT LIKE 'rtree%' AND name NOT LIKE 'sqlite%'")]
            counts = ", ".join(f"{t} ({conn.execute(f'SELECT count(*) FROM [{t}]').fetchone()[0]}"
                               " rows)" for t in tables)
        print(f"  {path.name:<22} current state: {counts}")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if not f.name.startswith("."))
        kinds = sorted({f.suffix for f in files})
        windows = len({f.name.removesuffix("".join(f.suffixes)) for f in files})
        print(f"  {folder.name + '/':<22} {len(files)} files: {windows} sync window(s), one "
              f"{' and one '.join(kinds)} file each, holding the rows changed in that window")
    for path in sorted(root.glob("*.csv")):
        print(f"  {path.name:<22} whole-county table")


def _what_ran(row) -> str:
    """A sync_log row in words: a sync of windows, a delete check, a summary rebuilt."""
    if row.asset == "use_code_summary":
        return f"{'rebuilt':<23} from every parcel: {row.rows_in} use codes"
    if row.asset == "unplaced_parcels":
        return f"{'unplaced check':<23} {row.rows_in} source row(s) no window can hold"
    if not row.partitions:  # the delete check writes no window: it removes parcels
        return f"{'delete check':<23} {row.deleted} parcel(s) gone from the source removed"
    return (f"{'sync ' + row.partitions:<23} {row.rows_in:>8} in: {row.inserted} new, "
            f"{row.updated} updated, {row.unchanged} unchanged, {row.deleted} deleted")


def _print_status(args: argparse.Namespace) -> None:
    """The last syncs, the watermark, and how far the outputs are behind the source."""
    import pandas as pd

    from countysync_assets.resources.source_config import source_from_env

    root = Path(args.export_dir or os.environ.get("COUNTYSYNC_EXPORT_DIR") or "exports")
    logs = []
    for path in sorted(root.glob("*.sqlite")):
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sync_log'").fetchone():
                logs.append(pd.read_sql_query("SELECT * FROM sync_log", conn))
    if not logs:
        print(f"No syncs yet in {root.resolve()}.")
        return
    log = pd.concat(logs).sort_values("logged_at", ascending=False)
    print(f"Last syncs in {root.resolve()} (newest first):")
    for row in log.head(args.last).itertuples():
        print(f"  {row.logged_at}  {row.asset:<17} {_what_ran(row)}  ({row.seconds:.2f} s)")
    from countysync_assets.assets.deleted_parcels import compare_keys
    from countysync_assets.assets.master_parcels import SYNCED
    from countysync_assets.io_managers.export_io_manager import ExportIOManager, parse_formats
    from countysync_assets.sensors.source_changes_sensor import newest_end

    outputs = ExportIOManager(export_dir=str(root),
                              formats=parse_formats(os.environ.get("COUNTYSYNC_FORMATS")))
    held = outputs.newest_synced(SYNCED)
    if held is None:
        return
    watermark = pd.Timestamp(held)
    print(f"Watermark (newest updated_at synced): {watermark.isoformat()}")

    source = source_from_env(as_env_vars=False)
    newest = source.cursor_bounds(until=newest_end())
    behind = source.count_since(watermark.to_pydatetime() + pd.Timedelta(microseconds=1),
                                newest_end())
    if behind:
        lag = pd.Timestamp(newest[1]) - watermark
        print(f"The source has {behind} newer row(s), up to {newest[1].isoformat()} "
              f"({lag} behind).")
    # a cursor never sees a delete: compare the keys the outputs hold with the source's
    synced, kept = compare_keys(outputs, source)
    gone, in_source = synced[~synced["id"].isin(kept)], len(kept)
    unsynced = int((~kept.isin(synced["id"])).sum())
    print(f"The outputs hold {len(synced):,} parcels; the source has {in_source:,}.")
    if len(gone):
        sample = ", ".join(str(i) for i in gone["id"].head(5))
        print(f"{len(gone):,} parcel(s) deleted at the source are still published (id "
              f"{sample}{', ...' if len(gone) > 5 else ''}): run the delete check (job "
              "reconcile_deletes in the UI; it also runs nightly).")
    if unsynced:
        print(f"{unsynced:,} source parcel(s) are in no output: rejected (see parcel_rejects "
              "in rejects_db.sqlite) or not synced yet.")
    if not behind and not len(gone) and not unsynced:
        print("The outputs are in step with the source: the same parcels, no newer rows.")


def _appraisal_demo(args: argparse.Namespace) -> None:
    from countysync_assets.appraisal.demo_files import write_demo_release

    files = write_demo_release(Path(args.out), args.accounts, args.year, seed=args.seed,
                               revision=args.revision)
    print(f"Wrote demo release files of {args.accounts} accounts for {args.year} under "
          f"{Path(args.out).resolve()}; district files: "
          + ", ".join(str(p) for p in files.values()))
    if args.env_file:
        set_env(Path(args.env_file), "COUNTYSYNC_APPRAISAL_DISTRICT", str(files["hcad"]))
        print(f"Set COUNTYSYNC_APPRAISAL_DISTRICT={files['hcad']} in {args.env_file}.")


def _appraisal_import(args: argparse.Namespace) -> None:
    """One Dagster run of the appraisal assets for a tax year (recorded in DAGSTER_HOME if set)."""
    from dagster import DagsterInstance, materialize

    from countysync_assets.definitions import appraisal_assets, appraisal_resources_from_env
    from countysync_assets.run_failures import first_reason

    resources = appraisal_resources_from_env(args.config)
    district = resources["appraisal_release"].district()
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    result = materialize(appraisal_assets, partition_key=str(args.year), resources=resources,
                         instance=instance, raise_on_error=False)
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        raise ImportFailed(first_reason(failure.step_failure_data.error) if failure else
                           "the run failed; see the run's log in the Dagster UI")
    parsed = result.asset_materializations_for_node("appraisal_parsed")[0].metadata
    print(f"Imported {district.name} {args.year}"
          + (": the release is the one already loaded; nothing written."
             if "unchanged_release" in parsed else
             f" (import {parsed['import_id'].value}): {parsed['rows'].value:,} records, "
             f"{parsed['rejects'].value:,} rejects."))
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        meta = {k: v.value for k, v in mat.metadata.items()}
        if meta.get("changed"):
            print(f"  {mat.asset_key.to_user_string():<17} {meta['dagster/row_count']:>9,} rows:"
                  f" {meta['inserted']:,} new, {meta['updated']:,} updated, {meta['unchanged']:,}"
                  f" unchanged, {meta['removed']:,} marked removed, {meta['duplicates']:,} "
                  f"duplicates, {meta['rejects']:,} rejects")


def _appraisal_rollback(args: argparse.Namespace) -> None:
    from countysync_assets.definitions import appraisal_resources_from_env
    from countysync_assets.resources.district_config import load_district

    district = load_district(args.config)
    tables = appraisal_resources_from_env()["appraisal_db"].tables(district)
    tables.rollback(args.import_id)
    print(f"Rolled back import {args.import_id} of {district.name}: its rows are out and the "
          "rows it replaced are back.")


def _findings() -> list[tuple[bool, str]]:
    """(passed, one line) for each thing a sync needs: the configuration as Dagster loads it,
    the source reachable with its table and columns, the export folder writable, the
    appraisal district file."""
    findings = []
    try:
        from countysync_assets import definitions  # builds every resource from the environment
        findings.append((True, "configuration: every COUNTYSYNC_* setting is valid"))
    except (ValueError, OSError) as err:
        return [(False, f"configuration: {str(err).strip().splitlines()[0]}")]
    from countysync_assets.resources.source_config import source_from_env

    source = source_from_env(as_env_vars=False)
    try:
        table = source.table_ref()
        findings.append((True, f"source: {source.display_url()} table {table.name} has "
                               f"{source.count_all():,} rows and the configured key, "
                               "last-modified and geometry columns"))
    except SourceError as err:
        findings.append((False, f"source: {str(err).strip().splitlines()[0]}"))
    export = Path(os.environ.get("COUNTYSYNC_EXPORT_DIR") or "exports").resolve()
    existing = next(p for p in (export, *export.parents) if p.exists())
    if os.access(existing, os.W_OK | os.X_OK) and existing.is_dir():
        findings.append((True, f"export folder: {export} is writable"
                               + ("" if existing == export else " (it will be created)")))
    else:
        findings.append((False, f"export folder: {existing} is not a writable folder; set "
                                "COUNTYSYNC_EXPORT_DIR to one this user can write"))
    district = definitions.appraisal_resources_from_env()["appraisal_release"]
    findings.append((True, f"appraisal district file: {district.district_file} "
                           f"({district.district().name})"))
    return findings


def _check(args: argparse.Namespace) -> None:
    findings = _findings()
    for passed, line in findings:
        print(f"{'ok  ' if passed else 'FAIL'} {line}")
    failed = sum(not passed for passed, _ in findings)
    if failed:
        raise CheckFailed(f"{failed} problem(s) found; mend them and run `countysync check` "
                          "again.")


class CheckFailed(RuntimeError):
    """Something a sync needs is missing or wrong; the lines above said what."""


class ImportFailed(RuntimeError):
    """The import run failed; its one-line reason is the message."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="countysync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo-source", help="create the embedded demo MasterParcels source")
    demo.add_argument("--rows", type=int, default=50_000)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--as-of", help="latest updated_at (ISO date, UTC); default today 00:00")
    demo.add_argument("--days", type=float, default=365,
                      help="spread updated_at over this many days before --as-of")
    demo.add_argument("--env-file", help="also set COUNTYSYNC_PARTITION_START in this .env file to "
                      f"{GO_LIVE_DAYS} days before the newest row (the demo's go-live date)")
    _add_target(demo)
    demo.set_defaults(run=_print_demo)

    churn = commands.add_parser("churn", help="edit the demo source like a day of assessor work")
    churn.add_argument("--updates", type=int, default=0)
    churn.add_argument("--inserts", type=int, default=0)
    churn.add_argument("--deletes", type=int, default=0)
    churn.add_argument("--seed", type=int, default=None)
    _add_target(churn)
    churn.set_defaults(run=_print_churn)

    span = commands.add_parser(
        "partition-range", help="print first...last partition holding source rows, for "
        "`dg launch --partition-range`")
    span.add_argument("--all", action="store_true", help="every partition, data or not")
    span.set_defaults(run=_print_partition_range)

    outputs = commands.add_parser("outputs", help="list the outputs and what they hold")
    outputs.add_argument("--export-dir", default=None)
    outputs.set_defaults(run=_print_outputs)

    status = commands.add_parser("status", help="last syncs, watermark, and lag behind the "
                                 "source")
    status.add_argument("--export-dir", default=None)
    status.add_argument("--last", type=int, default=10, help="how many syncs to list")
    status.set_defaults(run=_print_status)

    appraisal_demo = commands.add_parser(
        "appraisal-demo",
        help="write demo appraisal release files (HCAD-format ZIPs, a fixed-width PROP.TXT)")
    appraisal_demo.add_argument("--accounts", type=int, default=5_000)
    appraisal_demo.add_argument("--year", type=int, default=datetime.now(UTC).year)
    appraisal_demo.add_argument("--out", default="data/appraisal_demo")
    appraisal_demo.add_argument("--seed", type=int, default=7)
    appraisal_demo.add_argument("--revision", type=int, default=0,
                                help="a re-published release: about 1 account in 20 changes")
    appraisal_demo.add_argument("--env-file",
                                help="also set COUNTYSYNC_APPRAISAL_DISTRICT in this .env")
    appraisal_demo.set_defaults(run=_appraisal_demo)

    load = commands.add_parser("appraisal-import", help="download, extract, parse and load a "
                               "tax year's release (one Dagster run)")
    load.add_argument("--config", required=True, help="the district file (YAML)")
    load.add_argument("--year", type=int, required=True)
    load.set_defaults(run=_appraisal_import)

    undo = commands.add_parser("appraisal-rollback", help="undo the newest import of a year")
    undo.add_argument("--config", required=True, help="the district file (YAML)")
    undo.add_argument("--import-id", type=int, required=True)
    undo.set_defaults(run=_appraisal_rollback)

    check = commands.add_parser("check", help="check the configuration, the source and its "
                                "columns, and the export folder: one line each, exit code 2 "
                                "if anything is wrong")
    check.set_defaults(run=_check)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, SourceError, RuntimeError) as err:
        print(f"countysync {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
