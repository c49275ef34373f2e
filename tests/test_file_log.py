"""The rotating file log of dagster.yaml: a run's log lines reach the file, its password never."""

from pathlib import Path

import yaml
from conftest import materialize_range
from dagster import instance_for_test

from countysync_assets.resources.master_parcels_source import MasterParcelsSource

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_sync_is_in_the_log_file_without_its_password(tmp_path):
    logs = yaml.safe_load((ROOT / "dagster.yaml").read_text())["python_logs"]
    logs["dagster_handler_config"]["handlers"]["countysync_file"]["filename"] = \
        str(tmp_path / "countysync.log")
    down = MasterParcelsSource(url="postgresql+psycopg://county:CANARY-5512@127.0.0.1:1/parcels")
    with instance_for_test(overrides={"python_logs": logs}) as instance:
        result = materialize_range(down, tmp_path / "exports", instance, raise_on_error=False)
    assert not result.success
    text = (tmp_path / "countysync.log").read_text()
    assert "Cannot read the master parcel database (host 127.0.0.1, database parcels" in text
    assert "STEP_FAILURE" in text or "failed" in text
    assert "CANARY-5512" not in text
