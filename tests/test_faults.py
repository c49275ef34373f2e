"""The fault suite, part one: kill -9 at random moments of every way a sync runs.

Each trial starts a real sync in a process of its own (the README's CLI command, the change
sensor's runs, the delete check, a single-run backfill), kills it with SIGKILL at a random
moment while its run is under way, then checks what a GIS user would find: every published
file whole (no half-written file under a final name, every database passing its integrity
check). Recovery is what runs unattended: the change sensor's next ticks (which mark the
dead run failed and request it again) or the same command run again, never a repair by hand.
After it the outputs equal the source, no run is left STARTED and no staging file is left.
The figures go to the README's Reliability table (``scripts/reliability.sh``).
"""

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, suppress
from datetime import timedelta
from pathlib import Path

import pandas as pd
import psutil
import pyogrio
import pytest
from conftest import AS_OF, FIRST_KEY, LAST_KEY, RUN_DIR
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef
from output_checks import assert_outputs_match_source, partition_keys, sqlite_table

from countysync_assets.demo_source import churn, create_demo_source
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors import source_changes_sensor as sensor_module
from countysync_assets.sensors.in_process import InProcessSync

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROWS = 1_500
KEYS = partition_keys(FIRST_KEY, "2026-06-01")  # the demo days and the day of the edits
TRIALS = 4  # per way of running: 5 ways, 20 kills


def instance_at(path: Path) -> DagsterInstance:
    path.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(path)))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A demo source synced once by the change sensor: source, instance, cursor, outputs."""
    root = tmp_path_factory.mktemp("synced")
    url = f"sqlite:///{root / 'source.sqlite'}"
    create_demo_source(url, rows=ROWS, seed=21, as_of=AS_OF, days=4)
    with instance_at(root / "instance") as instance:
        sync = InProcessSync(MasterParcelsSource(url=url), root / "exports", instance)
        assert sync.catch_up()
        (root / "cursor.json").write_text(sync.cursor)
    return root


def compute_log_tail(process: psutil.Process) -> bool:
    """Dagster's ``tail -F`` of a step's compute log. Dagster starts a watcher that ends it
    when the run's process dies, but a SIGKILL between the two starts orphans it for good
    (dagster-io/dagster#1871): Dagster's leak, not one of countysync's processes."""
    try:
        command = process.cmdline()
    except psutil.NoSuchProcess:
        return True
    return command[:2] == ["tail", "-F"] and "compute_logs" in command[-1]


class Trial:
    """One kill -9 trial in a copy of the template (or of its source alone)."""

    def __init__(self, template: Path, where: Path, synced: bool):
        shutil.copytree(template, where, ignore=None if synced else
                        shutil.ignore_patterns("instance", "exports", "cursor.json"))
        self.root = where
        self.url = f"sqlite:///{where / 'source.sqlite'}"
        self.exports, self.cursor = where / "exports", where / "cursor.json"
        self.instance_dir = where / "instance"
        instance_at(self.instance_dir).dispose()

    def start(self, mode: str) -> subprocess.Popen:
        if mode == "cli":
            # the geo formats in a second process, as a big first sync writes them: a kill
            # of the run must also end that process and leave nothing staged
            env = {**os.environ, "DAGSTER_HOME": str(self.instance_dir),
                   "COUNTYSYNC_SOURCE_URL": self.url, "COUNTYSYNC_EXPORT_DIR": str(self.exports),
                   "COUNTYSYNC_PARALLEL_ROWS": "1"}
            command = [str(BIN / "dagster"), "asset", "materialize", "-m",
                       "countysync_assets.definitions", "--select", "group:parcels",
                       "--partition-range",
                       f"{FIRST_KEY}...{LAST_KEY}"]
        else:
            env = dict(os.environ)
            command = [sys.executable, str(ROOT / "tests" / "fault_worker.py"), mode,
                       str(self.instance_dir), self.url, str(self.exports), str(self.cursor)]
        env["PYTHONPATH"] = str(ROOT)
        return subprocess.Popen(command, cwd=RUN_DIR, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def kill_at_random(self, process: subprocess.Popen, rng: random.Random) -> bool:
        """SIGKILL ``process`` a random 0-1.5 s after its first run starts; False if it had
        finished by then."""
        deadline = time.monotonic() + 120
        with instance_at(self.instance_dir) as instance:
            while not instance.get_runs(limit=1) and process.poll() is None:
                assert time.monotonic() < deadline, "no run started in 2 minutes"
                time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.5))
        alive = process.poll() is None
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        # the run's second process (geo writer) sees its parent gone and ends by itself
        _, left = psutil.wait_procs(children, timeout=60)
        assert not [p for p in left if not compute_log_tail(p)], \
            f"processes of the killed run still running: {left}"
        for tail in left:  # Dagster's, orphaned when the kill lands before its watcher starts
            with suppress(psutil.NoSuchProcess):
                tail.kill()
        return alive

    def recover(self, mode: str, monkeypatch) -> None:
        """What runs unattended: the sensor's ticks (as the daemon's), which find the dead
        run and request it again, and the killed command run again."""
        monkeypatch.setattr(sensor_module, "UNLAUNCHED_AFTER_SECONDS", 0)  # launched at once
        with instance_at(self.instance_dir) as instance:
            cursor = self.cursor.read_text() if self.cursor.exists() else None
            sync = InProcessSync(MasterParcelsSource(url=self.url), self.exports, instance,
                                 cursor)
            if mode in ("cli", "backfill"):  # ticks mark the dead run; the command again
                unfinished = RunsFilter(statuses=[DagsterRunStatus.STARTED,
                                                  DagsterRunStatus.STARTING])
                deadline = time.monotonic() + 120  # a killed CLI's step processes finish first
                while instance.get_runs(unfinished):
                    assert time.monotonic() < deadline, "the dead run was not marked failed"
                    sync.tick()
                    time.sleep(0.5)
                assert sync.sync_range(FIRST_KEY, LAST_KEY)
            else:
                assert sync.catch_up()
            if mode == "reconcile":
                assert sync.reconcile()
            started = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
            assert not started, f"{len(started)} run(s) left STARTED, at {time.time():.1f}: " \
                + "; ".join(f"{run.run_id[:8]} {run.tags}: " + ", ".join(
                    f"{e.dagster_event_type or e.user_message[:60]} pid "
                    f"{e.dagster_event.pid if e.dagster_event else '-'} at {e.timestamp:.1f}"
                    for e in instance.all_logs(run.run_id)[-6:]) for run in started)


def assert_published_files_whole(exports: Path) -> None:
    """What a reader may open at any moment: each database passes its integrity check,
    each change file under its final name parses. Databases are opened as QGIS and ogrinfo
    open them, read-write: the WAL a killed writer left is recovered on open (a read-only
    connection cannot recover it and fails until a writer or such a reader has)."""
    if not exports.exists():
        return
    for path in [*exports.glob("*.sqlite"), *exports.glob("*.gpkg")]:
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", path
    for path in exports.rglob("*"):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".geojson":
            pyogrio.read_dataframe(path)
        elif path.suffix == ".gpkg":
            pyogrio.read_dataframe(path, layer="parcels")


def staging_left(exports: Path) -> int:
    """Bytes of staging files left in the export folder."""
    return sum(p.stat().st_size for p in exports.rglob(".*") if p.is_file())


def prepare(mode: str, trial: Trial, seed: int) -> None:
    if mode == "sensor-incremental":
        churn(trial.url, updates=150, inserts=20, seed=seed, now=AS_OF + timedelta(hours=1))
    elif mode == "reconcile":
        churn(trial.url, deletes=40, seed=seed, now=AS_OF + timedelta(hours=1))


WAYS = {  # trial kind: (worker mode, starts from a synced county, what the README calls it)
    "cli-full": ("cli", False, "first sync by the README's CLI command, geo formats in a "
                 "second process"),
    "sensor-full": ("sensor", False, "first sync by the change sensor's runs"),
    "sensor-incremental": ("sensor", True, "incremental sync by the change sensor's runs"),
    "reconcile": ("reconcile", True, "delete check (40 deletes)"),
    "backfill": ("backfill", False, "single-run backfill of every window"),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_kill_9_at_random_moments_then_unattended_recovery(way, template, tmp_path,
                                                           monkeypatch, reliability):
    mode, synced, label = WAYS[way]
    rng = random.Random(f"countysync-{way}")
    killed_mid_run = recovered = 0
    temp_bytes = orphans = 0
    for number in range(TRIALS):
        trial = Trial(template, tmp_path / f"trial{number}", synced)
        prepare(way, trial, seed=number)
        process = trial.start(mode)
        killed_mid_run += trial.kill_at_random(process, rng)
        assert_published_files_whole(trial.exports)
        trial.recover(mode, monkeypatch)
        assert_outputs_match_source(trial.url, trial.exports, KEYS, file_keys=[])
        if way == "reconcile":  # deleted parcels are gone from every output, kept as tombstones
            tombstones = set(sqlite_table(trial.exports / "stats_db.sqlite",
                                          "deleted_parcels")["id"])
            assert len(tombstones) == 40
        temp_bytes += staging_left(trial.exports)
        with instance_at(trial.instance_dir) as instance:
            orphans += len(instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])))
        recovered += 1
        shutil.rmtree(trial.root)
    assert temp_bytes == 0, f"{temp_bytes} bytes of staging files left"
    assert orphans == 0
    reliability(suite="kill -9", case=label, trials=TRIALS, killed_mid_run=killed_mid_run,
                automatic_recoveries=recovered, manual_repairs=0, orphan_runs_left=orphans,
                temp_bytes_left=temp_bytes, corrupt_files=0, lost_or_extra_rows=0)


def test_two_syncs_of_overlapping_windows_at_once_are_safe(template, tmp_path, reliability):
    """Two CLI syncs started together on a new DAGSTER_HOME (its storage created first, as
    scripts/demo.sh does): the output databases serialize them, newer wins, and the outputs
    equal the source."""
    trial = Trial(template, tmp_path / "both", synced=False)
    env = {**os.environ, "DAGSTER_HOME": str(trial.instance_dir), "PYTHONPATH": str(ROOT),
           "COUNTYSYNC_SOURCE_URL": trial.url, "COUNTYSYNC_EXPORT_DIR": str(trial.exports)}
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)
    runs = [subprocess.Popen(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "countysync_assets.definitions",
         "--select", "group:parcels", "--partition-range", span], cwd=RUN_DIR, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for span in (f"{FIRST_KEY}...2026-05-30", f"2026-05-29...{LAST_KEY}")]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output[-3000:]
    assert_outputs_match_source(trial.url, trial.exports, KEYS, file_keys=KEYS[:-1])
    reliability(suite="concurrency", case="two overlapping syncs at once", trials=1,
                outcome="both succeed, outputs equal the source")
