"""A small map of what one run changed, shown with the run's materialization in the Dagster UI.

Parcels are coloured by what the run did to them: inserted (green), updated (blue), deleted
(red). A run feeds its batches in as it goes and keeps only their centroids (16 bytes a
parcel) and the outlines of the first few thousand, so a first sync of a million parcels costs
a few megabytes: a run that changed few parcels is drawn as outlines, a big one as dots. The
PNG goes into the metadata as a markdown image, which the UI displays.
"""

import base64
import io

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

COLOURS = {"inserted": "#1a9850", "updated": "#4575b4", "deleted": "#d73027"}
OUTLINES = 5_000  # parcels drawn as outlines; beyond, every changed parcel is a dot
SIZE_INCHES, DPI = (4.8, 3.6), 100  # a 480 x 360 PNG: a few tens of KB in the event log


def changes(batch: pd.DataFrame, published: pd.DataFrame) -> pd.Series:
    """``inserted``/``updated`` for each row of ``batch`` (id, updated_at) that changes what
    ``published`` (the same columns, as the layer held those ids before the run) holds; None
    for an unchanged row (newer wins: a rerun changes nothing, so it draws nothing). Compared
    to the millisecond, as the GeoPackage stores times."""
    before = pd.to_datetime(published.set_index("id")["updated_at"], utc=True) \
        .reindex(batch["id"].to_numpy()).dt.floor("ms").to_numpy()
    now = pd.to_datetime(batch["updated_at"], utc=True).dt.floor("ms").to_numpy()
    kinds = np.where(pd.isna(before), "inserted", np.where(now > before, "updated", None))
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
        parcels = parcels[parcels.notna()]
        if not len(parcels):
            return
        self.crs = parcels.crs
        self.points[kind].append(shapely.get_coordinates(shapely.centroid(parcels.values)))
        room = OUTLINES - sum(len(s) for part in self.shapes.values() for s in part)
        if room > 0:
            self.shapes[kind].append(parcels.iloc[:room])
        self.counts[kind] += len(parcels)

    def markdown(self, title: str) -> str | None:
        """The map as a markdown image with a legend of the counts; None if nothing changed."""
        total = sum(self.counts.values())
        if not total:
            return None
        # matplotlib (~50 MB) only in a run that has something to draw
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
        axes = figure.add_axes((0, 0, 1, 1))
        axes.set_axis_off()
        axes.set_aspect("equal")
        for kind, colour in COLOURS.items():
            if total <= OUTLINES and self.shapes[kind]:
                shapes = gpd.GeoSeries(pd.concat(self.shapes[kind]), crs=self.crs)
                shapes.plot(ax=axes, color=colour, linewidth=0, antialiased=False)
            elif self.points[kind]:
                xy = np.concatenate(self.points[kind])
                axes.scatter(xy[:, 0], xy[:, 1], s=1, c=colour, linewidths=0)
        axes.legend(handles=[Patch(color=COLOURS[kind], label=f"{kind} {count:,}")
                             for kind, count in self.counts.items() if count],
                    loc="lower right", fontsize=8, framealpha=0.8)
        png = io.BytesIO()
        FigureCanvasAgg(figure).print_png(png)
        image = base64.b64encode(png.getvalue()).decode("ascii")
        counted = ", ".join(f"{count:,} {kind}" for kind, count in self.counts.items() if count)
        how = "outlines" if total <= OUTLINES else "one dot per parcel"
        return f"**{title}**: {counted} ({how})\n\n![{title}](data:image/png;base64,{image})"
