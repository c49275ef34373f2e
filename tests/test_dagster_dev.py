"""The Dagster UI, for real: ``dagster dev`` on workspace.yaml with a persistent DAGSTER_HOME,
driven through the GraphQL API the UI itself uses, and looked at in headless Chromium. A sync
started there must just work."""

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import (
    AS_OF,
    FIRST_KEY,
    LAST_KEY,
    RUN_DIR,
    browser_page,
    clean_env,
    stop_process_group,
)
from output_checks import assert_outputs_match_source, partition_keys, snapshot
from playwright.sync_api import expect

from countysync_assets.demo_source import create_demo_source

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Never-Sh0w-Me"
SYNCED = ["master_parcels", "parcel_rejects", "working", "stats", "parcel_geometry",
          "geometry_rejects", "use_code_summary"]
ASSETS = [*SYNCED, "deleted_parcels", "unplaced_parcels"]
# every test of this module on one xdist worker: one `dagster dev` serves them all
pytestmark = pytest.mark.xdist_group("dagster_dev")


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
        stop_process_group(self.process, seconds=30)
        self.log.close()


@pytest.fixture(scope="session")
def dagster_dev(tmp_path_factory):
    """A running ``dagster dev`` on a demo source with a persistent DAGSTER_HOME. Session
    scoped: xdist may run other modules' tests between these on the same worker, which would
    tear down (and start afresh) a module-scoped server."""
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
    maps = [n["assetKey"]["path"][-1] for n in nodes if n["groupName"] == "maps"]
    assert maps == ["sync_status_map"]
    appraisal = {n["assetKey"]["path"][-1]: n for n in nodes if n["groupName"] == "appraisal"}
    assert sorted(appraisal) == sorted(["appraisal_archives", "appraisal_files",
                                        "appraisal_parsed", "property_records", "owners",
                                        "building_details", "extra_features"])
    assert all(n["isPartitioned"] for n in appraisal.values())  # by tax year
    assert all(n["description"] for n in nodes)
    assert len(nodes) == len(by_key) + len(maps) + len(appraisal)


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
    runs = graphql(url, """{ runsOrError { ... on Runs { results { runId status jobName
        tags { key value } eventConnection { events { __typename
          ... on MessageEvent { message } } } } } } }""")["runsOrError"]["results"]
    failed = [{"job": r["jobName"], "tags": {t["key"]: t["value"] for t in r["tags"]},
               "errors": [e["message"] for e in r["eventConnection"]["events"]
                          if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent",
                                                 "EngineEvent") and "rror" in e["message"]]}
              for r in runs if r["status"] != "SUCCESS"]
    assert runs and not failed, failed
    exports = home / "exports"
    assert_outputs_match_source(f"sqlite:///{home / 'demo.sqlite'}", exports, keys)
    before = snapshot(exports)
    backfill_and_wait(url, keys, home)
    assert snapshot(exports) == before


def wait_for_a_sync(url: str) -> None:
    """Until ``working`` has been materialized (by the backfill test or, when this test runs
    alone, by the change sensor's first run, which starts with the server)."""
    query = """{ assetOrError(assetKey: {path: ["working"]}) { ... on Asset {
        assetMaterializations(limit: 1) { runId } } } }"""
    deadline = time.monotonic() + 300
    while not graphql(url, query)["assetOrError"]["assetMaterializations"]:
        assert time.monotonic() < deadline, "no sync materialized working in 5 minutes"
        time.sleep(2)


def test_a_person_opening_the_ui_sees_every_asset_and_the_last_sync(dagster_dev, artifacts):
    base = dagster_dev.url.removesuffix("/graphql")
    wait_for_a_sync(dagster_dev.url)
    with browser_page() as page:
        page.goto(f"{base}/assets")
        for asset in ASSETS:  # each row links to the asset's page (long names are truncated)
            expect(page.locator(f'a[href$="/assets/{asset}"]').first).to_be_visible()
        page.screenshot(path=artifacts / "ui-0-catalog.png")
        page.goto(f"{base}/assets/working")
        # the column schema, as the asset describes it
        expect(page.get_by_text("owner of record").first).to_be_visible()
        # the latest materialization's metadata: where the rows went and what changed
        expect(page.get_by_text("sqlite_rows_inserted").first).to_be_visible()
        expect(page.get_by_text(re.compile(r"working_db\.sqlite")).first).to_be_visible()


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


def newest_run(url: str, since: float, **tags: str) -> dict | None:
    """The newest run created after ``since`` (unix seconds) with these tags."""
    runs = graphql(url, """query($filter: RunsFilter) { runsOrError(filter: $filter, limit: 5)
        { ... on Runs { results { runId status creationTime } } } }""",
                   filter={"tags": [{"key": k, "value": v} for k, v in tags.items()]})
    fresh = [r for r in runs["runsOrError"]["results"] if r["creationTime"] >= since]
    return fresh[0] if fresh else None


def launched_by_click(url: str, since: float, **tags: str) -> str:
    """The id of the run a click launched, once the UI's request has created it."""
    deadline = time.monotonic() + 60
    while (run := newest_run(url, since, **tags)) is None:
        assert time.monotonic() < deadline, "the click launched no run within a minute"
        time.sleep(1)
    return run["runId"]


def test_a_person_clicks_through_the_ui_from_graph_to_map(dagster_dev, artifacts):
    """As a county user: the asset graph names every asset; one partition is materialized by
    clicking and its run seen to succeed; the partitions view and the checks show it; the
    sync-status map, materialized by a click too, opens from its metadata link and draws
    every parcel. Screenshots go to test-artifacts/ for a person to look at."""
    url, base = dagster_dev.url, dagster_dev.url.removesuffix("/graphql")
    wait_for_a_sync(url)
    with browser_page() as page:
        page.goto(f"{base}/locations/countysync/asset-groups/parcels")
        for asset in ASSETS:
            expect(page.get_by_text(asset, exact=True).first).to_be_visible()
        page.screenshot(path=artifacts / "ui-1-asset-graph.png")

        page.goto(f"{base}/assets/working")
        clicked = time.time() - 1
        page.get_by_role("button", name="Materialize…").click()
        # working is one output of the sync step: the UI names the others that come along
        page.get_by_role("button", name="Confirm").click()
        dialog = page.locator("[role=dialog]").last
        dialog.get_by_role("button", name="Show all partitions").click()
        partitions = dialog.locator("input[type=text]").first
        partitions.fill(LAST_KEY)
        partitions.press("Enter")
        page.screenshot(path=artifacts / "ui-2-launch-one-partition.png")
        dialog.get_by_role("button", name="Launch 1 run").click()
        run_id = launched_by_click(url, clicked, **{"dagster/partition": LAST_KEY})
        page.goto(f"{base}/runs/{run_id}")
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        page.screenshot(path=artifacts / "ui-3-run-succeeded.png")

        # the partition's own page: materialized by that run, with what it wrote
        page.goto(f"{base}/assets/parcel_geometry?view=partitions&partition={LAST_KEY}")
        expect(page.get_by_text(run_id[:8]).first).to_be_visible()
        expect(page.get_by_text("dagster/row_count").first).to_be_visible()
        # the first rows it wrote, shown as a table: parcel numbers, no geometry
        preview = page.get_by_role("row").filter(has_text="preview").first
        expect(preview.get_by_role("columnheader", name="parcel_id", exact=True)).to_be_visible()
        expect(preview.get_by_role("columnheader", name="geometry", exact=True)).to_have_count(0)
        page.screenshot(path=artifacts / "ui-4-partition.png")
        # the map of what the sync that first wrote the first window changed (the runs since
        # changed nothing): that event, opened by its time as a link to it would
        events = graphql(url, """query($key: String!) {
            assetOrError(assetKey: {path: ["parcel_geometry"]}) { ... on Asset {
              assetMaterializations(partitions: [$key]) { timestamp metadataEntries { label } }
            } } }""", key=FIRST_KEY)["assetOrError"]["assetMaterializations"]
        first_sync = next(e["timestamp"] for e in events
                          if any("change_map" in m["label"] for m in e["metadataEntries"]))
        page.goto(f"{base}/assets/parcel_geometry?view=events&partition={FIRST_KEY}"
                  f"&time={first_sync}")
        page.get_by_role("row").filter(has_text="change_map") \
            .get_by_text("[Show Markdown]").click()
        expect(page.get_by_role("img", name="What this run changed")).to_be_visible()
        page.screenshot(path=artifacts / "ui-5-change-map.png")
        page.keyboard.press("Escape")
        page.goto(f"{base}/assets/working?view=checks")
        expect(page.get_by_text("outputs_agree").first).to_be_visible()
        expect(page.get_by_text("Passed").first).to_be_visible()
        page.screenshot(path=artifacts / "ui-6-checks.png")

        page.goto(f"{base}/assets/sync_status_map")
        clicked = time.time() - 1
        page.get_by_role("button", name="Materialize").first.click()
        # the UI warns that deleted_parcels never ran (no delete check yet): the map does
        # without it
        page.get_by_role("button", name="Confirm").click()
        run_id = launched_by_click(url, clicked)
        page.goto(f"{base}/runs/{run_id}")
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        page.goto(f"{base}/assets/sync_status_map")
        link = page.get_by_role("link", name=re.compile(r"sync_status\.html"))
        page.screenshot(path=artifacts / "ui-7-map-asset.png")
        page.goto(link.first.get_attribute("href"))
        outlines = page.locator("path.leaflet-interactive")
        expect(outlines.first).to_be_visible()
        drawn = graphql(url, """{ assetOrError(assetKey: {path: ["sync_status_map"]}) {
            ... on Asset { assetMaterializations(limit: 1) { metadataEntries { label
              ... on IntMetadataEntry { intValue } } } } } }""")
        figures = {e["label"]: e.get("intValue") for e in
                   drawn["assetOrError"]["assetMaterializations"][0]["metadataEntries"]}
        assert outlines.count() == figures["drawn_parcels"] > 0
        page.screenshot(path=artifacts / "ui-8-sync-status-map.png")
