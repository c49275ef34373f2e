"""The embedded demo source looks like a county's MasterParcels table and churns like one."""

import re
from datetime import UTC, datetime, timedelta

import pandas as pd
import shapely
import sqlalchemy as sa
from conftest import AS_OF

from countysync_assets.cli import main
from countysync_assets.demo_source import USE_CODES, churn, create_demo_source


def read(url: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text('SELECT * FROM "MasterParcels" ORDER BY id'), conn)
    engine.dispose()
    return frame


def test_parcels_look_like_a_county_roll(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    create_demo_source(url, rows=5_000, seed=1, as_of=AS_OF)
    frame = read(url)
    assert frame["id"].tolist() == list(range(1, 5_001))
    assert frame["parcel_id"].map(lambda p: bool(re.fullmatch(r"\d-\d{4}-\d{3}-\d{4}", p))).all()
    assert frame["parcel_id"].is_unique
    assert set(frame["use_code"]) <= set(USE_CODES) and frame["use_code"].nunique() >= 35
    assert (frame["assessed_value"] == frame["land_value"] + frame["improvement_value"]).all()
    stamps = pd.to_datetime(frame["updated_at"])
    assert stamps.min() >= pd.Timestamp(AS_OF - timedelta(days=365)).tz_localize(None)
    assert stamps.max() < pd.Timestamp(AS_OF).tz_localize(None)
    assert (stamps.dt.microsecond != 0).mean() > 0.99  # microsecond precision
    polygons = shapely.from_wkt(frame["geometry"].to_numpy())
    assert shapely.is_valid(polygons).all()
    assert not shapely.intersects(polygons[:-1], polygons[1:]).any()
    acres = shapely.area(polygons) / 43_560
    assert abs(acres - frame["acres"]).max() < 0.01
    minx, miny, maxx, maxy = shapely.total_bounds(polygons)
    assert 1_790_000 < minx < maxx < 2_030_000 and 240_000 < miny < maxy < 420_000


def test_same_seed_same_source(tmp_path):
    urls = [f"sqlite:///{tmp_path / name}" for name in ("a.sqlite", "b.sqlite", "c.sqlite")]
    for url, seed in zip(urls, (5, 5, 6), strict=True):
        create_demo_source(url, rows=500, seed=seed, as_of=AS_OF)
    assert read(urls[0]).equals(read(urls[1]))
    assert not read(urls[0]).equals(read(urls[2]))


def test_churn_updates_inserts_and_deletes_moving_updated_at_forward(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    create_demo_source(url, rows=1_000, seed=2, as_of=AS_OF)
    before = read(url).set_index("id")
    now = datetime(2026, 6, 2, 8, 30, tzinfo=UTC)
    result = churn(url, updates=30, inserts=20, deletes=10, seed=9, now=now)
    after = read(url).set_index("id")
    assert (result["updated"], result["inserted"], result["deleted"]) == (30, 20, 10)
    assert len(after) == 1_010
    new_ids = after.index.difference(before.index)
    assert list(new_ids) == list(range(1_001, 1_021))
    deleted = before.index.difference(after.index)
    assert len(deleted) == 10
    stamps = pd.to_datetime(after["updated_at"])
    moved = stamps[stamps > pd.Timestamp(AS_OF).tz_localize(None)]
    assert len(moved) == 50  # 30 updated + 20 inserted
    inserted = shapely.from_wkt(after.loc[new_ids, "geometry"].to_numpy())
    existing = shapely.from_wkt(before["geometry"].to_numpy())
    assert shapely.is_valid(inserted).all()
    assert not shapely.STRtree(existing).query(inserted, predicate="intersects").size


def test_cli_prints_what_it_did(tmp_path, capsys):
    path = tmp_path / "demo.sqlite"
    assert main(["demo-source", "--rows", "200", "--path", str(path), "--as-of",
                 "2026-06-01"]) == 0
    assert "200 parcels" in capsys.readouterr().out
    assert main(["churn", "--updates", "5", "--inserts", "2", "--deletes", "1", "--path",
                 str(path)]) == 0
    assert "5 updated, 2 inserted, 1 deleted" in capsys.readouterr().out
    assert main(["churn", "--deletes", "999", "--path", str(path)]) == 2
    assert "cannot update 0 and delete 999" in capsys.readouterr().err
