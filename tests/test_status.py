"""``countysync status``: what a GIS analyst asks first: when did it last sync, and is it behind?"""

from datetime import timedelta

from conftest import AS_OF, materialize_range

from countysync_assets.cli import main
from countysync_assets.demo_source import churn
from countysync_assets.resources.master_parcels_source import MasterParcelsSource


def test_status_lists_syncs_watermark_and_lag(demo_url, tmp_path, instance, monkeypatch,
                                              capsys):
    exports = tmp_path / "exports"
    monkeypatch.setenv("COUNTYSYNC_SOURCE_URL", demo_url)
    assert main(["status", "--export-dir", str(exports)]) == 0
    assert "No syncs yet" in capsys.readouterr().out

    materialize_range(MasterParcelsSource(url=demo_url), exports, instance)
    assert main(["status", "--export-dir", str(exports)]) == 0
    out = capsys.readouterr().out
    assert "working" in out and "2026-05-28...2026-05-31" in out and "2000 new" in out
    assert "in step with the source" in out

    assert "The outputs hold 2,000 parcels; the source has 2,000." in out
    assert main(["outputs", "--export-dir", str(exports)]) == 0
    listed = capsys.readouterr().out  # the per-window files: a .csv and a .json per window
    assert "working/               8 files: 4 sync window(s), one .csv and one .json file each" \
        in listed, listed

    churn(demo_url, updates=12, inserts=3, deletes=5, seed=1, now=AS_OF + timedelta(hours=2))
    assert main(["status", "--export-dir", str(exports)]) == 0
    out = capsys.readouterr().out
    assert "The source has 15 newer row(s), up to 2026-06-01T01:59:59" in out  # churn: last second
    # a cursor never sees a delete: the status must (it said "in step" here before)
    assert "The outputs hold 2,000 parcels; the source has 1,998." in out
    assert "5 parcel(s) deleted at the source are still published" in out
    assert "3 source parcel(s) are in no output" in out
    assert "in step" not in out
