"""Shared fixtures: real demo sources (SQLite file, PostgreSQL database), a real Dagster
instance, and a helper that materializes a partition range the way the README does."""

import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

# The tests set their own configuration: never the .env a person made in the checkout (the
# README's demo writes one), here or in the subprocesses the tests start. Dagster's CLI loads
# the .env of its working folder over the environment, so they start in one without it.
os.environ["COUNTYSYNC_ENV_FILE"] = os.devnull
RUN_DIR = Path(tempfile.mkdtemp(prefix="countysync-run-"))

import pytest
import sqlalchemy as sa
import yaml
from dagster import (
    AssetKey,
    AssetPartitionStatus,
    DagsterInstance,
    PartitionKeyRange,
    instance_for_test,
    materialize,
)

from countysync_assets.assets.parcel_sync import SPECS
from countysync_assets.definitions import all_assets
from countysync_assets.demo_source import create_demo_source, parcels_table
from countysync_assets.instance_storage import EVENT_BATCH_SIZE_ENV
from countysync_assets.io_managers.export_io_manager import PARALLEL_ROWS, ExportIOManager
from countysync_assets.partitions import PARTITIONS, range_tags
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.in_process import InProcessSync

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
DAYS = 4  # demo rows fall in the four daily partitions 2026-05-28 .. 2026-05-31
FIRST_KEY, LAST_KEY = "2026-05-28", "2026-05-31"
PG_ADMIN_URL = os.environ.get("COUNTYSYNC_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def demo_url(tmp_path) -> str:
    """A fresh 2,000-parcel demo source in a SQLite file."""
    url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    create_demo_source(url, rows=2_000, seed=7, as_of=AS_OF, days=DAYS)
    return url


def clean_env(**settings: str) -> dict[str, str]:
    """The environment for a countysync subprocess: no COUNTYSYNC_* setting but ``settings``,
    and no .env file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTYSYNC_")}
    return {**env, "COUNTYSYNC_ENV_FILE": os.devnull, **settings}


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip a test whose service is missing on this machine; in CI (CI=true) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run every test)")
    pytest.skip(reason)


def stop_process_group(process: subprocess.Popen, seconds: float = 60) -> None:
    """Stop a server a test started in its own process group (``start_new_session``): TERM,
    so it shuts down cleanly, then KILL if it has not within ``seconds``."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


CHROMIUM = "/usr/bin/chromium"


@contextmanager
def browser_page() -> Iterator:
    """A page in Debian's headless Chromium, driven by Playwright, as a person sees it. Waits
    are generous (two minutes): a busy machine renders slowly, a test must not fail on it."""
    if not Path(CHROMIUM).exists():
        skip_or_fail_in_ci("Chromium is not installed (Debian package chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(120_000)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests keep what a person should look at afterwards (browser screenshots):
    ``test-artifacts/`` in the checkout, or ``COUNTYSYNC_TEST_ARTIFACTS``; CI keeps it."""
    folder = Path(os.environ.get("COUNTYSYNC_TEST_ARTIFACTS")
                  or Path(__file__).resolve().parent.parent / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The local PostgreSQL server. Skipped where there is none, but never in CI."""
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
    except sa.exc.OperationalError as err:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {err.orig}"
        skip_or_fail_in_ci(message)
    return PG_ADMIN_URL


@pytest.fixture
def pg_database_url(postgres_admin_url):
    """An empty PostgreSQL database of this test's own, dropped afterwards."""
    name = f"countysync_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(postgres_admin_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


ROOT = Path(__file__).resolve().parents[1]
# the storage dagster.yaml gives the local instance (countysync_assets/instance_storage.py)
SHIPPED_STORAGE = yaml.safe_load((ROOT / "dagster.yaml").read_text())["storage"]


def storage_sets_batch_size(monkeypatch) -> None:
    """Let the shipped storage set Dagster's event batch size for this test's process, as it
    does in a deployed one (only where the environment has none), and take it back after."""
    monkeypatch.setenv(EVENT_BATCH_SIZE_ENV, "0")  # recorded, so the teardown restores it
    monkeypatch.delenv(EVENT_BATCH_SIZE_ENV)


@pytest.fixture
def instance(monkeypatch):
    """A real Dagster instance in a temporary DAGSTER_HOME, on the storage countysync ships."""
    storage_sets_batch_size(monkeypatch)
    with instance_for_test(overrides={"storage": SHIPPED_STORAGE}) as dagster_instance:
        yield dagster_instance


def assert_each_window_materialized(instance: DagsterInstance, rows: int,
                                    first: str = FIRST_KEY, last: str = LAST_KEY) -> None:
    """After one range run over first..last: every window has its own materialization of
    every asset of the sync (also when Dagster stored them in batches), and the run's
    figures are named as the run's (``rows``: the rows it read)."""
    windows = PARTITIONS.get_partition_keys_in_range(PartitionKeyRange(first, last))
    for spec in SPECS:
        records = instance.fetch_materializations(spec.key, limit=1000).records
        assert sorted(r.partition_key for r in records) == windows, spec.key
        assert instance.get_materialized_partitions(spec.key) == set(windows)
        entry = instance.get_asset_records([spec.key])[0].asset_entry  # what the UI shows
        assert entry.last_materialization_record.partition_key == windows[-1], spec.key
    working = instance.fetch_materializations(AssetKey("working"), limit=1000).records
    run_rows = {r.asset_materialization.metadata["run_rows"].value for r in working}
    assert run_rows == {rows}, run_rows


def materialize_range(source: MasterParcelsSource, export_dir, instance: DagsterInstance,
                      first: str = FIRST_KEY, last: str = LAST_KEY, raise_on_error: bool = True,
                      formats: dict[str, list[str]] | None = None,
                      parallel_rows: int = PARALLEL_ROWS):
    """Materialize every asset for partitions first..last in one run, on a real instance
    (``formats``: as COUNTYSYNC_FORMATS sets them; from ``parallel_rows`` rows the geo
    formats are written in a second process)."""
    return materialize(
        all_assets,
        instance=instance,
        resources={"source": source, "io_manager": ExportIOManager(
            export_dir=str(export_dir), formats=formats or {}, parallel_rows=parallel_rows)},
        tags=range_tags(first, last),
        raise_on_error=raise_on_error,
    )


def requested_range(request) -> tuple[str, str]:
    """The first and last partition of a sensor's run request (one partition or a range)."""
    if request.partition_key:
        return request.partition_key, request.partition_key
    return (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"])


def keyless_copy(url: str, name: str = "copy") -> str:
    """A copy of MasterParcels without its primary key, so tests can break key rules."""
    engine = sa.create_engine(url)
    table = sa.Table(name, sa.MetaData(), *[sa.Column(c.name, c.type) for c in
                                            parcels_table(sa.MetaData()).columns])
    table.create(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'INSERT INTO "{name}" SELECT * FROM "MasterParcels"')
    engine.dispose()
    return name


def execute(url: str, statement: str, **params) -> None:
    """Run one statement against a source, as a DBA fixing (or breaking) data would."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)
    engine.dispose()


@pytest.fixture
def syncing(demo_url, tmp_path, instance) -> InProcessSync:
    """The change sensor over the demo source, an export folder and a real instance."""
    return InProcessSync(MasterParcelsSource(url=demo_url), tmp_path / "exports", instance)


RELIABILITY: list[dict] = []


@pytest.fixture(scope="session")
def reliability():
    """Record one row of the README's Reliability table (figures of a fault trial)."""
    return lambda **row: RELIABILITY.append(row)


def pytest_sessionfinish(session, exitstatus):
    """With COUNTYSYNC_RELIABILITY_REPORT set (scripts/reliability.sh), write the fault
    trials' figures to the README's Reliability table."""
    if os.environ.get("COUNTYSYNC_RELIABILITY_REPORT") and RELIABILITY:
        from reliability_report import write_report

        write_report(RELIABILITY, passed=exitstatus == 0)


def assert_failed_range_run_shows_each_window_failed(instance: DagsterInstance, demo_url: str,
                                                     exports: Path) -> None:
    """The planned events of a new run come as one batch: the UI's partition status is read
    from them, so a range run that fails must show every window it held as failed, and the
    rerun that succeeds every window as materialized."""
    sync = InProcessSync(MasterParcelsSource(url=demo_url), exports, instance)
    windows = PARTITIONS.get_partition_keys_in_range(PartitionKeyRange(FIRST_KEY, LAST_KEY))
    execute(demo_url, 'ALTER TABLE "MasterParcels" RENAME TO "Renamed"')  # a DBA's mistake
    failed = sync.defs.resolve_job_def("sync_parcels").execute_in_process(
        instance=instance, tags=range_tags(FIRST_KEY, LAST_KEY), raise_on_error=False)
    assert not failed.success
    status = instance.get_status_by_partition(AssetKey("working"), windows, PARTITIONS)
    assert status == dict.fromkeys(windows, AssetPartitionStatus.FAILED)
    execute(demo_url, 'ALTER TABLE "Renamed" RENAME TO "MasterParcels"')
    assert sync.sync_range(FIRST_KEY, LAST_KEY)
    status = instance.get_status_by_partition(AssetKey("working"), windows, PARTITIONS)
    assert status == dict.fromkeys(windows, AssetPartitionStatus.MATERIALIZED)
