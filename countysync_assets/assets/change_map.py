"""A small map of what one run changed, shown with the run's materialization in the Dagster UI.

Parcels are coloured by what the run did to them: inserted (green), updated (blue), deleted
(red). A run feeds its batches in as it goes and keeps only their centres (16 bytes a
parcel) and the outlines of the first few thousand, so a first sync of a million parcels costs
a few megabytes: a run that changed few parcels is drawn as outlines, a big one as dots. The
PNG goes into the metadata as a markdown image, which the UI displays. It is drawn with Pillow
(polygons filled, dots set as pixels): matplotlib's import and figure cost ~0.5 s of every
sync that changed something.
"""

import base64
import io
from collections.abc import Callable

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from PIL import Image, ImageColor, ImageDraw, ImageFont

COLOURS = {"inserted": "#1a9850", "updated": "#4575b4", "deleted": "#d73027"}
OUTLINES = 5_000  # parcels drawn as outlines; beyond, every changed parcel is a dot
WIDTH, HEIGHT, MARGIN = 480, 360, 4  # a 480 x 360 PNG: a few tens of KB in the event log


def milliseconds(times: pd.Series) -> np.ndarray:
    """UTC times as naive datetime64 to the millisecond, as the GeoPackage stores them (NaT
    for none), to compare a layer's times with others: a plain array, not one Timestamp
    object per row."""
    if not isinstance(times.dtype, pd.DatetimeTZDtype):  # to_datetime costs ~10 ms a batch
        times = pd.to_datetime(times, utc=True)
    return times.dt.tz_convert(None).dt.floor("ms").to_numpy()


def changes(batch: pd.DataFrame, published: pd.DataFrame) -> pd.Series:
    """``inserted``/``updated`` for each row of ``batch`` (id, updated_at) that changes what
    ``published`` (the same columns, as the layer held those ids before the run) holds; None
    for an unchanged row (newer wins: a rerun changes nothing, so it draws nothing)."""
    if published.empty:
        return pd.Series("inserted", index=batch.index, dtype=object)
    now = milliseconds(batch["updated_at"])
    before = pd.Series(milliseconds(published["updated_at"]), index=published["id"].to_numpy()
                       ).reindex(batch["id"].to_numpy()).to_numpy()
    kinds = np.where(np.isnat(before), "inserted", np.where(now > before, "updated", None))
    return pd.Series(kinds, index=batch.index, dtype=object)


class ChangeMap:
    """What a run changed, collected batch by batch, drawn once at the end."""

    def __init__(self) -> None:
        self.points: dict[str, list[np.ndarray]] = {kind: [] for kind in COLOURS}
        self.shapes: dict[str, list[gpd.GeoSeries]] = {kind: [] for kind in COLOURS}
        self.counts = dict.fromkeys(COLOURS, 0)
        self.crs = None

    def add(self, kind: str, parcels: gpd.GeoSeries) -> None:
        """Parcels (geometries, any CRS: the map is drawn in the layer's own) the run
        ``kind``-ed."""
        shapes = parcels.values  # missing or empty: nothing to place
        parcels = parcels[~(shapely.is_missing(shapes) | shapely.is_empty(shapes))]
        if not len(parcels):
            return
        self.crs = parcels.crs
        # the centre of each outline's box: a dot at the map's scale, 15x cheaper than GEOS's
        # centroid (1 s of a first sync of a million parcels)
        bounds = shapely.bounds(parcels.values)
        # kept as float32 (8 bytes a parcel, to a few centimetres: far below a pixel), as a
        # first sync keeps one for every parcel of the county while it writes
        self.points[kind].append(((bounds[:, :2] + bounds[:, 2:]) / 2).astype(np.float32))
        room = OUTLINES - sum(len(s) for part in self.shapes.values() for s in part)
        if room > 0:
            self.shapes[kind].append(parcels.iloc[:room])
        self.counts[kind] += len(parcels)

    def markdown(self, title: str) -> str | None:
        """The map as a markdown image with a legend of the counts; None if nothing changed."""
        total = sum(self.counts.values())
        if not total:
            return None
        outlines = total <= OUTLINES
        to_pixels = _fit(np.concatenate([xy for part in self.points.values() for xy in part]),
                         [s.total_bounds for part in self.shapes.values() for s in part]
                         if outlines else [])
        pixels = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
        for kind, colour in COLOURS.items():
            if not outlines and self.points[kind]:
                dots = to_pixels(np.concatenate(self.points[kind]))
                pixels[dots[:, 1], dots[:, 0]] = ImageColor.getrgb(colour)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for kind, colour in COLOURS.items():
            for shapes in self.shapes[kind] if outlines else []:
                _fill(draw, to_pixels, shapes, colour)
        _legend(draw, {kind: count for kind, count in self.counts.items() if count})
        png = io.BytesIO()
        image.save(png, format="PNG")
        encoded = base64.b64encode(png.getvalue()).decode("ascii")
        counted = ", ".join(f"{count:,} {kind}" for kind, count in self.counts.items() if count)
        how = "outlines" if outlines else "one dot per parcel"
        return f"**{title}**: {counted} ({how})\n\n![{title}](data:image/png;base64,{encoded})"


def _fit(points: np.ndarray, bounds: list[np.ndarray]
         ) -> Callable[[np.ndarray], np.ndarray]:
    """Map coordinates to pixels: everything drawn fits the image, north up, equal scale."""
    corners = np.vstack([points, *[b.reshape(2, 2) for b in bounds]])
    low, high = corners.min(axis=0), corners.max(axis=0)
    span = np.maximum(high - low, 1e-9)
    scale = min((WIDTH - 2 * MARGIN) / span[0], (HEIGHT - 2 * MARGIN) / span[1])
    offset = (np.array([WIDTH, HEIGHT]) - span * scale) / 2

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        pixels = (xy - low) * scale + offset
        pixels[:, 1] = HEIGHT - 1 - pixels[:, 1]
        return np.clip(np.rint(pixels), 0, [WIDTH - 1, HEIGHT - 1]).astype(int)
    return to_pixels


def _fill(draw: ImageDraw.ImageDraw, to_pixels: Callable[[np.ndarray], np.ndarray],
          shapes: gpd.GeoSeries, colour: str) -> None:
    """Each polygon filled, its holes left white: every ring's pixels computed at once (one
    call per polygon took ~30 ms of a 1,000-parcel sync), drawn polygon by polygon."""
    rings, polygon = shapely.get_rings(shapely.get_parts(shapes.to_numpy()), return_index=True)
    if not len(rings):
        return
    exterior = np.r_[True, polygon[1:] != polygon[:-1]]  # each polygon's rings: exterior first
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    points = np.split(to_pixels(coords), np.flatnonzero(np.diff(ring)) + 1)
    for outline, is_exterior in zip(points, exterior, strict=True):
        draw.polygon(outline.ravel().tolist(), fill=colour if is_exterior else "white")


def _legend(draw: ImageDraw.ImageDraw, counts: dict[str, int]) -> None:
    """A patch of each colour and its count, bottom right."""
    font = ImageFont.load_default(size=11)
    lines = [f"{kind} {count:,}" for kind, count in counts.items()]
    width = max(draw.textlength(line, font=font) for line in lines) + 24
    top = HEIGHT - MARGIN - 16 * len(lines) - 4
    draw.rectangle((WIDTH - MARGIN - width, top, WIDTH - MARGIN, HEIGHT - MARGIN),
                   fill="white", outline="#999999")
    for row, (kind, line) in enumerate(zip(counts, lines, strict=True)):
        y = top + 4 + 16 * row
        draw.rectangle((WIDTH - MARGIN - width + 4, y, WIDTH - MARGIN - width + 16, y + 10),
                       fill=COLOURS[kind])
        draw.text((WIDTH - MARGIN - width + 20, y - 1), line, fill="black", font=font)
