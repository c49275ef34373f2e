"""Benchmarks: countysync against the seeds' plain pandas path and dlt, in one run.

    python -m benchmarks --sizes 100000 1000000 --repeat 3

Each case runs in its own process (``benchmarks.case``) so its peak RSS can be read.
"""
