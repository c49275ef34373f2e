"""The Dagster UI, for real: ``dagster dev`` on workspace.yaml with a persistent DAGSTER_HOME,
driven through the GraphQL API the UI itself uses, and looked at in headless Chromium. A sync
started there must just work."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import AS_OF, FIRST_KEY, LAST_KEY, RUN_DIR, clean_env, skip_or_fail_in_ci
from output_checks import assert_outputs_match_source, partition_keys, snapshot

from countysync_assets.demo_source import create_demo_source

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Never-Sh0w-Me"
SYNCED = ["master_parcels", "parcel_rejects", "working", "stats", "parcel_geometry",
          "geometry_rejects", "use_code_summary"]
ASSETS = [*SYNCED, "deleted_parcels", "unplaced_parcels"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DagsterDev:
    """``dagster dev`` (webserver + daemon) in its own process group, restartable."""

    def __init__(self, home: Path, env: dict):
        self.home, self.env, self.process, self.log = home, env, None, None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/graphql"
        self.log = open(self.home / "dagster_dev.log", "a")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster")), "dev",
             "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=RUN_DIR, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                if graphql(self.url, "{ assetNodes { id } }")["assetNodes"]:
                    return
            except (requests.ConnectionError, AssertionError, KeyError):
                pass
            assert self.process.poll() is None, (self.home / "dagster_dev.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dagster dev did not come up in 3 minutes"
            time.sleep(1)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    """A running ``dagster dev`` on a demo source with a persistent DAGSTER_HOME."""
    home = tmp_path_factory.mktemp("dagster_dev")
    source = home / "demo.sqlite"
    create_demo_source(f"sqlite:///{source}", rows=600, seed=5, as_of=AS_OF, days=4)
    env = clean_env()
    env.update(DAGSTER_HOME=str(home / "home"), COUNTYSYNC_DEMO_SOURCE_PATH=str(source),
               COUNTYSYNC_EXPORT_DIR=str(home / "exports"), COUNTYSYNC_SOURCE_PASSWORD=SECRET)
    (home / "home").mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "home" / "dagster.yaml")  # as demo.sh does
    server = DagsterDev(home, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def graphql(url: str, query: str, **variables) -> dict:
    response = requests.post(url, json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def test_ui_lists_every_asset_with_its_partitions(dagster_dev):
    url = dagster_dev.url
    nodes = graphql(url, """{ assetNodes { assetKey { path } isPartitioned description
                              groupName } }""")["assetNodes"]
    by_key = {n["assetKey"]["path"][-1]: n for n in nodes if n["groupName"] == "parcels"}
    assert sorted(by_key) == sorted(ASSETS)
    assert all(by_key[a]["isPartitioned"] for a in SYNCED if a != "use_code_summary")
    appraisal = {n["assetKey"]["path"][-1]: n for n in nodes if n["groupName"] == "appraisal"}
    assert sorted(appraisal) == sorted(["appraisal_archives", "appraisal_files",
                                        "appraisal_parsed", "property_records", "owners",
                                        "building_details", "extra_features"])
    assert all(n["isPartitioned"] for n in appraisal.values())  # by tax year
    assert all(n["description"] for n in nodes) and len(nodes) == len(by_key) + len(appraisal)


def test_ui_shows_the_password_setting_by_name_only(dagster_dev):
    url = dagster_dev.url
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
        # the partitioned assets: one run (use_code_summary, county-wide, is synced by the
        # sensor's runs; in a backfill it would be a second run, half a minute later)
        "assetSelection": [{"path": [a]} for a in SYNCED if a != "use_code_summary"]})
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
    url, home = dagster_dev.url, dagster_dev.home
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


def rendered(url: str, profile: Path, screenshot: Path) -> str:
    """The page as a person's browser shows it: headless Chromium runs the UI's JavaScript and
    its GraphQL queries before the DOM is read; a screenshot is kept for whoever debugs."""
    browser = [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--window-size=1400,900", "--virtual-time-budget=20000"]
    subprocess.run([*browser, f"--screenshot={screenshot}", url], capture_output=True,
                   timeout=180, check=True)
    page = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True,
                          timeout=180, check=True)
    return page.stdout


def test_a_person_opening_the_ui_sees_every_asset_and_the_last_sync(dagster_dev, tmp_path):
    if not shutil.which("chromium"):
        skip_or_fail_in_ci("Chromium is not installed (Debian package chromium)")
    base = dagster_dev.url.removesuffix("/graphql")
    catalog = rendered(f"{base}/assets", tmp_path / "browser", tmp_path / "assets.png")
    assert (tmp_path / "assets.png").stat().st_size > 10_000
    for asset in ASSETS:
        assert re.search(rf"\b{asset}\b", catalog), f"{asset} is not in the asset catalog"
    working = rendered(f"{base}/assets/working", tmp_path / "browser", tmp_path / "working.png")
    assert "owner of record" in working  # the column schema, as the asset describes it
    # the latest materialization's metadata: where the rows went and what changed
    assert "working_db.sqlite" in working and "sqlite_rows_inserted" in working


def test_change_sensor_runs_by_default_and_ticks(dagster_dev):
    url = dagster_dev.url
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


SENSOR = {"repositoryName": "__repository__", "repositoryLocationName": "countysync",
          "sensorName": "source_changes_sensor"}


def sensor_cursor(url: str) -> str | None:
    state = graphql(url, """query($selector: SensorSelector!) {
        sensorOrError(sensorSelector: $selector) { ... on Sensor { sensorState {
          typeSpecificData { ... on SensorData { lastCursor } } } } } }""", selector=SENSOR)
    return state["sensorOrError"]["sensorState"]["typeSpecificData"]["lastCursor"]


def test_sensor_cursor_survives_a_restart_and_a_reset_resyncs(dagster_dev):
    deadline = time.monotonic() + 180
    while not sensor_cursor(dagster_dev.url):
        assert time.monotonic() < deadline, "the sensor stored no cursor in 3 minutes"
        time.sleep(3)
    before = sensor_cursor(dagster_dev.url)
    assert json.loads(before)["watermark"].startswith("2026-05-31")
    dagster_dev.stop()
    dagster_dev.start()
    assert sensor_cursor(dagster_dev.url) == before  # kept in the persistent DAGSTER_HOME

    graphql(dagster_dev.url, """mutation($selector: SensorSelector!) {
        setSensorCursor(sensorSelector: $selector, cursor: null) { __typename } }""",
            selector=SENSOR)  # what the UI's "Set cursor value" (emptied) does
    assert sensor_cursor(dagster_dev.url) is None
    deadline = time.monotonic() + 180
    while not sensor_cursor(dagster_dev.url):  # the next tick syncs everything again
        assert time.monotonic() < deadline, "the sensor did not tick after the reset"
        time.sleep(3)
    assert json.loads(sensor_cursor(dagster_dev.url))["watermark"] == json.loads(before)[
        "watermark"]
