"""The code location loads the way ``dagster dev`` loads it, under each supported
configuration, and refuses bad configuration with a message that names the setting."""

import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from conftest import RUN_DIR, clean_env

from countysync_assets.partitions import build_partitions_def

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")


def validate(tmp_path, **env) -> subprocess.CompletedProcess:
    """``dagster definitions validate`` on workspace.yaml, as CI and a user would run it."""
    environment = clean_env()
    environment.update(env, DAGSTER_HOME=str(tmp_path))
    return subprocess.run([str(DAGSTER), "definitions", "validate",
                           "-w", str(ROOT / "workspace.yaml")],
                          cwd=RUN_DIR, env=environment, capture_output=True, text=True,
                          timeout=180)


def test_definitions_validate(tmp_path):
    result = validate(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_hourly_partitions_by_configuration(tmp_path):
    hourly = build_partitions_def("hourly", "2026-05-01")
    assert hourly.get_partition_keys()[:2] == ["2026-05-01-00:00", "2026-05-01-01:00"]
    result = validate(tmp_path, COUNTYSYNC_PARTITION_GRANULARITY="hourly",
                      COUNTYSYNC_PARTITION_START="2026-11-01")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("env", "expected"), [
    ({"COUNTYSYNC_PARTITION_GRANULARITY": "weekly"}, "use one of ['daily', 'hourly']"),
    ({"COUNTYSYNC_PARTITION_START": "May 2025"}, "is not a date"),
    ({"COUNTYSYNC_FORMATS": '{"working": ["parquet"]}'}, "each must be one of sqlite"),
    ({"COUNTYSYNC_SOURCE_PORT": "14x3"}, "COUNTYSYNC_SOURCE_PORT='14x3' is not a whole number"),
    ({"COUNTYSYNC_SOURCE_ENCRYPT": "maybe"}, "is not a yes/no value"),
    ({"COUNTYSYNC_PARALLEL_ROWS": "lots"}, "COUNTYSYNC_PARALLEL_ROWS='lots' is not a whole"),
])
def test_bad_configuration_is_refused_by_name(tmp_path, env, expected):
    result = validate(tmp_path, **env)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr


def test_formats_override_by_configuration(tmp_path):
    result = validate(tmp_path, COUNTYSYNC_FORMATS='{"working": ["sqlite", "csv"]}')
    assert result.returncode == 0, result.stderr


def test_hourly_sync_through_the_cli_as_the_readme_runs_it(tmp_path):
    """Hourly partitions, end to end: demo source, partition-range, dg launch; no warning."""
    environment = clean_env()
    environment.update(
        DAGSTER_HOME=str(tmp_path), COUNTYSYNC_PARTITION_GRANULARITY="hourly",
        COUNTYSYNC_PARTITION_START="2026-05-31", COUNTYSYNC_EXPORT_DIR=str(tmp_path / "out"),
        COUNTYSYNC_DEMO_SOURCE_PATH=str(tmp_path / "demo.sqlite"))
    bin_dir = Path(sys.executable).parent

    def run(*command: str) -> str:
        done = subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=RUN_DIR,
                              env=environment, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout.strip()

    run("countysync", "demo-source", "--rows", "300", "--path", str(tmp_path / "demo.sqlite"),
        "--as-of", "2026-06-01T06:00", "--days", "0.25")
    span = run("countysync", "partition-range")
    assert span == "2026-06-01-00:00...2026-06-01-05:00"
    launched = subprocess.run(
        [str(bin_dir / "dg"), "launch", "--assets", "group:parcels", "--partition-range", span,
         "-m", "countysync_assets.definitions"],
        cwd=RUN_DIR, env=environment, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "Warning" not in launched.stderr, launched.stderr  # nothing superseded, no beta
    files = sorted(p.name for p in (tmp_path / "out" / "working").glob("*.csv"))
    assert files == [f"2026-06-01-0{h}00.csv" for h in range(6)]
    with closing(sqlite3.connect(tmp_path / "out" / "working_db.sqlite")) as conn:
        assert conn.execute("SELECT count(*) FROM working").fetchone()[0] == 300


EXAMPLES = {
    "COUNTYSYNC_SOURCE_URL": "postgresql+psycopg://reader@127.0.0.1:5432/assessor",
    "COUNTYSYNC_SOURCE_HOST": "gis-sql.county.local", "COUNTYSYNC_SOURCE_PORT": "1433",
    "COUNTYSYNC_SOURCE_DATABASE": "Assessor", "COUNTYSYNC_SOURCE_USER": "reader",
    "COUNTYSYNC_SOURCE_PASSWORD": "p@ss:w/o%rd#", "COUNTYSYNC_SOURCE_ODBC_DRIVER": "FreeTDS",
    "COUNTYSYNC_SOURCE_ENCRYPT": "true", "COUNTYSYNC_SOURCE_TRUST_SERVER_CERTIFICATE": "false",
    "COUNTYSYNC_DEMO_SOURCE_PATH": "data/other.sqlite", "COUNTYSYNC_SOURCE_TABLE": "Parcels",
    "COUNTYSYNC_SOURCE_SCHEMA": "dbo", "COUNTYSYNC_SOURCE_KEY_COLUMN": "parcel_key",
    "COUNTYSYNC_SOURCE_CURSOR_COLUMN": "modified", "COUNTYSYNC_SOURCE_GEOMETRY_COLUMN": "shape",
    "COUNTYSYNC_SOURCE_SRID": "2927", "COUNTYSYNC_SOURCE_TIMEZONE": "America/Los_Angeles",
    "COUNTYSYNC_SOURCE_BATCH_SIZE": "2000", "COUNTYSYNC_PARTITION_GRANULARITY": "hourly",
    "COUNTYSYNC_PARTITION_START": "2026-11-01", "COUNTYSYNC_EXPORT_DIR": "out",
    "COUNTYSYNC_FORMATS": '{"working": ["sqlite", "csv"]}',
    "COUNTYSYNC_SENSOR_INTERVAL_SECONDS": "30", "COUNTYSYNC_SENSOR_OVERLAP_SECONDS": "600",
    "COUNTYSYNC_SENSOR_MAX_ROWS_PER_POLL": "5000",
    "COUNTYSYNC_SENSOR_STALLED_AFTER_SECONDS": "900", "COUNTYSYNC_LOCK_WAIT_SECONDS": "30",
    "COUNTYSYNC_PARALLEL_ROWS": "250000",
    "COUNTYSYNC_APPRAISAL_DISTRICT": str(ROOT / "countysync_assets/districts/pacs_example.yaml"),
    "COUNTYSYNC_APPRAISAL_DIR": "appraisal_work",
    "COUNTYSYNC_APPRAISAL_DB_URL": "postgresql+psycopg://postgres@127.0.0.1/appraisal",
    "COUNTYSYNC_APPRAISAL_BLOCK_BYTES": "4194304",
    "COUNTYSYNC_DOWNLOAD_BYTES_PER_SECOND": "5000000",
    "COUNTYSYNC_SMTP_HOST": "mail.county.local", "COUNTYSYNC_SMTP_PORT": "587",
    "COUNTYSYNC_SMTP_TLS": "starttls", "COUNTYSYNC_SMTP_USER": "alerts",
    "COUNTYSYNC_SMTP_PASSWORD": "m@il:pw", "COUNTYSYNC_ALERT_TO": "gis@county.local",
    "COUNTYSYNC_ALERT_FROM": "countysync@county.local",
    "COUNTYSYNC_UI_URL": "http://dagster.county.local:3000",
    "COUNTYSYNC_CELERY_BROKER": "pyamqp://guest:guest@127.0.0.1:5672//",
    "COUNTYSYNC_CELERY_BACKEND": "rpc://", "COUNTYSYNC_CELERY_QUEUE": "countysync-west",
}


def readme_variables() -> set[str]:
    """Every variable of the README's configuration table (`_PORT` after
    `COUNTYSYNC_SOURCE_HOST` stands for COUNTYSYNC_SOURCE_PORT)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n\n", 2)[1]
    names = set()
    for line in table.splitlines()[2:]:
        first = line.split("|")[1]
        full = re.findall(r"`(COUNTYSYNC_[A-Z_]+)`", first)
        prefix = "_".join(full[0].split("_")[:2])
        names.update(full)
        names.update(prefix + short for short in re.findall(r"`(_[A-Z_]+)`", first))
    return names


def test_every_configuration_variable_can_be_set(tmp_path, monkeypatch):
    """Each variable of the README's table, set to an ordinary value, loads: one batch size
    once broke loading (an EnvVar number failed the resource's own check)."""
    assert readme_variables() == set(EXAMPLES), "document and test the same variables"
    result = validate(tmp_path, **EXAMPLES)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    from countysync_assets.resources.source_config import source_from_env

    for variable, value in EXAMPLES.items():
        monkeypatch.setenv(variable, value)
    source = source_from_env(as_env_vars=False)
    assert (source.batch_size, source.port, source.srid) == (2000, 1433, 2927)
