"""Ten days of assessor work: after each, the change sensor's runs and the delete check
must bring every current-state output back in step with the source."""

from datetime import timedelta

from conftest import AS_OF, FIRST_KEY
from output_checks import assert_outputs_match_source, partition_keys

from countysync_assets.demo_source import churn


def test_ten_rounds_of_churn_stay_in_step(syncing, demo_url, tmp_path):
    exports = tmp_path / "exports"
    keys = partition_keys(FIRST_KEY, "2026-06-01")
    assert all(syncing.run(syncing.tick()))
    for day in range(10):
        churn(demo_url, updates=30, inserts=8, deletes=5, seed=day,
              now=AS_OF + timedelta(hours=day + 1, minutes=7 * day))
        requested = syncing.tick()
        assert [r.partition_key for r in requested.run_requests] == ["2026-06-01"], day
        assert all(syncing.run(requested))
        assert syncing.reconcile()
        assert_outputs_match_source(demo_url, exports, keys, file_keys=[])
        assert not syncing.tick().run_requests  # in step: nothing more to do
