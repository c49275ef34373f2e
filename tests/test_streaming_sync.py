"""The sync as one streamed step: history costs one partition (the baseline), a run in many
batches writes exactly what a run in one batch writes, window metadata and files are the
window's own, and the GeoPackage opens cleanly in Debian 12's GDAL 3.6."""

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from conftest import (
    FIRST_KEY,
    LAST_KEY,
    materialize_range,
    requested_range,
    skip_or_fail_in_ci,
)
from dagster import AssetKey
from output_checks import assert_outputs_match_source, partition_keys, snapshot, source_rows

from countysync_assets.demo_source import create_demo_source
from countysync_assets.partitions import PARTITIONS
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.in_process import InProcessSync

GO_LIVE = PARTITIONS.get_first_partition_key()  # the partitions' start (tests: 2025-01-01)
VALIDATE_GPKG = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")


def test_the_first_partition_holds_the_baseline(tmp_path, instance):
    """Rows last changed before the go-live date belong to the first window: a first sync of a
    county's history records two windows here, not one per day since its oldest edit."""
    url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    create_demo_source(url, rows=600, seed=3, as_of=datetime(2025, 1, 3, tzinfo=UTC), days=40)
    rows = source_rows(url)
    assert (rows["partition"] == GO_LIVE).sum() > 400  # most of the history is the baseline
    sync = InProcessSync(MasterParcelsSource(url=url), tmp_path / "exports", instance)
    first_sync = sync.tick()
    assert [requested_range(r) for r in first_sync.run_requests] == [(GO_LIVE, "2025-01-02")]
    assert all(sync.run(first_sync)) and sync.reconcile()
    exports = tmp_path / "exports"
    assert_outputs_match_source(url, exports, [GO_LIVE, "2025-01-02"])
    # a backfill of the first window re-reads the baseline and changes nothing
    before = snapshot(exports)
    assert materialize_range(MasterParcelsSource(url=url), exports, instance, GO_LIVE,
                             GO_LIVE).success
    assert snapshot(exports) == before


def test_many_small_batches_write_what_one_batch_writes(demo_url, tmp_path, instance):
    """In one process or on two (the geo formats in a second process), in one batch or many:
    the same files, byte for byte."""
    one, many, two = tmp_path / "one", tmp_path / "many", tmp_path / "two"
    assert materialize_range(MasterParcelsSource(url=demo_url), one, instance).success
    assert materialize_range(MasterParcelsSource(url=demo_url, batch_size=97), many,
                             instance).success
    assert snapshot(many) == snapshot(one)
    assert_outputs_match_source(demo_url, many, partition_keys(FIRST_KEY, LAST_KEY))
    run = materialize_range(MasterParcelsSource(url=demo_url, batch_size=97), two, instance,
                            parallel_rows=1)
    assert run.success
    assert any("in a second process" in event.message
               for event in instance.all_logs(run.run_id))
    assert snapshot(two) == snapshot(one)


def test_window_metadata_is_the_windows_own(demo_url, tmp_path, instance):
    """A range run's figures are named as the run's (Dagster records one set for every window
    of the range); a one-window run reports the window's row count, plotted per partition."""
    source, exports = MasterParcelsSource(url=demo_url), tmp_path / "exports"
    assert materialize_range(source, exports, instance).success
    ranged = instance.get_latest_materialization_event(AssetKey("working")).asset_materialization
    assert "dagster/row_count" not in ranged.metadata
    assert ranged.metadata["run_rows"].value == 2_000
    assert ranged.metadata["run_windows"].value == 4
    assert materialize_range(source, exports, instance, LAST_KEY, LAST_KEY).success
    single = instance.get_latest_materialization_event(AssetKey("working")).asset_materialization
    expected = (source_rows(demo_url)["partition"] == LAST_KEY).sum()
    assert single.partition == LAST_KEY
    assert single.metadata["dagster/row_count"].value == expected
    assert single.metadata["csv_path"].value.endswith(f"working/{LAST_KEY}.csv")


def test_a_rerun_leaves_every_window_file_untouched(demo_url, tmp_path, instance):
    """Anything that mirrors the export folder by date must not recopy unchanged files."""
    source, exports = MasterParcelsSource(url=demo_url), tmp_path / "exports"
    assert materialize_range(source, exports, instance).success
    files = [p for p in exports.rglob("*") if p.suffix in {".csv", ".json", ".geojson"}
             and p.parent != exports]
    times = {p: p.stat().st_mtime_ns for p in files}
    assert materialize_range(source, exports, instance).success
    assert {p: p.stat().st_mtime_ns for p in files} == times


def test_the_geopackage_opens_cleanly_in_debian_gdal(demo_url, tmp_path, instance):
    """GeoPackage 1.2 with one DATETIME form: GDAL 3.6's validate_gpkg.py passes and ogrinfo
    opens it without a warning, after a first sync and after a merge."""
    if not (shutil.which("ogrinfo") and VALIDATE_GPKG.exists()):
        skip_or_fail_in_ci("Debian's gdal-bin and python3-gdal are not installed "
                           "(scripts/system-packages.sh installs them)")
    source, exports = MasterParcelsSource(url=demo_url), tmp_path / "exports"
    assert materialize_range(source, exports, instance, FIRST_KEY, "2026-05-29").success
    assert_opens_cleanly(exports / "geo_db.gpkg")  # a new file
    assert materialize_range(source, exports, instance, "2026-05-30", LAST_KEY).success
    assert_opens_cleanly(exports / "geo_db.gpkg")  # one merged into


def assert_opens_cleanly(gpkg: Path) -> None:
    checked = subprocess.run(["/usr/bin/python3", str(VALIDATE_GPKG), str(gpkg)],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout
    opened = subprocess.run(["ogrinfo", "-ro", "-al", "-so", str(gpkg)],
                            capture_output=True, text=True, timeout=120)
    assert opened.returncode == 0 and "Feature Count" in opened.stdout
    assert "Warning" not in opened.stderr + opened.stdout, opened.stderr
