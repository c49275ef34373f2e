"""``source_changes_sensor``: polls the source and requests a sync run for each changed window.

Each tick reads the key and cursor of the rows at or after the watermark minus a look-back
overlap (late-committing transactions land behind the watermark), digests them per partition
and requests a run for every partition whose digest changed. Run keys hold the watermark and
the digest, so a later change to the same partition is never deduplicated away. A huge change
set (the first tick, a mass update) is synced as partition-range runs of at most
``MAX_ROWS_PER_POLL`` rows, one at a time, the watermark following each: memory stays that of
one such run however big the county (a single window holding more rows is still one run).
Requested runs stay in the cursor until they succeed; failed ones are requested again with
backoff, so no change is lost.
"""

import hashlib
import os
import time
from datetime import datetime, timedelta

import pandas as pd
from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    PartitionKeyRange,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.storage.tags import RUN_KEY_TAG

from countysync_assets.jobs import sync_job
from countysync_assets.partitions import PARTITIONS, partition_keys_for, range_tags
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.sync_cursor import PendingRun, SyncCursor

INTERVAL_SECONDS = int(os.environ.get("COUNTYSYNC_SENSOR_INTERVAL_SECONDS") or 60)
OVERLAP = timedelta(seconds=int(os.environ.get("COUNTYSYNC_SENSOR_OVERLAP_SECONDS") or 300))
MAX_ROWS_PER_POLL = int(os.environ.get("COUNTYSYNC_SENSOR_MAX_ROWS_PER_POLL") or 100_000)
MAX_RUNS_PER_TICK = int(os.environ.get("COUNTYSYNC_SENSOR_MAX_RUNS_PER_TICK") or 10)
UNLAUNCHED_AFTER_SECONDS = 600  # a request with no run after this long is requested again
FAILED = {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def key_of(moment: datetime) -> str:
    """The partition key of a UTC moment."""
    return PARTITIONS.get_partition_key_for_timestamp(moment.timestamp())


def partition_of(rows: pd.DataFrame) -> pd.Series:
    """The partition key of each row's UTC ``updated_at`` (rows must be non-empty)."""
    keys = PARTITIONS.get_partition_keys_in_range(PartitionKeyRange(
        key_of(rows["updated_at"].min()), key_of(rows["updated_at"].max())))
    return partition_keys_for(PARTITIONS, keys, rows["updated_at"])


def digests(rows: pd.DataFrame) -> dict[str, str]:
    """Per partition, a digest of the (cursor, key) pairs it holds in the look-back window."""
    if rows.empty:
        return {}
    pairs = rows["cursor_text"] + "|" + rows["id"].astype(str)
    return {key: hashlib.sha1("\n".join(group).encode()).hexdigest()[:16]
            for key, group in pairs.groupby(partition_of(rows), sort=True)}


def request(state: SyncCursor, run_key: str, first: str, last: str, attempt: int = 1) -> RunRequest:
    """A run for partitions first..last, remembered in the cursor until it succeeds."""
    state.pending[run_key] = PendingRun(first, last, attempt, time.time())
    if first == last:
        return RunRequest(run_key=run_key, partition_key=first)
    return RunRequest(run_key=run_key, tags=range_tags(first, last))


def retry_failed(context: SensorEvaluationContext, state: SyncCursor) -> list[RunRequest]:
    """Requests again the pending runs that failed (after a backoff) or never started."""
    retries = []
    now = time.time()
    for run_key, pending in list(state.pending.items()):
        records = context.instance.get_run_records(
            RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
        if records and records[0].dagster_run.status == DagsterRunStatus.SUCCESS:
            del state.pending[run_key]
            continue
        if records and records[0].dagster_run.status in FAILED:
            backoff = min(INTERVAL_SECONDS * 2 ** (pending.attempt - 1), 3600)
            if now < (records[0].end_time or now) + backoff:
                continue
            reason = f"run {records[0].dagster_run.run_id[:8]} {records[0].dagster_run.status}"
        elif not records and now - pending.requested_at > UNLAUNCHED_AFTER_SECONDS:
            reason = "no run was launched"
        else:
            continue
        del state.pending[run_key]
        base = run_key.split("#retry")[0]
        context.log.warning(f"Requesting {pending.first}..{pending.last} again ({reason}).")
        retries.append(request(state, f"{base}#retry{pending.attempt}", pending.first,
                               pending.last, pending.attempt + 1))
    return retries


def bounded_last(source: MasterParcelsSource, since: datetime, last: str) -> str:
    """The last partition p (<= ``last``) such that the rows from ``since`` to the end of p
    number at most ``MAX_ROWS_PER_POLL``; the partition of ``since`` if even that holds
    more. Found by binary search with counts over the source's cursor index."""
    keys = PARTITIONS.get_partition_keys_in_range(PartitionKeyRange(key_of(since), last))

    def fits(key: str) -> bool:
        end = PARTITIONS.time_window_for_partition_key(key).end
        return source.count_since(since, end) <= MAX_ROWS_PER_POLL

    if fits(keys[-1]):
        return keys[-1]
    known, too_big = 0, len(keys) - 1  # keys[known] is the answer unless a later one fits
    while too_big - known > 1:
        middle = (known + too_big) // 2
        known, too_big = (middle, too_big) if fits(keys[middle]) else (known, middle)
    return keys[known]


def next_range(source: MasterParcelsSource, state: SyncCursor, since: datetime,
               newest_end: datetime) -> tuple[pd.DataFrame, RunRequest]:
    """A huge change set's next bounded run: from the look-back (late commits) to the last
    partition that keeps the rows newer than the watermark within ``MAX_ROWS_PER_POLL``, so
    every run moves the watermark on. Returns the run's rows and its request."""
    low, high = source.cursor_bounds(since)
    high = min(high, newest_end - timedelta(microseconds=1))  # clock skew: not a partition yet
    newer = source.cursor_bounds(state.watermark_time + timedelta(microseconds=1)) \
        if state.watermark_time else None
    first = key_of(low)
    last = bounded_last(source, newer[0] if newer else low, key_of(high))
    rows = source.changes_since(since, PARTITIONS.time_window_for_partition_key(last).end)
    return rows, request(state, f"{first}...{last}|{rows.iloc[-1]['cursor_text']}", first, last)


def window_requests(state: SyncCursor, rows: pd.DataFrame) -> list[RunRequest]:
    """A run for each partition whose look-back digest changed; one range run over them if
    they are more than ``MAX_RUNS_PER_TICK``."""
    new = digests(rows)
    to_sync = sorted(k for k, digest in new.items() if state.digests.get(k) != digest)
    if not to_sync:
        return []
    mark = rows.iloc[-1]["cursor_text"]
    if len(to_sync) > MAX_RUNS_PER_TICK:
        first, last = to_sync[0], to_sync[-1]
        return [request(state, f"{first}...{last}|{mark}", first, last)]
    return [request(state, f"{k}|{mark}|{new[k]}", k, k) for k in to_sync]


@sensor(
    job=sync_job,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="Polls MasterParcels for changed rows and syncs the windows that hold them. "
    "Reset its cursor (empty) to re-sync everything.",
)
def source_changes_sensor(context: SensorEvaluationContext,
                          source: MasterParcelsSource) -> SensorResult:
    state = SyncCursor.from_json(context.cursor)
    run_requests = retry_failed(context, state)
    since = PARTITIONS.start
    if state.watermark_time:
        since = max(state.watermark_time - OVERLAP, since)
    newest_end = PARTITIONS.time_window_for_partition_key(PARTITIONS.get_last_partition_key()).end
    changed = source.count_since(since)
    if changed > MAX_ROWS_PER_POLL:  # the first sync, or a mass update: bounded range runs
        if state.pending:  # one at a time: the next range once this one has succeeded
            return SensorResult(
                run_requests=run_requests, cursor=state.to_json(),
                skip_reason=None if run_requests else f"{changed} changed rows; waiting for "
                f"{', '.join(state.pending)} before the next range.")
        rows, next_run = next_range(source, state, since, newest_end)
        run_requests.append(next_run)
        planned = state.pending[next_run.run_key]
        context.log.info(f"{changed} changed rows: a run for partitions {planned.first}.."
                         f"{planned.last}, then the next range once it succeeds.")
    else:
        rows = source.changes_since(since)
        rows = rows[rows["updated_at"] < newest_end]  # clock skew: not a partition yet
        run_requests += window_requests(state, rows)
    if len(rows):
        newest = rows.iloc[-1]
        state.watermark = newest["cursor_text"]
        state.watermark_utc = newest["updated_at"].isoformat()
        state.watermark_id = newest["id"].item() if hasattr(newest["id"], "item") else newest["id"]
        # digests of exactly the rows the next tick will look back at, so an unchanged
        # window gives the same digests and no run
        state.digests = digests(rows[rows["updated_at"] >= state.watermark_time - OVERLAP])
    if not run_requests:
        return SensorResult(skip_reason=f"No changes since {state.watermark or 'the start'}.",
                            cursor=state.to_json())
    return SensorResult(run_requests=run_requests, cursor=state.to_json())
