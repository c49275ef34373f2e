"""``source_changes_sensor``: polls the source and requests one sync run over the changed windows.

Each tick reads the key and cursor of the rows at or after the watermark minus a look-back
overlap (late-committing transactions land behind the watermark), digests them per partition
and requests one run over the partitions whose digest changed (one window: a run of that
partition; several: a run of their range, which costs one run's start and writes each output
once instead of several runs contending for the same files). Run keys hold the watermark and
the digests, so a later change to the same partition is never deduplicated away. A huge change
set (a first sync, a mass update: more than ``MAX_ROWS_PER_POLL`` rows) is one run over the
partitions that hold it: a run streams its rows, so its memory does not grow with them, and
the sensor reads only the keys of its look-back. A new cursor starts from the watermark the
outputs already hold, so a sync is never repeated because the cursor is new.
Requested runs stay in the cursor until they succeed; failed ones are requested again with
backoff, and a run whose process died (kill -9, a reboot) is marked failed and requested again
at once, so no change is lost and no run is left STARTED for ever.

What a cursor cannot see is handled by counting: when the table shrinks or the rows no window
can hold change, the delete check (key reconciliation) is requested; when rows come back
without a newer ``updated_at`` (a truncate and reload), every window is synced again.
"""

import hashlib
import os
import time
from datetime import datetime, timedelta

import pandas as pd
from dagster import (
    DagsterEventType,
    DagsterRunStatus,
    DefaultSensorStatus,
    PartitionKeyRange,
    ResourceParam,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.storage.tags import RUN_KEY_TAG

from countysync_assets.assets.master_parcels import SYNCED
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.jobs import reconcile_deletes_job, sync_job
from countysync_assets.partitions import PARTITIONS, partition_keys_for, range_tags
from countysync_assets.processes import process_alive
from countysync_assets.resources.master_parcels_source import (
    EARLIEST_CURSOR,
    MasterParcelsSource,
)
from countysync_assets.sensors.sync_cursor import PendingRun, SyncCursor

INTERVAL_SECONDS = int(os.environ.get("COUNTYSYNC_SENSOR_INTERVAL_SECONDS") or 60)
OVERLAP = timedelta(seconds=int(os.environ.get("COUNTYSYNC_SENSOR_OVERLAP_SECONDS") or 300))
MAX_ROWS_PER_POLL = int(os.environ.get("COUNTYSYNC_SENSOR_MAX_ROWS_PER_POLL") or 100_000)
# a STARTED run that records nothing for this long is taken as dead, even where its process
# cannot be checked (another machine)
STALLED_AFTER_SECONDS = int(os.environ.get("COUNTYSYNC_SENSOR_STALLED_AFTER_SECONDS") or 1800)
UNLAUNCHED_AFTER_SECONDS = 600  # a request with no run after this long is requested again
FAILED = {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
UNFINISHED = {DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.NOT_STARTED}


def newest_end() -> datetime:
    """The end of the newest partition: later cursor values are no edit times (9999-12-31)."""
    return PARTITIONS.time_window_for_partition_key(PARTITIONS.get_last_partition_key()).end


def key_of(moment: datetime) -> str:
    """The partition key of a UTC moment (the first partition's for the baseline before it)."""
    return PARTITIONS.get_partition_key_for_timestamp(max(moment, PARTITIONS.start).timestamp())


def partition_of(rows: pd.DataFrame) -> pd.Series:
    """The partition key of each row's UTC ``updated_at`` (rows must be non-empty)."""
    keys = PARTITIONS.get_partition_keys_in_range(PartitionKeyRange(
        key_of(rows["updated_at"].min()), key_of(rows["updated_at"].max())))
    return partition_keys_for(PARTITIONS, keys, rows["updated_at"])


def with_times(rows: pd.DataFrame, since: datetime) -> pd.DataFrame:
    """``rows`` with a time for each: a value the source sorts in the range but that cannot be
    read as a time (SQLite text) takes its neighbour's, so its window is synced (and the row
    rejected there, with the reason)."""
    return rows.assign(updated_at=rows["updated_at"].ffill().bfill().fillna(
        pd.Timestamp(since)).astype("datetime64[us, UTC]"))


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
        return RunRequest(run_key=run_key, partition_key=first, job_name=sync_job.name)
    return RunRequest(run_key=run_key, tags=range_tags(first, last), job_name=sync_job.name)


def dead_run(context: SensorEvaluationContext, record) -> str | None:
    """Why a run that says STARTED (or is still starting) will never finish, or None: its
    process is gone from this machine (the run launcher starts runs here), it recorded
    nothing for ``STALLED_AFTER_SECONDS``, or it never got past starting."""
    run = record.dagster_run
    entries = [r.event_log_entry for r in context.instance.get_records_for_run(
        run.run_id, limit=50, ascending=False).records]
    # the newest event that names its process (log lines do not), else the run's start
    pid = next((e.dagster_event.pid for e in entries if e.dagster_event), None) or next(
        (r.event_log_entry.dagster_event.pid for r in context.instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.RUN_START, limit=1).records), None)
    if run.status == DagsterRunStatus.STARTED and pid and \
            isinstance(context.instance.run_launcher, DefaultRunLauncher) and \
            not process_alive(pid, entries[0].timestamp):
        return f"its process (pid {pid}) is gone"
    idle = time.time() - (entries[0].timestamp if entries else record.create_timestamp
                          .timestamp())
    limit = STALLED_AFTER_SECONDS if run.status == DagsterRunStatus.STARTED else \
        UNLAUNCHED_AFTER_SECONDS
    if idle > limit:
        return f"it recorded nothing for {idle:.0f} s"
    return None


def mark_dead_runs(context: SensorEvaluationContext) -> set[str]:
    """Mark failed every run that says STARTED but died (a killed CLI run too, which no
    request of this sensor's tracks), so none is left STARTED for ever; their run ids."""
    died = set()
    for record in context.instance.get_run_records(RunsFilter(statuses=list(UNFINISHED)),
                                                   limit=100):
        # its status read again: a run that ended meanwhile (its process gone because it
        # finished) is not dead
        if (why := dead_run(context, record)) and context.instance.get_run_by_id(
                record.dagster_run.run_id).status in UNFINISHED:
            context.instance.report_run_failed(
                record.dagster_run, f"countysync's change sensor marked this run failed: "
                f"{why}. A run of the sensor's is requested again.")
            context.log.warning(f"Run {record.dagster_run.run_id[:8]} died ({why}): marked "
                                "failed.")
            died.add(record.dagster_run.run_id)
    return died


def retry_failed(context: SensorEvaluationContext, state: SyncCursor, died: set[str]
                 ) -> list[RunRequest]:
    """Requests again the pending runs that failed (after a backoff), died (at once) or
    never started."""
    retries = []
    now = time.time()
    for run_key, pending in list(state.pending.items()):
        records = context.instance.get_run_records(
            RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
        status = records[0].dagster_run.status if records else None
        if status == DagsterRunStatus.SUCCESS:
            del state.pending[run_key]
            continue
        if status in FAILED:
            run = records[0].dagster_run
            backoff = 0 if run.run_id in died else \
                min(INTERVAL_SECONDS * 2 ** (pending.attempt - 1), 3600)
            if now < (records[0].end_time or now) + backoff:
                continue
            reason = f"run {run.run_id[:8]} {'died' if run.run_id in died else status}"
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


def uncursored_changes(context: SensorEvaluationContext, source: MasterParcelsSource,
                       state: SyncCursor) -> list[RunRequest]:
    """What the cursor cannot see, found by counting rows. Rows that came back without a newer
    updated_at (the table reloaded) clear the cursor, so every window is synced again; a
    table that shrank, or rows no window can hold, request the delete check."""
    total, unplaced = source.count_all(), source.count_unplaced(newest_end())
    before, unplaced_before = state.source_rows, state.unplaced_rows
    state.source_rows, state.unplaced_rows = total, unplaced
    if before is None:
        return []
    # rows added where the sensor looks (the look-back window and after) explain growth
    seen = source.count_since(state.watermark_time - OVERLAP, newest_end()) - \
        (state.lookback_rows or 0) if state.watermark_time else total
    if total > before + seen:
        context.log.warning(
            f"The source has {total - before - seen} more row(s) than before without newer "
            "updated_at values (reloaded?): every window is synced again; unchanged rows "
            "write nothing.")
        state.watermark = state.watermark_utc = state.watermark_id = None
        state.digests = {}
        state.generation += 1
    if total < before or unplaced != unplaced_before:
        return [RunRequest(run_key=state.run_key(f"reconcile|{total}|{unplaced}|"
                                                 f"{state.watermark}"),
                           job_name=reconcile_deletes_job.name)]
    return []


def range_run(source: MasterParcelsSource, state: SyncCursor, since: datetime
              ) -> tuple[pd.DataFrame, RunRequest]:
    """A huge change set (a first sync, a mass update) as one run over the partitions that
    hold it: the run streams its rows in batches, so its memory does not grow with them, and
    the sensor reads only the keys of the look-back at its end. Returns those rows and the
    request."""
    end = newest_end()
    low, high = source.cursor_bounds(since, end)
    first, last = key_of(low), key_of(high)
    rows = with_times(source.changes_since(max(since, high - OVERLAP), end), high)
    mark = rows.iloc[-1]["cursor_text"]
    return rows, request(state, state.run_key(f"{first}...{last}|{mark}"), first, last)


def adopt_outputs_watermark(context: SensorEvaluationContext, source: MasterParcelsSource,
                            io_manager: ExportIOManager, state: SyncCursor) -> None:
    """A new (or reset) cursor starts from what the outputs already hold, however they were
    written (the demo, a CLI backfill, another instance), so nothing is synced again just
    because the cursor is new. The look-back rows up to that mark count as synced."""
    held = io_manager.newest_synced(SYNCED)
    if held is None:
        return
    rows = with_times(source.changes_since(held - OVERLAP, held + timedelta(microseconds=1)),
                      held - OVERLAP)
    state.watermark = state.watermark_utc = held.isoformat()
    state.digests, state.lookback_rows = digests(rows), len(rows)
    context.log.info(f"The outputs already hold the rows up to {held.isoformat()}: the sensor "
                     "starts from there.")


def window_requests(state: SyncCursor, rows: pd.DataFrame) -> list[RunRequest]:
    """One run over the partitions whose look-back digest changed (they follow the watermark,
    so they are next to each other; an unchanged one between them is a no-op rerun)."""
    new = digests(rows)
    to_sync = sorted(k for k, digest in new.items() if state.digests.get(k) != digest)
    if not to_sync:
        return []
    first, last = to_sync[0], to_sync[-1]
    changed = hashlib.sha1("".join(new[k] for k in to_sync).encode()).hexdigest()[:16]
    run_key = f"{first}|" if first == last else f"{first}...{last}|"
    mark = rows.iloc[-1]["cursor_text"]
    return [request(state, state.run_key(f"{run_key}{mark}|{changed}"), first, last)]


@sensor(
    jobs=[sync_job, reconcile_deletes_job],
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="Polls MasterParcels for changed rows and syncs the windows that hold them; "
    "requests the delete check when rows disappear. Reset its cursor (empty) to re-sync "
    "everything.",
)
def source_changes_sensor(context: SensorEvaluationContext, source: MasterParcelsSource,
                          io_manager: ResourceParam[ExportIOManager]) -> SensorResult:
    state = SyncCursor.from_json(context.cursor)
    run_requests = retry_failed(context, state, mark_dead_runs(context))
    run_requests += uncursored_changes(context, source, state)
    if not context.cursor:  # new or reset; not after a reload, which must sync everything
        adopt_outputs_watermark(context, source, io_manager, state)
    # with no watermark: every row from 1970 on (the first partition holds the baseline)
    since = state.watermark_time - OVERLAP if state.watermark_time else EARLIEST_CURSOR
    changed = source.count_since(since, newest_end())
    if changed > MAX_ROWS_PER_POLL:  # the first sync, or a mass update: one streamed run
        if state.pending:  # one at a time: the next once this one has succeeded
            return SensorResult(
                run_requests=run_requests, cursor=state.to_json(),
                skip_reason=None if run_requests else f"{changed} changed rows; waiting for "
                f"{', '.join(state.pending)} before the next range.")
        rows, next_run = range_run(source, state, since)
        run_requests.append(next_run)
        planned = state.pending[next_run.run_key]
        context.log.info(f"{changed} changed rows: one run for partitions {planned.first}.."
                         f"{planned.last}.")
    else:
        rows = with_times(source.changes_since(since, newest_end()), since)
        run_requests += window_requests(state, rows)
    if len(rows):
        newest = rows.iloc[-1]
        state.watermark = newest["cursor_text"]
        state.watermark_utc = newest["updated_at"].isoformat()
        state.watermark_id = newest["id"].item() if hasattr(newest["id"], "item") else newest["id"]
        # digests of exactly the rows the next tick will look back at, so an unchanged
        # window gives the same digests and no run
        lookback = rows[rows["updated_at"] >= state.watermark_time - OVERLAP]
        state.digests, state.lookback_rows = digests(lookback), len(lookback)
    if not run_requests:
        return SensorResult(skip_reason=f"No changes since {state.watermark or 'the start'}.",
                            cursor=state.to_json())
    return SensorResult(run_requests=run_requests, cursor=state.to_json())
