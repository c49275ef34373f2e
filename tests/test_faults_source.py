"""The fault suite, part three: the source misbehaves or is misconfigured. The server goes away
during the delete check's key scan or refuses connections; a password holds characters a URL
cannot carry as typed. Each ends in one clear line, nothing published, and the next run whole;
the password (a canary) never reaches a log, the event log, the compute logs, metadata or any
output, whichever way the sync runs (CLI, the sensor's runs, status, partition-range)."""

import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from conftest import AS_OF, FIRST_KEY, LAST_KEY, RUN_DIR, clean_env, materialize_range
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from output_checks import assert_outputs_match_source, partition_keys, snapshot

from countysync_assets.demo_source import churn, create_demo_source
from countysync_assets.resources.master_parcels_source import MasterParcelsSource, SourceError
from countysync_assets.sensors.in_process import InProcessSync

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KEYS = partition_keys(FIRST_KEY, LAST_KEY)


def terminate_backends(url: str) -> None:
    admin = sa.create_engine(sa.make_url(url).set(database="postgres"),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                             "datname = :db AND pid <> pg_backend_pid()"),
                     {"db": sa.make_url(url).database})
    admin.dispose()


class DropsDuringKeyScan(MasterParcelsSource):
    """The source, except that the server drops the connection after the first page of keys."""

    def iter_keys(self):
        for number, batch in enumerate(super().iter_keys()):
            yield batch
            if number == 0:
                terminate_backends(self.url)


def test_an_outage_during_the_delete_check_key_scan_deletes_nothing(
        pg_database_url, tmp_path, instance, reliability):
    create_demo_source(pg_database_url, rows=900, seed=4, as_of=AS_OF, days=4)
    exports = tmp_path / "exports"
    sync = InProcessSync(MasterParcelsSource(url=pg_database_url), exports, instance)
    assert sync.catch_up()
    churn(pg_database_url, deletes=20, seed=1)
    before = snapshot(exports)
    dropping = InProcessSync(DropsDuringKeyScan(url=pg_database_url, batch_size=100), exports,
                             instance)
    result = dropping.defs.resolve_job_def("reconcile_deletes").execute_in_process(
        instance=instance, raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "SourceError: Cannot read the master parcel database (host 127.0.0.1" in message
    assert "No output was changed" in message and "\n" not in message.strip()
    assert snapshot(exports) == before
    assert sync.reconcile()
    assert_outputs_match_source(pg_database_url, exports, KEYS, file_keys=[])
    reliability(suite="source", case="outage during the delete check's key scan", trials=1,
                outcome="clear error, nothing deleted, next check whole")


class ClosesAtOnce:
    """A port that accepts a connection and closes it straight away (a crashed listener)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            conn.close()


@pytest.mark.parametrize("kind", ["refused", "closed-at-once"])
def test_an_unreachable_server_fails_clearly_and_publishes_nothing(kind, demo_url, tmp_path,
                                                                   instance, reliability):
    exports = tmp_path / "exports"
    assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance).success
    before = snapshot(exports)
    port = 1 if kind == "refused" else ClosesAtOnce().port
    down = MasterParcelsSource(url=f"postgresql+psycopg://county:CANARY-4411@127.0.0.1:{port}"
                                   "/master")
    result = materialize_range(down, exports, instance, raise_on_error=False)
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "SourceError: Cannot read the master parcel database (host 127.0.0.1" in message
    assert "CANARY-4411" not in message and "\n" not in message.strip()
    assert snapshot(exports) == before
    reliability(suite="source", case=f"connection {kind}", trials=1,
                outcome="clear error, nothing published, next run whole")


@pytest.mark.parametrize("typed", ["CANARY-7781@x", "CANARY:7781", "CANARY/7781",
                                   "CANARY#7781", "CANARY%7781"])
def test_a_password_that_a_url_cannot_carry_as_typed_is_refused_unechoed(typed):
    url = f"postgresql+psycopg://county:{typed}@127.0.0.1:5432/master"
    if "%" in typed or ":" in typed:  # still a URL: parsed, and never shown
        source = MasterParcelsSource(url=url)
        assert "CANARY" not in source.display_url()
        return
    with pytest.raises(SourceError) as refused:
        MasterParcelsSource(url=url).sqlalchemy_url()
    assert "must be percent-encoded" in str(refused.value)
    assert "COUNTYSYNC_SOURCE_PASSWORD" in str(refused.value)
    assert "CANARY" not in str(refused.value) and "7781" not in str(refused.value)


def leaks(canary: str, *places: Path, texts: tuple[str, ...] = ()) -> list[str]:
    """Where the canary (as typed, or percent-encoded) appears."""
    forms = {canary.encode(), quote(canary, safe="").encode()}
    found = [f"output {i}" for i, text in enumerate(texts) if any(f.decode() in text
                                                                   for f in forms)]
    for place in places:
        for path in place.rglob("*"):
            if path.is_file() and any(form in path.read_bytes() for form in forms):
                found.append(str(path))
    return found


PASSWORDS = ["CANARY-9a@b:c/d%e#f"]  # every character a URL cannot carry as typed


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_password_never_leaves_the_environment(password, pg_database_url, tmp_path,
                                                   reliability):
    """PostgreSQL here trusts local connections, so the password is carried but not checked:
    the syncs succeed and every place they write to is searched for it; a failing run (a
    wrong database) too."""
    create_demo_source(pg_database_url, rows=300, seed=6, as_of=AS_OF, days=4)
    home, exports = tmp_path / "home", tmp_path / "exports"
    home.mkdir()
    base = sa.make_url(pg_database_url)
    env = clean_env()
    env.update(DAGSTER_HOME=str(home), COUNTYSYNC_EXPORT_DIR=str(exports),
               COUNTYSYNC_SOURCE_URL=base.render_as_string(hide_password=False),
               COUNTYSYNC_SOURCE_PASSWORD=password, PYTHONPATH=str(ROOT))
    outputs = []

    def run(*command: str, ok: bool = True, **extra) -> None:
        done = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=RUN_DIR,
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)
        outputs.append(done.stdout + done.stderr)
        assert (done.returncode == 0) == ok, done.stdout[-2000:] + done.stderr[-2000:]

    span = f"{FIRST_KEY}...{LAST_KEY}"
    run("countysync", "partition-range")
    run("dagster", "asset", "materialize", "-m", "countysync_assets.definitions", "--select",
        "group:parcels", "--partition-range", span)
    run("countysync", "status")
    wrong = base.set(database="no_such_county").render_as_string(hide_password=False)
    run("dagster", "asset", "materialize", "-m", "countysync_assets.definitions", "--select",
        "group:parcels", "--partition-range", span, ok=False, COUNTYSYNC_SOURCE_URL=wrong)
    run("countysync", "status", ok=False, COUNTYSYNC_SOURCE_URL=wrong)
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        source = MasterParcelsSource(url=base.render_as_string(hide_password=False),
                                     password=password)
        churn(pg_database_url, updates=10, seed=2)
        assert InProcessSync(source, exports, instance).catch_up()
    found = leaks(password, home, exports, texts=tuple(outputs))
    assert not found, f"the password leaked into {found}"
    reliability(suite="secrets", case="password with @ : / % #", trials=6, password_leaks=0,
                outcome="CLI run, failing run, status, partition-range, sensor runs")
