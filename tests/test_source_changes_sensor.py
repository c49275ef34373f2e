"""The change sensor on a real instance and a real SQLite source (``build_sensor_context``);
the runs it requests are executed for real, so outputs are checked against the source."""

import json
import shutil
from datetime import timedelta

import pytest
from conftest import AS_OF, FIRST_KEY, LAST_KEY, execute, materialize_range, requested_range
from output_checks import assert_outputs_match_source, partition_keys

from countysync_assets.demo_source import churn
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors import source_changes_sensor as sensor_module
from countysync_assets.sensors.sync_cursor import SyncCursor


def test_first_tick_requests_one_run_over_the_windows_and_then_skips(syncing, demo_url,
                                                                     tmp_path):
    """Four changed windows are one run of their range, not four runs contending for the
    same output files."""
    tick, run = syncing.tick, syncing.run
    first = tick()
    assert [requested_range(r) for r in first.run_requests] == [(FIRST_KEY, LAST_KEY)]
    cursor = json.loads(syncing.cursor)
    assert cursor["version"] == 1
    assert cursor["watermark"] in first.run_requests[0].run_key
    assert run(first) == [True]
    assert_outputs_match_source(demo_url, tmp_path / "exports", partition_keys(FIRST_KEY,
                                                                               LAST_KEY))
    second = tick()
    assert not second.run_requests and "No changes since" in second.skip_reason.skip_message
    assert json.loads(syncing.cursor)["pending"] == {}  # the runs succeeded


def test_churn_requests_only_the_changed_window_and_outputs_catch_up(syncing, demo_url,
                                                                        tmp_path):
    tick, run = syncing.tick, syncing.run
    run(tick())
    churn(demo_url, updates=25, inserts=10, seed=3, now=AS_OF + timedelta(hours=9))
    result = tick()
    assert [r.partition_key for r in result.run_requests] == ["2026-06-01"]
    assert run(result) == [True]
    assert_outputs_match_source(demo_url, tmp_path / "exports",
                                partition_keys(FIRST_KEY, "2026-06-01"), ["2026-06-01"])


def test_cursor_keeps_microseconds_and_the_tie_breaking_key(syncing, demo_url):
    tick = syncing.tick
    execute(demo_url, 'UPDATE "MasterParcels" SET updated_at = :t WHERE id IN (5, 6, 7)',
            t="2026-05-31 23:59:59.999999")
    tick()
    cursor = SyncCursor.from_json(syncing.cursor)
    assert cursor.watermark == "2026-05-31 23:59:59.999999"  # as SQLite stores it
    assert cursor.watermark_id == 7
    assert SyncCursor.from_json(cursor.to_json()) == cursor


def test_rows_arriving_late_behind_the_watermark_are_not_lost(syncing, demo_url):
    """A row committed late, with an updated_at equal to (or just before) the watermark."""
    tick = syncing.tick
    tick()
    watermark = SyncCursor.from_json(syncing.cursor).watermark.replace("T", " ")
    execute(demo_url, 'INSERT INTO "MasterParcels" SELECT 90001, parcel_id, owner, '
            "situs_address, use_code, acres, land_value, improvement_value, assessed_value, "
            'tax_year, :t, geometry FROM "MasterParcels" WHERE id = 1', t=watermark)
    tied = tick()
    assert [r.partition_key for r in tied.run_requests] == [LAST_KEY]
    assert not tick().run_requests  # seen once; a rerun of the same look-back is a no-op


def test_a_huge_change_set_is_one_streamed_run(syncing, demo_url, tmp_path, monkeypatch):
    """A first sync above the row limit is one run over every window that holds rows (it
    streams, so its memory does not grow with them)."""
    monkeypatch.setattr(sensor_module, "MAX_ROWS_PER_POLL", 600)  # the 4 days hold 2,000
    result = syncing.tick()
    assert len(result.run_requests) == 1
    assert requested_range(result.run_requests[0]) == (FIRST_KEY, LAST_KEY)
    assert not syncing.tick().run_requests  # before the run: nothing more is requested
    assert syncing.run(result) == [True]
    assert not syncing.tick().run_requests
    assert_outputs_match_source(demo_url, tmp_path / "exports", partition_keys(FIRST_KEY,
                                                                               LAST_KEY))


def test_a_new_cursor_starts_from_what_the_outputs_hold(syncing, demo_url, tmp_path,
                                                        instance):
    """Outputs written without the sensor (the README's demo, a CLI backfill, another
    instance): a new cursor requests nothing until the source changes."""
    source = MasterParcelsSource(url=demo_url)
    assert materialize_range(source, tmp_path / "exports", instance).success
    assert not syncing.tick().run_requests
    churn(demo_url, updates=3, seed=1, now=AS_OF + timedelta(hours=2))
    assert [r.partition_key for r in syncing.tick().run_requests] == ["2026-06-01"]


def test_a_failed_run_is_requested_again_until_the_outputs_match(syncing, demo_url, tmp_path,
                                                                 monkeypatch):
    tick, run = syncing.tick, syncing.run
    monkeypatch.setattr(sensor_module, "INTERVAL_SECONDS", 0)  # no backoff wait in a test
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "working").write_text("a file where a folder must go: every run fails")
    first = tick()
    assert run(first, raise_on_error=False) == [False]
    assert len(json.loads(syncing.cursor)["pending"]) == 1

    (exports / "working").unlink()  # the problem is fixed
    retried = tick()
    assert [requested_range(r) for r in retried.run_requests] == [(FIRST_KEY, LAST_KEY)]
    assert "#retry1" in retried.run_requests[0].run_key
    assert run(retried) == [True]
    assert not tick().run_requests
    assert json.loads(syncing.cursor)["pending"] == {}
    assert_outputs_match_source(demo_url, exports, partition_keys(FIRST_KEY, LAST_KEY))
    shutil.rmtree(exports)


def test_unknown_cursor_version_says_how_to_reset():
    with pytest.raises(ValueError, match="Reset the cursor"):
        SyncCursor.from_json('{"version": 99}')
