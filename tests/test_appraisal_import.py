"""Appraisal imports end to end through Dagster, on SQLite and on the real PostgreSQL server:
every record accounted for, an unchanged release writes nothing, a re-published one updates and
rolls back exactly, and an import killed with SIGKILL resumes to what a clean import gives."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import materialize

from countysync_assets.appraisal.demo_files import write_demo_release
from countysync_assets.definitions import appraisal_assets, appraisal_resources_from_env
from countysync_assets.resources.appraisal_release import AppraisalDatabase
from countysync_assets.resources.district_config import load_district
from tests.conftest import clean_env

YEAR = 2025
ACCOUNTS = 1_500


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path) -> str | None:
    """The appraisal database URL: None is the default SQLite file; or a PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_database_url")


def run_import(district_file: Path, work: Path, instance, database: str | None, **env):
    settings = {"COUNTYSYNC_APPRAISAL_DIR": str(work / "data"),
                "COUNTYSYNC_EXPORT_DIR": str(work / "exports"), **env}
    if database:
        settings["COUNTYSYNC_APPRAISAL_DB_URL"] = database
    old = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        resources = appraisal_resources_from_env(str(district_file))
        # the run resolves the URL from the environment (EnvVar); the test opens it directly
        return materialize(appraisal_assets, partition_key=str(YEAR), resources=resources,
                           instance=instance), \
            AppraisalDatabase(url=database, export_dir=settings["COUNTYSYNC_EXPORT_DIR"])
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dump(db, district) -> dict[str, list]:
    """Every target table's rows, in key order: what a user would compare."""
    tables = db.tables(district)
    out = {}
    with tables.engine.connect() as conn:
        for _, member, layout in district.members():
            keys = ", ".join(f'"{k}"' for k in ["tax_year", *layout.key])
            out[member.table] = [tuple(r) for r in conn.execute(sa.text(
                f"SELECT * FROM {tables._t(member.table)} ORDER BY {keys}"))]
    return out


def source_rows(demo: Path, name: str) -> int:
    import zipfile
    for archive in (demo / "data" / "CAMA" / str(YEAR)).glob("*.zip"):
        with zipfile.ZipFile(archive) as zf:
            if name in zf.namelist():
                return zf.read(name).count(b"\r\n") - 1
    raise AssertionError(name)


def test_import_then_unchanged_then_republished_then_rollback(tmp_path, instance, database):
    files = write_demo_release(tmp_path / "demo", ACCOUNTS, YEAR)
    district = load_district(files["hcad"])
    result, db = run_import(files["hcad"], tmp_path, instance, database)
    assert result.success
    checks = [e for e in result.get_asset_check_evaluations()]
    assert len(checks) == 12 and all(c.passed for c in checks)
    first = dump(db, district)
    for table, name in (("property_records", "real_acct.txt"), ("owners", "owners.txt"),
                        ("building_details", "building_res.txt"),
                        ("extra_features", "extra_features.txt")):
        assert len(first[table]) == source_rows(tmp_path / "demo", name)

    again, _ = run_import(files["hcad"], tmp_path, instance, database)
    parsed = again.asset_materializations_for_node("appraisal_parsed")[0].metadata
    assert "unchanged_release" in parsed
    assert dump(db, district) == first
    with db.tables(district).engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {db.tables(district)._t('import_runs')}"
                                    )).scalar_one() == 1

    write_demo_release(tmp_path / "demo", ACCOUNTS, YEAR, revision=1)  # re-published
    republished, _ = run_import(files["hcad"], tmp_path, instance, database)
    records = republished.asset_materializations_for_node("appraisal_tables")
    meta = {m.asset_key.to_user_string(): m.metadata for m in records}
    assert meta["property_records"]["updated"].value > 0
    assert meta["owners"]["updated"].value == 0 and meta["owners"]["unchanged"].value > 0
    assert dump(db, district) != first
    db.tables(district).rollback(2)
    assert dump(db, district) == first


def test_an_import_killed_during_load_resumes_to_a_clean_import(tmp_path, instance, database):
    files = write_demo_release(tmp_path / "demo", 6_000, YEAR)
    district = load_district(files["hcad"])
    env = clean_env(COUNTYSYNC_APPRAISAL_DIR=str(tmp_path / "data"),
                    COUNTYSYNC_EXPORT_DIR=str(tmp_path / "exports"),
                    COUNTYSYNC_APPRAISAL_BLOCK_BYTES="8192",
                    **({"COUNTYSYNC_APPRAISAL_DB_URL": database} if database else {}))
    command = [str(Path(sys.executable).parent / "countysync"), "appraisal-import", "--config",
               str(files["hcad"]), "--year", str(YEAR)]
    killed = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    db = AppraisalDatabase(url=database, export_dir=str(tmp_path / "exports"))
    tables = db.tables(district)
    points = tables._t("import_checkpoints")
    deadline = time.monotonic() + 120
    staged = 0
    while time.monotonic() < deadline and killed.poll() is None:
        try:
            with tables.engine.connect() as conn:
                staged = conn.execute(sa.text(
                    f"SELECT coalesce(sum(rows), 0) FROM {points} WHERE NOT done")).scalar_one()
        except sa.exc.OperationalError:
            staged = 0
        if staged > 2_000:
            break
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert staged > 2_000, "the import ended before it could be killed mid-load"
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Imported" in done.stdout
    resumed = dump(db, district)

    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    with other_database(database) as clean_url:
        result, clean = run_import(files["hcad"], clean_dir, instance, clean_url)
        assert result.success
        assert dump(clean, district) == resumed


@contextmanager
def other_database(url: str | None):
    """A second empty PostgreSQL database beside ``url`` (None stays None: a SQLite file)."""
    if url is None:
        yield None
        return
    base = sa.make_url(url)
    name = f"{base.database}_clean"
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
