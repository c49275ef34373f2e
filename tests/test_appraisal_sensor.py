"""The release sensor against a district server on loopback: nothing published yet -> skip;
published -> one import run of the current tax year; imported -> skip; re-published under the
same names (a supplement) -> a new run."""

from datetime import UTC, datetime

import pytest
from dagster import RunRequest, SkipReason, build_sensor_context, materialize

from countysync_assets.definitions import appraisal_assets
from countysync_assets.resources.appraisal_release import AppraisalDatabase, AppraisalRelease
from countysync_assets.resources.release_downloader import ReleaseDownloader
from countysync_assets.sensors.appraisal_release_sensor import appraisal_release_sensor
from tests.release_server import ReleaseServer, serve_demo_release


@pytest.fixture
def server():
    running = ReleaseServer().start()
    yield running
    running.stop()


def test_the_sensor_imports_a_new_or_republished_release_once(tmp_path, instance, server):
    year = datetime.now(UTC).year  # the sensor watches the current tax year
    district_file, _ = serve_demo_release(server, tmp_path, year, 300)
    resources = {"appraisal_release": AppraisalRelease(district_file=str(district_file),
                                                       work_dir=str(tmp_path / "data")),
                 "appraisal_db": AppraisalDatabase(export_dir=str(tmp_path / "exports")),
                 "downloader": ReleaseDownloader()}

    def tick():
        context = build_sensor_context(instance=instance, resources={
            k: resources[k] for k in ("appraisal_release", "downloader")})
        return appraisal_release_sensor(context)

    published = dict(server.files)
    server.files.clear()
    assert "has not published" in tick().skip_message
    server.files.update(published)

    first = tick()
    assert isinstance(first, RunRequest) and first.partition_key == str(year)
    assert tick().run_key == first.run_key  # asking again is the same run: Dagster dedupes it

    assert materialize(appraisal_assets, partition_key=first.partition_key,
                       resources=resources, instance=instance).success
    unchanged = tick()
    assert isinstance(unchanged, SkipReason) and "unchanged" in unchanged.skip_message

    serve_demo_release(server, tmp_path, year, 300, revision=1)  # a supplement, same names
    again = tick()
    assert isinstance(again, RunRequest) and again.run_key != first.run_key
    assert again.partition_key == str(year)
