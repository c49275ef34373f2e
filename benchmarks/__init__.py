"""Benchmarks: countysync against the seeds' plain pandas path, dlt, and dlt with GDAL's
ogr2ogr for the geo outputs, in one run.

    python -m benchmarks --sizes 100000 1000000 2000000 --repeat 1

Each case runs in its own process (``benchmarks.case``) so its peak RSS can be read.
"""

import os
from datetime import UTC, datetime, timedelta

# The benchmark's county went live this many days before today, as a county would set
# COUNTYSYNC_PARTITION_START: its older history is the first partition's baseline. Set before
# countysync is imported (partitions are built from it), and over any .env, so that every run
# measures the same partitions.
GO_LIVE_DAYS = 31
os.environ["COUNTYSYNC_PARTITION_START"] = (
    datetime.now(UTC) - timedelta(days=GO_LIVE_DAYS)).date().isoformat()
