"""The sync-status map as the GIS desk opens it: a page that needs no network, every parcel of
the source (and every deleted one still published) counted by state as the outputs and the
source say, opened in a real headless Chromium (Debian's, driven by Playwright) that draws one
outline per parcel."""

import json
import re
from datetime import timedelta

import pandas as pd
import pyogrio
import pytest
from conftest import AS_OF, browser_page, execute, materialize_range
from dagster import materialize
from output_checks import source_rows, sqlite_table
from playwright.sync_api import expect

from countysync_assets.definitions import all_assets
from countysync_assets.demo_source import churn
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.resources.master_parcels_source import MasterParcelsSource


def status_data(html: str) -> dict:
    return json.loads(re.search(r'<script id="status-data" type="application/json">(.*?)'
                                r"</script>", html, re.S).group(1))


@pytest.fixture
def mapped(demo_url, tmp_path, instance):
    """A synced county with two rejected rows, then a day of edits not yet synced, then the
    map."""
    exports = tmp_path / "exports"
    source = MasterParcelsSource(url=demo_url)
    # two rows the sync must keep out: a bad attribute (drawable), a broken outline (not)
    execute(demo_url, "UPDATE MasterParcels SET acres = 'lots' WHERE id = 11")
    execute(demo_url, "UPDATE MasterParcels SET geometry = 'POLYGON((0 0' WHERE id = 12")
    assert materialize_range(source, exports, instance).success
    churn(demo_url, updates=12, inserts=5, deletes=3, seed=21, now=AS_OF - timedelta(hours=1))
    result = materialize(all_assets, selection=["sync_status_map"], instance=instance,
                         resources={"source": source,
                                    "io_manager": ExportIOManager(export_dir=str(exports))})
    assert result.success
    return exports, result.asset_materializations_for_node("sync_status_map")[0].metadata


def test_the_map_counts_each_parcel_by_its_sync_state(mapped, demo_url):
    exports, metadata = mapped
    page = exports / "maps" / "sync_status.html"
    assert metadata["map_path"].value == str(page)
    html = page.read_text()
    # self-contained: Leaflet inlined, nothing fetched from a CDN or any other address
    assert "<script src=" not in html and "<link" not in html and "unpkg" not in html
    assert "BSD-2-Clause" in html

    layer = pyogrio.read_dataframe(exports / "geo_db.gpkg", layer="parcels",
                                   read_geometry=False)
    source = source_rows(demo_url).set_index("id")
    held = pd.to_datetime(layer.set_index("id")["updated_at"], utc=True).dt.floor("ms")
    now = pd.to_datetime(source["updated_at"], utc=True, format="ISO8601").dt.floor("ms")
    rejected = {11, 12}
    assert set(sqlite_table(exports / "rejects_db.sqlite", "parcel_rejects")["id"]
               .astype(int)) | set(sqlite_table(exports / "rejects_db.sqlite",
                                                "geometry_rejects")["id"]) == rejected
    synced = int((now.reindex(held.index) == held).sum())
    expected = {"synced": synced,
                "pending": len(held) - synced
                + len(source.index.difference(held.index).difference(list(rejected))),
                "error": len(rejected)}
    assert expected["pending"] == 12 + 5 + 3  # the day's edits: updates, inserts, deletes
    data = status_data(html)
    assert data["counts"] == expected
    assert {k: metadata[f"{k}_parcels"].value for k in expected} == expected

    features = data["parcels"]["features"]
    assert len(features) == metadata["drawn_parcels"].value
    by_state = pd.Series([f["properties"]["status"] for f in features]).value_counts()
    assert by_state.to_dict() == {**expected, "error": 1}  # the broken outline is not drawn
    error = next(f["properties"] for f in features if f["properties"]["status"] == "error")
    assert error["id"] == 11 and "acres" in error["why"] and "parcel_rejects" in error["why"]
    coordinates = pd.DataFrame(
        [xy for f in features for ring in f["geometry"]["coordinates"]
         for xy in (ring[0] if f["geometry"]["type"] == "MultiPolygon" else ring)],
        columns=["lon", "lat"])
    assert coordinates["lon"].between(-180, 180).all() and coordinates["lat"].between(-90, 90).all()
    assert coordinates["lon"].between(-125, -116).all()  # Washington State Plane, in WGS 84


def test_a_browser_draws_every_parcel_of_the_map(mapped, artifacts):
    exports, metadata = mapped
    with browser_page() as page:
        page.route(re.compile(r"^https?://"), lambda route: route.abort())  # a closed network
        page.goto((exports / "maps" / "sync_status.html").as_uri())
        outlines = page.locator("path.leaflet-interactive")
        expect(outlines.first).to_be_visible()
        assert outlines.count() == metadata["drawn_parcels"].value
        legend = page.locator("#legend").inner_text()
        for state in ("synced", "pending", "error"):
            assert f"{state}: {metadata[f'{state}_parcels'].value:,}" in legend
        outlines.first.click()
        expect(page.locator(".leaflet-popup-content")).to_contain_text("(id ")
        page.screenshot(path=artifacts / "sync_status_map.png")
