"""The map of what a run changed, as the UI shows it with the materialization: a PNG inside
the metadata's markdown, whose counts are the parcels the run really inserted, updated or
deleted in the layer, and nothing at all for a rerun that changed nothing."""

import base64
import io
import re
from datetime import timedelta

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from conftest import AS_OF, LAST_KEY, materialize_range
from PIL import Image
from test_deletes import reconcile
from test_end_to_end import materialization_metadata

from countysync_assets.assets.change_map import COLOURS, HEIGHT, OUTLINES, WIDTH, ChangeMap
from countysync_assets.demo_source import churn
from countysync_assets.resources.master_parcels_source import MasterParcelsSource


def shown(markdown: str) -> tuple[dict[str, int], np.ndarray]:
    """The counts the map's caption gives, and the picture as RGB pixels."""
    counts = {kind: int(n.replace(",", ""))
              for n, kind in re.findall(r"([\d,]+) (inserted|updated|deleted)", markdown)}
    data = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown).group(1)
    picture = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    return counts, np.asarray(picture) / 255


def pixels_of(picture: np.ndarray, kind: str) -> int:
    colour = np.array([int(COLOURS[kind][i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(picture - colour).max(axis=2) < 0.02).sum())


def layer(exports):
    return pyogrio.read_dataframe(exports / "geo_db.gpkg", layer="parcels",
                                  read_geometry=False).set_index("id")["updated_at"]


def test_each_run_maps_what_it_changed_and_a_rerun_maps_nothing(demo_url, tmp_path, instance):
    exports = tmp_path / "exports"
    source = MasterParcelsSource(url=demo_url)
    assert materialize_range(source, exports, instance).success
    first = layer(exports)
    counts, picture = shown(
        materialization_metadata(instance, "parcel_geometry")[0]["run_change_map"].value)
    assert counts == {"inserted": len(first)}
    assert picture.shape[:2] == (HEIGHT, WIDTH) == (360, 480)
    assert pixels_of(picture, "inserted") > 2_000  # the parcels, not only the legend's patch
    assert pixels_of(picture, "updated") == 0

    churn(demo_url, updates=25, inserts=6, seed=8, now=AS_OF - timedelta(hours=2))
    assert materialize_range(source, exports, instance, first=LAST_KEY, last=LAST_KEY).success
    after = layer(exports)
    common = first.index.intersection(after.index)
    expected = {"inserted": len(after.index.difference(first.index)),
                "updated": int((after[common] != first[common]).sum())}
    assert expected["inserted"] > 0 and expected["updated"] > 0
    counts, picture = shown(
        materialization_metadata(instance, "parcel_geometry")[0]["change_map"].value)
    assert counts == expected
    assert pixels_of(picture, "updated") > 0 and pixels_of(picture, "inserted") > 0

    materializations = len(materialization_metadata(instance, "parcel_geometry"))
    assert materialize_range(source, exports, instance, first=LAST_KEY, last=LAST_KEY).success
    rerun = materialization_metadata(instance, "parcel_geometry")
    assert len(rerun) == materializations + 1
    assert "change_map" not in rerun[0]  # nothing changed, nothing drawn

    churn(demo_url, deletes=4, seed=9, now=AS_OF - timedelta(hours=1))
    reconcile(demo_url, exports, instance)
    counts, picture = shown(
        materialization_metadata(instance, "deleted_parcels")[0]["change_map"].value)
    assert counts == {"deleted": len(after) - len(layer(exports))} == {"deleted": 4}
    assert pixels_of(picture, "deleted") > 0


def test_a_big_run_is_drawn_as_dots_of_every_parcel():
    boxes = gpd.GeoSeries(shapely.box(np.arange(8_000) % 100, np.arange(8_000) // 100,
                                      np.arange(8_000) % 100 + 0.8,
                                      np.arange(8_000) // 100 + 0.8), crs=2285)
    change_map = ChangeMap()
    change_map.add("inserted", boxes[:OUTLINES + 1])
    change_map.add("updated", boxes[OUTLINES + 1:])
    markdown = change_map.markdown("A first sync")
    counts, picture = shown(markdown)
    assert counts == {"inserted": OUTLINES + 1, "updated": 8_000 - OUTLINES - 1}
    assert "one dot per parcel" in markdown
    assert pixels_of(picture, "updated") > 0 and pixels_of(picture, "inserted") > 0


def test_outlines_are_filled_and_their_holes_left_white():
    """A parcel with a courtyard (a hole) and a parcel of two parts, drawn as outlines."""
    courtyard = shapely.Polygon([(0, 0), (30, 0), (30, 30), (0, 30)],
                                holes=[[(10, 10), (20, 10), (20, 20), (10, 20)]])
    two_parts = shapely.MultiPolygon([shapely.box(40, 0, 50, 10), shapely.box(40, 20, 50, 30)])
    change_map = ChangeMap()
    change_map.add("updated", gpd.GeoSeries([courtyard], crs=2285))
    change_map.add("inserted", gpd.GeoSeries([two_parts], crs=2285))
    counts, picture = shown(change_map.markdown("A small sync"))
    assert counts == {"updated": 1, "inserted": 1}
    # the drawing spans x 0..50, y 0..30, centred in the picture at equal scale
    scale = min((WIDTH - 8) / 50, (HEIGHT - 8) / 30)
    left, top = (WIDTH - 50 * scale) / 2, (HEIGHT - 30 * scale) / 2

    def at(x: float, y: float) -> np.ndarray:
        return picture[round(HEIGHT - 1 - (top + y * scale)), round(left + x * scale)]

    def is_colour(pixel: np.ndarray, kind: str) -> bool:
        colour = np.array([int(COLOURS[kind][i:i + 2], 16) / 255 for i in (1, 3, 5)])
        return bool(np.abs(pixel - colour).max() < 0.02)

    assert is_colour(at(5, 5), "updated") and is_colour(at(25, 25), "updated")
    assert (at(15, 15) == 1).all()  # the courtyard stays white
    assert is_colour(at(45, 5), "inserted") and is_colour(at(45, 25), "inserted")
    assert (at(45, 15) == 1).all()  # between the two parts
