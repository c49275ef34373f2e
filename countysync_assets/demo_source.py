"""The embedded demo source: a MasterParcels table shaped like a county's, in SQLite or any URL.

Parcels are rotated rectangles on a grid over Benton County, Washington, in Washington State
Plane South (EPSG:2286, US feet), stored as WKT with the SRID in the OGC ``geometry_columns``
table. Generation is vectorized (numpy + shapely) so 2,000,000 rows is practical, and it is
deterministic for a given seed and ``as_of``.
"""

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import sqlalchemy as sa

SRID = 2286  # NAD83 / Washington South (ftUS)
COUNTY_ORIGIN = (1_800_000.0, 245_000.0)  # south-west corner of Benton County, EPSG:2286
COUNTY_WIDTH_FT = 215_000.0
TABLE = "MasterParcels"

# Washington DOR land use codes (WAC 458-53), weighted towards residential as in a real roll.
USE_CODES = {
    "11": 40, "12": 4, "13": 3, "14": 1, "15": 1, "18": 2, "19": 1, "21": 1, "22": 1,
    "23": 1, "24": 1, "25": 1, "26": 1, "27": 1, "28": 1, "29": 1, "41": 1, "42": 1,
    "43": 1, "45": 1, "46": 1, "47": 1, "48": 1, "49": 1, "51": 2, "53": 2, "54": 1,
    "58": 2, "59": 1, "61": 1, "65": 1, "67": 1, "69": 2, "71": 1, "74": 1, "76": 1,
    "81": 8, "83": 5, "88": 2, "91": 6,
}
FIRST_NAMES = ["JAMES", "MARY", "ROBERT", "PATRICIA", "JOHN", "JENNIFER", "MICHAEL", "LINDA",
               "DAVID", "ELIZABETH", "WILLIAM", "BARBARA", "RICHARD", "SUSAN", "JOSEPH",
               "JESSICA", "THOMAS", "SARAH", "MARIA", "JOSE", "ANA", "LUIS", "KAREN", "NANCY"]
LAST_NAMES = ["SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS",
              "RODRIGUEZ", "MARTINEZ", "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON",
              "THOMAS", "TAYLOR", "MOORE", "JACKSON", "MARTIN", "LEE", "PEREZ", "NGUYEN", "KIM"]
STREETS = ["COLUMBIA DR", "CLEARWATER AVE", "GAGE BLVD", "KEENE RD", "VAN GIESEN ST",
           "GEORGE WASHINGTON WAY", "STEVENS DR", "JADWIN AVE", "LESLIE RD", "BOMBING RANGE RD",
           "DALLAS RD", "BADGER RD", "ZINTEL WAY", "EDISON ST", "UNION ST", "OLYMPIA ST",
           "CANAL DR", "KENNEWICK AVE", "10TH AVE", "27TH AVE", "WINE COUNTRY RD", "BENNETT AVE",
           "SUNSET RD", "HORN RAPIDS RD", "SNYDER RD", "ELLISON RD", "RICHLAND HILLS DR",
           "QUEENSGATE DR", "DUPORTAIL ST", "SWIFT BLVD", "LEE BLVD", "WRIGHT AVE",
           "WILLIAMS BLVD", "SPENGLER RD", "PLYMOUTH RD", "FINLEY RD", "CHEMICAL DR",
           "MEADOWS DR", "HILDEBRAND BLVD", "REATA RD"]
CITIES = ["KENNEWICK", "RICHLAND", "WEST RICHLAND", "PROSSER", "BENTON CITY", "FINLEY"]


@dataclass(frozen=True)
class Layout:
    """Where parcel ``id`` sits on the grid; kept in the source so churn inserts fit in."""

    columns: int
    cell_ft: float

    @classmethod
    def for_rows(cls, rows: int) -> "Layout":
        cell = min(1_000.0, max(120.0, math.sqrt(COUNTY_WIDTH_FT * 165_000.0 / max(rows, 1))))
        columns = max(1, min(int(COUNTY_WIDTH_FT // cell), math.ceil(math.sqrt(rows))))
        return cls(columns=columns, cell_ft=cell)


def parcels_table(metadata: sa.MetaData) -> sa.Table:
    """The MasterParcels schema as a county assessor's system lays it out."""
    return sa.Table(
        TABLE, metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("parcel_id", sa.String(20), nullable=False),
        sa.Column("owner", sa.String(120)),
        sa.Column("situs_address", sa.String(200)),
        sa.Column("use_code", sa.String(4)),
        sa.Column("acres", sa.Float),
        sa.Column("land_value", sa.Integer),
        sa.Column("improvement_value", sa.Integer),
        sa.Column("assessed_value", sa.Integer),
        sa.Column("tax_year", sa.Integer),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("geometry", sa.Text),
        sa.Index("ix_masterparcels_updated_at_id", "updated_at", "id"),
    )


def _geometry_columns_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "geometry_columns", metadata,
        sa.Column("f_table_name", sa.String(128), primary_key=True),
        sa.Column("f_geometry_column", sa.String(128), primary_key=True),
        sa.Column("geometry_type", sa.String(30)),
        sa.Column("srid", sa.Integer, nullable=False),
    )


def _layout_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "countysync_demo_layout", metadata,
        sa.Column("grid_columns", sa.Integer, nullable=False),
        sa.Column("cell_ft", sa.Float, nullable=False),
    )


def source_url(path: str | None = None, url: str | None = None) -> str:
    """A SQLAlchemy URL from ``--url`` or a SQLite ``--path``."""
    if url:
        return url
    return f"sqlite:///{Path(path or 'data/demo_source.sqlite')}"


def _attributes(ids: np.ndarray, rng: np.random.Generator, as_of: datetime,
                spread: timedelta) -> pd.DataFrame:
    """Owner, address, use code, values and updated_at for parcels ``ids`` (no geometry)."""
    n = len(ids)
    codes = np.array(list(USE_CODES))
    weights = np.array(list(USE_CODES.values()), dtype=float)
    use_code = rng.choice(codes, size=n, p=weights / weights.sum())
    first = rng.choice(FIRST_NAMES, size=n)
    last = rng.choice(LAST_NAMES, size=n)
    owner = pd.Series(last) + " " + pd.Series(first)
    is_llc = rng.random(n) < 0.08
    owner[is_llc] = pd.Series(last[is_llc]) .add(" HOLDINGS LLC").to_numpy()
    number = rng.integers(100, 99_999, size=n).astype(str)
    address = (pd.Series(number) + " " + pd.Series(rng.choice(STREETS, size=n)) + ", "
               + pd.Series(rng.choice(CITIES, size=n)))
    microseconds = (rng.random(n) * spread.total_seconds() * 1e6).astype("int64")
    updated = pd.Timestamp(as_of).tz_localize(None) - pd.to_timedelta(microseconds, unit="us")
    return pd.DataFrame({
        "id": ids,
        "owner": owner.to_numpy(),
        "situs_address": address.to_numpy(),
        "use_code": use_code,
        "tax_year": as_of.year,
        "updated_at": updated.astype("datetime64[us]"),
    })


def _values(acres: np.ndarray, use_code: np.ndarray, rng: np.random.Generator) -> dict:
    n = len(acres)
    land = (acres * rng.lognormal(mean=11.5, sigma=0.6, size=n)).round(-2).astype("int64")
    improvement = rng.lognormal(mean=12.3, sigma=0.5, size=n).round(-2).astype("int64")
    improvement[use_code == "91"] = 0
    return {"land_value": land, "improvement_value": improvement,
            "assessed_value": land + improvement}


def generate_parcels(ids: np.ndarray, layout: Layout, seed: int, as_of: datetime,
                     spread: timedelta = timedelta(days=365)) -> pd.DataFrame:
    """Parcel rows for ``ids``: valid rotated rectangles in their grid cells, WKT in EPSG:2286."""
    rng = np.random.default_rng([seed, int(ids.min()) if len(ids) else 0, len(ids)])
    frame = _attributes(ids, rng, as_of, spread)
    n = len(ids)
    cell = layout.cell_ft
    col, row = (ids - 1) % layout.columns, (ids - 1) // layout.columns
    cx = COUNTY_ORIGIN[0] + (col + 0.5) * cell
    cy = COUNTY_ORIGIN[1] + (row + 0.5) * cell
    half_w = cell * rng.uniform(0.25, 0.4, n)
    half_h = cell * rng.uniform(0.25, 0.4, n)
    angle = np.radians(rng.uniform(-5, 5, n))
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)], dtype=float)
    dx = corners[None, :, 0] * half_w[:, None]
    dy = corners[None, :, 1] * half_h[:, None]
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    coords = np.stack([cx[:, None] + dx * cos - dy * sin, cy[:, None] + dx * sin + dy * cos],
                      axis=-1)
    polygons = shapely.polygons(coords)
    acres = (4 * half_w * half_h / 43_560.0).round(4)
    scramble = (ids.astype("int64") * 7_919_573 + seed * 1_000_003) % 10**11
    lead = 1 + (ids % 4)
    digits = pd.Series(scramble).astype(str).str.zfill(11)
    frame["parcel_id"] = (pd.Series(lead).astype(str) + "-" + digits.str[0:4] + "-"
                          + digits.str[4:7] + "-" + digits.str[7:11]).to_numpy()
    frame["acres"] = acres
    frame = frame.assign(**_values(acres, frame["use_code"].to_numpy(), rng))
    frame["geometry"] = shapely.to_wkt(polygons, rounding_precision=2)
    return frame[[c.name for c in parcels_table(sa.MetaData()).columns]]


def _write(engine: sa.Engine, frame: pd.DataFrame) -> None:
    frame.to_sql(TABLE, engine, if_exists="append", index=False, chunksize=50_000)


def create_demo_source(url: str, rows: int = 50_000, seed: int = 42,
                       as_of: datetime | None = None, days: float = 365) -> dict:
    """(Re)create the demo MasterParcels table at ``url`` with ``rows`` parcels whose
    ``updated_at`` is spread over the ``days`` before ``as_of`` (default today 00:00 UTC)."""
    if rows < 1:
        raise ValueError("--rows must be at least 1.")
    if days <= 0:
        raise ValueError("--days must be more than 0.")
    as_of = as_of or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if url.startswith("sqlite:///"):
        Path(sa.make_url(url).database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    parcels, srids, layout_t = (parcels_table(metadata), _geometry_columns_table(metadata),
                                _layout_table(metadata))
    layout = Layout.for_rows(rows)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(srids.insert(), [{"f_table_name": TABLE, "f_geometry_column": "geometry",
                                       "geometry_type": "POLYGON", "srid": SRID}])
        conn.execute(layout_t.insert(), [{"grid_columns": layout.columns,
                                          "cell_ft": layout.cell_ft}])
    chunk = 250_000
    for first in range(1, rows + 1, chunk):
        ids = np.arange(first, min(first + chunk, rows + 1), dtype="int64")
        _write(engine, generate_parcels(ids, layout, seed, as_of, timedelta(days=days)))
    with engine.connect() as conn:
        span = conn.execute(sa.select(sa.func.min(parcels.c.updated_at),
                                      sa.func.max(parcels.c.updated_at))).one()
    engine.dispose()
    return {"url": sa.make_url(url).render_as_string(hide_password=True), "rows": rows,
            "seed": seed, "updated_from": span[0], "updated_to": span[1]}


def churn(url: str, updates: int = 0, inserts: int = 0, deletes: int = 0,
          seed: int | None = None, now: datetime | None = None) -> dict:
    """A day of assessor work: update, insert and delete parcels, moving updated_at forward."""
    now = now or datetime.now(UTC)
    rng = np.random.default_rng(seed)
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    parcels, layout_t = parcels_table(metadata), _layout_table(metadata)
    with engine.begin() as conn:
        grid = conn.execute(sa.select(layout_t)).one()
        ids = np.array(conn.execute(sa.select(parcels.c.id)).scalars().all(), dtype="int64")
        if updates + deletes > len(ids):
            raise ValueError(f"The source has {len(ids)} parcels: cannot update {updates} and "
                             f"delete {deletes} of them.")
        picked = rng.choice(ids, size=updates + deletes, replace=False)
        updated_ids, deleted_ids = picked[:updates], picked[updates:]
        if len(updated_ids):
            fresh = _attributes(updated_ids, rng, now, timedelta(seconds=1))
            acres = np.round(rng.uniform(0.1, 5.0, len(updated_ids)), 4)
            fresh = fresh.assign(acres=acres,
                                 **_values(acres, fresh["use_code"].to_numpy(), rng))
            changes = fresh.drop(columns=["tax_year", "use_code"]).rename(columns={"id": "_id"})
            conn.execute(
                parcels.update().where(parcels.c.id == sa.bindparam("_id")),
                changes.to_dict("records"),
            )
        if len(deleted_ids):
            conn.execute(parcels.delete().where(parcels.c.id.in_(deleted_ids.tolist())))
        next_id = int(ids.max()) + 1 if len(ids) else 1
    if inserts:
        new_ids = np.arange(next_id, next_id + inserts, dtype="int64")
        _write(engine, generate_parcels(new_ids, Layout(grid.grid_columns, grid.cell_ft),
                                        int(rng.integers(1 << 31)), now, timedelta(seconds=1)))
    engine.dispose()
    return {"updated": len(updated_ids), "inserted": inserts, "deleted": len(deleted_ids),
            "updated_at": now}
