"""The Dagster UI, for real: ``dagster dev`` on workspace.yaml with a persistent DAGSTER_HOME,
driven through the GraphQL API the UI itself uses. A sync started there must just work."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import AS_OF, FIRST_KEY, LAST_KEY
from output_checks import assert_outputs_match_source, partition_keys, snapshot

from countysync_assets.demo_source import create_demo_source

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Never-Sh0w-Me"
SYNCED = ["master_parcels", "working", "stats", "parcel_geometry", "geometry_rejects",
          "use_code_summary"]
ASSETS = [*SYNCED, "deleted_parcels"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    """A running ``dagster dev`` (webserver + daemon) on a demo source; yields (graphql, env)."""
    home = tmp_path_factory.mktemp("dagster_dev")
    source = home / "demo.sqlite"
    create_demo_source(f"sqlite:///{source}", rows=600, seed=5, as_of=AS_OF, days=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTYSYNC_")}
    env.update(DAGSTER_HOME=str(home / "home"), COUNTYSYNC_DEMO_SOURCE_PATH=str(source),
               COUNTYSYNC_EXPORT_DIR=str(home / "exports"), COUNTYSYNC_SOURCE_PASSWORD=SECRET)
    (home / "home").mkdir()
    port = free_port()
    log = open(home / "dagster_dev.log", "w")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-w", "workspace.yaml",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if graphql(url, "{ assetNodes { id } }")["assetNodes"]:
                    break
            except (requests.ConnectionError, AssertionError, KeyError):
                pass
            assert process.poll() is None, (home / "dagster_dev.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dagster dev did not come up in 3 minutes"
            time.sleep(1)
        yield url, home
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def graphql(url: str, query: str, **variables) -> dict:
    response = requests.post(url, json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def test_ui_lists_every_asset_with_its_partitions(dagster_dev):
    url, _ = dagster_dev
    nodes = graphql(url, """{ assetNodes { assetKey { path } isPartitioned description
                              groupName } }""")["assetNodes"]
    by_key = {n["assetKey"]["path"][-1]: n for n in nodes}
    assert sorted(by_key) == sorted(ASSETS)
    assert all(by_key[a]["isPartitioned"] for a in SYNCED if a != "use_code_summary")
    assert all(n["description"] and n["groupName"] == "parcels" for n in nodes)


def test_ui_shows_the_password_setting_by_name_only(dagster_dev):
    url, _ = dagster_dev
    details = graphql(url, """query($selector: ResourceSelector!) {
        topLevelResourceDetailsOrError(resourceSelector: $selector) {
          ... on ResourceDetails { configuredValues { key value type } } } }""",
                      selector={"repositoryName": "__repository__",
                                "repositoryLocationName": "countysync",
                                "resourceName": "source"})
    values = {v["key"]: v for v in details["topLevelResourceDetailsOrError"]["configuredValues"]}
    assert values["password"] == {"key": "password", "value": "COUNTYSYNC_SOURCE_PASSWORD",
                                  "type": "ENV_VAR"}
    assert SECRET not in str(details)


def backfill_and_wait(url: str, keys: list[str], home: Path) -> None:
    """Launch a backfill the way the UI's Launch backfill dialog does; wait for success."""
    launched = graphql(url, """mutation($params: LaunchBackfillParams!) {
        launchPartitionBackfill(backfillParams: $params) {
          __typename ... on LaunchBackfillSuccess { backfillId }
          ... on PythonError { message } } }""", params={
        "partitionNames": keys, "title": "test backfill",
        "assetSelection": [{"path": [a]} for a in SYNCED]})
    result = launched["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    deadline = time.monotonic() + 300
    while True:
        status = graphql(url, """query($id: String!) { partitionBackfillOrError(backfillId: $id)
            { ... on PartitionBackfill { status } } }""", id=result["backfillId"])
        state = status["partitionBackfillOrError"]["status"]
        if state not in ("REQUESTED", "CANCELING", "FAILING"):
            break
        assert time.monotonic() < deadline, "the backfill did not finish in 5 minutes"
        time.sleep(2)
    assert state in ("COMPLETED", "COMPLETED_SUCCESS"), (home / "dagster_dev.log").read_text()


def test_backfill_launched_like_the_ui_syncs_every_output_and_a_rerun_changes_nothing(
        dagster_dev):
    url, home = dagster_dev
    keys = partition_keys(FIRST_KEY, LAST_KEY)
    backfill_and_wait(url, keys, home)
    runs = graphql(url, "{ runsOrError { ... on Runs { results { status } } } }")
    statuses = [r["status"] for r in runs["runsOrError"]["results"]]
    assert statuses and set(statuses) == {"SUCCESS"}
    exports = home / "exports"
    assert_outputs_match_source(f"sqlite:///{home / 'demo.sqlite'}", exports, keys)
    before = snapshot(exports)
    backfill_and_wait(url, keys, home)
    assert snapshot(exports) == before


def test_change_sensor_runs_by_default_and_ticks(dagster_dev):
    url, _ = dagster_dev
    query = """query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
        ... on Sensor { sensorState { status ticks(limit: 5) { status } } } } }"""
    selector = {"repositoryName": "__repository__", "repositoryLocationName": "countysync",
                "sensorName": "source_changes_sensor"}
    deadline = time.monotonic() + 180
    while True:
        state = graphql(url, query, selector=selector)["sensorOrError"]["sensorState"]
        assert state["status"] == "RUNNING"
        ticks = {t["status"] for t in state["ticks"]}
        if ticks & {"SUCCESS", "SKIPPED"}:
            break
        assert "FAILURE" not in ticks, state
        assert time.monotonic() < deadline, "the sensor did not tick in 3 minutes"
        time.sleep(3)
