"""A source outage in the middle of an extract: the real PostgreSQL connection is terminated
after the first page. The run fails cleanly, nothing is published, and the change sensor's
next tick requests the windows again until the outputs equal the source."""

import sqlite3
from contextlib import closing

import sqlalchemy as sa
from conftest import AS_OF, FIRST_KEY, LAST_KEY, requested_range
from dagster import DagsterEventType
from output_checks import assert_outputs_match_source, partition_keys

from countysync_assets.demo_source import create_demo_source
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors import source_changes_sensor as sensor_module
from countysync_assets.sensors.in_process import InProcessSync

OUTAGES = {"left": 1}  # how many extracts still lose their connection


class KilledMidExtract(MasterParcelsSource):
    """The source as it is, except that the server drops the connection after one page."""

    def iter_changed_batches(self, start, end, *args, **kwargs):
        for number, batch in enumerate(super().iter_changed_batches(start, end, *args,
                                                                    **kwargs)):
            yield batch
            if number == 0 and OUTAGES["left"]:
                OUTAGES["left"] -= 1
                admin = sa.create_engine(sa.make_url(self.url).set(database="postgres"),
                                         isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.execute(sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"),
                        {"db": sa.make_url(self.url).database})
                admin.dispose()


def test_connection_killed_mid_extract_fails_cleanly_and_is_caught_up(
        pg_database_url, tmp_path, instance, monkeypatch):
    monkeypatch.setattr(sensor_module, "INTERVAL_SECONDS", 0)  # retry without backoff wait
    create_demo_source(pg_database_url, rows=1_200, seed=8, as_of=AS_OF, days=4)
    exports = tmp_path / "exports"
    harness = InProcessSync(KilledMidExtract(url=pg_database_url, batch_size=100), exports,
                            instance)
    OUTAGES["left"] = 1
    first = harness.tick()
    assert harness.run(first, raise_on_error=False) == [False]  # one run over the 4 windows
    failed_run = instance.get_runs()[0]
    failures = instance.all_logs(failed_run.run_id, of_type=DagsterEventType.STEP_FAILURE)
    message = failures[0].dagster_event.event_specific_data.error.message
    assert "Cannot read the master parcel database (host 127.0.0.1" in message
    # nothing half-published: no window file, no row in any database
    assert not [p for p in exports.rglob("*") if p.is_file() and p.suffix != ".sqlite"]
    for database in exports.glob("*.sqlite"):
        with closing(sqlite3.connect(database)) as conn:
            tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE "
                                                 "type = 'table'")]
            assert all(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] == 0
                       for t in tables), database

    retried = harness.tick()
    assert [requested_range(r) for r in retried.run_requests] == [(FIRST_KEY, LAST_KEY)]
    assert harness.run(retried) == [True]
    assert_outputs_match_source(pg_database_url, exports, partition_keys(FIRST_KEY, LAST_KEY))
