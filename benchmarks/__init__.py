"""Benchmarks: countysync against the seeds' plain pandas path, dlt, and dlt with GDAL's
ogr2ogr for the geo outputs, in one run.

    python -m benchmarks --sizes 100000 1000000 2000000 --repeat 1

Each case runs in its own process (``benchmarks.case``) so its peak RSS can be read.
"""
