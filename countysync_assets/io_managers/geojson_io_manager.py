"""GeoJSON: one file per partition, RFC 7946 (WGS 84 lon/lat, no ``crs`` member), for the web.

GDAL's ``RFC7946=YES`` option does what the RFC asks (right-hand winding, 7 decimals, no crs),
after the geometry is reprojected from the source's State Plane CRS to EPSG:4326.
"""

from pathlib import Path

import geopandas as gpd
import pyogrio

from countysync_assets.io_managers.format_io_manager import PartitionedFileIOManager
from countysync_assets.io_managers.publishing import timestamps_to_iso


class GeoJsonIOManager(PartitionedFileIOManager):
    """``<export_dir>/<asset>/<partition>.geojson`` in WGS 84."""

    extension = ".geojson"

    def prepare(self, frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        # An empty output has no SRID to come from; its (empty) files are WGS 84 all the same.
        wgs84 = frame.to_crs(4326) if len(frame) else frame.set_crs(4326, allow_override=True)
        return timestamps_to_iso(wgs84)

    def write_file(self, frame: gpd.GeoDataFrame, temp: Path, final: Path) -> None:
        pyogrio.write_dataframe(
            frame, temp, driver="GeoJSON", layer=final.stem,
            layer_options={"RFC7946": "YES"}, promote_to_multi=True,
            geometry_type="MultiPolygon", use_arrow=True,
        )
