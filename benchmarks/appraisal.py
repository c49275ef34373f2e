"""The appraisal import benchmark: one real_acct-format file of N accounts (1.6 million, HCAD's
size, by default) in its release ZIP, imported into an empty database, SQLite and PostgreSQL,
by three tools, each run in its own process (``measure``):

- ``appraisal-countysync``: the pipeline as a county runs it, one Dagster run of the appraisal
  assets (download from a ``file://`` URL, SHA-256, safe extract, parse, staged load with
  checkpoints, merge, checks);
- ``appraisal-per-row``: the seed's importer (extract, csv.DictReader, per-row coercion,
  batched inserts);
- ``appraisal-pandas``: plain pandas (extract, read_csv, to_sql).

After each run the rows in the target table are counted: a tool that loaded less fails the
benchmark rather than winning it.
"""

import statistics
import zipfile
from pathlib import Path

import sqlalchemy as sa
import yaml

from benchmarks.measure import measure
from countysync_assets.appraisal.demo_files import write_property_file
from countysync_assets.resources.district_config import PACKAGED_DISTRICTS, Layout, load_district

TOOLS = ("appraisal-countysync", "appraisal-per-row", "appraisal-pandas")
TARGETS = ("sqlite", "postgresql")
YEAR = 2025
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/"
DATABASE = "countysync_bench_appraisal"  # dropped and created again before each run
TABLE = "property_records"


def real_acct_layout() -> Layout:
    """The layout of HCAD's real_acct.txt, as the packaged district file declares it."""
    return load_district(PACKAGED_DISTRICTS / "hcad.yaml").layouts["real_acct"]


def extract_real_acct(archive: Path, workdir: Path) -> Path:
    """The peers' extraction, as the seed did it: zipfile, no checks."""
    with zipfile.ZipFile(archive) as zf:
        return Path(zf.extract("real_acct.txt", workdir / "extracted"))


def prepare(rows: int, root: Path) -> tuple[Path, Path]:
    """The release ZIP holding a real_acct.txt of ``rows`` accounts, and a district file whose
    one release file is that ZIP (``file://``) and whose one member is real_acct.txt."""
    text = write_property_file(root / "real_acct.txt", rows, YEAR)
    archive = root / "release" / str(YEAR) / "Real_acct_owner.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(text, "real_acct.txt")
    text.unlink()
    district = yaml.safe_load((PACKAGED_DISTRICTS / "hcad.yaml").read_text())
    district["files"] = [{"name": "real_acct_owner",
                          "url": f"{(root / 'release').as_uri()}/{{year}}/Real_acct_owner.zip",
                          "members": [{"path": "real_acct.txt", "table": TABLE,
                                       "layout": "real_acct"}]}]
    district["layouts"] = {"real_acct": district["layouts"]["real_acct"]}
    district_file = root / "hcad_real_acct.yaml"
    district_file.write_text(yaml.safe_dump(district, sort_keys=False))
    load_district(district_file)
    return archive, district_file


def postgres_available() -> bool:
    engine = sa.create_engine(POSTGRES + "postgres")
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def empty_target(target: str, workdir: Path) -> str:
    """The URL of an empty database of the kind ``target``."""
    if target == "sqlite":
        path = workdir / "appraisal.sqlite"
        path.unlink(missing_ok=True)
        return f"sqlite:///{path}"
    admin = sa.create_engine(POSTGRES + "postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
    admin.dispose()
    return POSTGRES + DATABASE


def loaded_rows(tool: str, url: str) -> int:
    """Rows in the tool's table (countysync's, on PostgreSQL, in the district's schema)."""
    table = f"hcad.{TABLE}" if tool == "appraisal-countysync" and url.startswith("postgres") \
        else TABLE
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
    engine.dispose()
    return count


def bench(rows: int, repeat: int, root: Path, tools: tuple[str, ...] = TOOLS) -> dict:
    """Median wall time, rows/s and peak RSS of each tool and target; ``x_vs_<peer>`` is the
    peer's median time over countysync's."""
    root.mkdir(parents=True, exist_ok=True)
    archive, district_file = prepare(rows, root)
    targets = TARGETS if postgres_available() else ("sqlite",)
    cases = []
    for target in targets:
        for tool in tools:
            walls, peaks = [], []
            for attempt in range(repeat):
                workdir = root / tool / f"{target}-{attempt}"
                url = empty_target(target, workdir.parent)
                source = district_file if tool == "appraisal-countysync" else archive
                wall, peak = measure(tool, target, workdir, [str(source), url])
                loaded = loaded_rows(tool, url)
                if loaded != rows:
                    raise RuntimeError(f"{tool} loaded {loaded:,} of {rows:,} rows into {target}")
                walls.append(wall)
                peaks.append(peak)
                print(f"  {rows:>9} {tool:<21} {target:<10} run {attempt + 1}: {wall:8.2f} s "
                      f"{peak:8.0f} MB", flush=True)
            median = statistics.median(walls)
            cases.append({"tool": tool, "target": target, "runs": repeat,
                          "wall_s_median": round(median, 3), "rows": rows,
                          "rows_per_s": round(rows / median, 1),
                          "peak_rss_mb": round(max(peaks), 1)})
    by = {(c["tool"], c["target"]): c for c in cases}
    for case in cases:
        ours = by.get(("appraisal-countysync", case["target"]))
        if ours and case is not ours:
            ours[f"x_vs_{case['tool']}"] = round(case["wall_s_median"] / ours["wall_s_median"], 2)
    return {"rows": rows, "archive_bytes": archive.stat().st_size,
            "skipped": [t for t in TARGETS if t not in targets], "cases": cases}


def table(result: dict) -> str:
    lines = [f"appraisal import: {result['rows']:,} real_acct rows "
             f"({result['archive_bytes'] / 2**20:,.0f} MB ZIP)"
             + (f"; not measured: {', '.join(result['skipped'])} (no server)"
                if result["skipped"] else ""), "",
             "| tool | target | wall s (median) | rows/s | peak RSS MB | x vs per-row "
             "| x vs pandas |", "|---|---|---:|---:|---:|---:|---:|"]
    for c in result["cases"]:
        lines.append(f"| {c['tool']} | {c['target']} | {c['wall_s_median']:.2f} | "
                     f"{c['rows_per_s']:,.0f} | {c['peak_rss_mb']:.0f} | "
                     f"{c.get('x_vs_appraisal-per-row', '')} | "
                     f"{c.get('x_vs_appraisal-pandas', '')} |")
    return "\n".join(lines)
