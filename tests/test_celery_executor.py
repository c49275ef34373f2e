"""Scale-out on an existing engine: with COUNTYSYNC_CELERY_BROKER set, a sync's steps run as
Celery tasks on the broker this machine already runs (RabbitMQ on 127.0.0.1:5672), executed by
a real ``dagster-celery worker`` process, and the outputs are what a local sync writes."""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import (
    AS_OF,
    DAYS,
    FIRST_KEY,
    LAST_KEY,
    clean_env,
    skip_or_fail_in_ci,
    stop_process_group,
)
from dagster import DagsterEventType, DagsterInstance
from output_checks import assert_outputs_match_source, partition_keys

from countysync_assets.demo_source import create_demo_source

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def celery_worker(tmp_path):
    """A dagster-celery worker on the local RabbitMQ, sharing the run's DAGSTER_HOME, in its
    own process group; stopped at the end."""
    if not rabbitmq_up():
        skip_or_fail_in_ci("RabbitMQ is not running on 127.0.0.1:5672")
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    source = tmp_path / "demo.sqlite"
    create_demo_source(f"sqlite:///{source}", rows=400, seed=12, as_of=AS_OF, days=DAYS)
    queue = f"countysync-test-{uuid.uuid4().hex[:8]}"  # no other worker on the broker takes it
    env = clean_env(COUNTYSYNC_DEMO_SOURCE_PATH=str(source),
                    COUNTYSYNC_EXPORT_DIR=str(tmp_path / "exports"),
                    COUNTYSYNC_CELERY_BROKER=BROKER, COUNTYSYNC_CELERY_BACKEND="rpc://",
                    COUNTYSYNC_CELERY_QUEUE=queue)
    env.update(DAGSTER_HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    (tmp_path / "celery.yaml").write_text(
        f"execution:\n  config:\n    broker: {BROKER}\n    backend: rpc://\n")
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [str(BIN / "dagster-celery"), "worker", "start", "-y", str(tmp_path / "celery.yaml"),
         "-A", "dagster_celery.app", "-l", "info", "-q", queue, "-n", queue],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while " ready." not in (tmp_path / "worker.log").read_text():
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the Celery worker did not start in 3 minutes"
        time.sleep(1)
    try:
        yield env, worker, source
    finally:
        stop_process_group(worker)
        log.close()


def test_a_sync_runs_its_steps_on_a_celery_worker(celery_worker, tmp_path, monkeypatch):
    env, worker, source = celery_worker  # the README's sync command, as demo.sh runs it
    result = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "countysync_assets.definitions",
         "--select", "group:parcels", "--partition-range", f"{FIRST_KEY}...{LAST_KEY}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    queue = env["COUNTYSYNC_CELERY_QUEUE"]
    assert f'Submitting celery task for step "parcel_sync" to queue "{queue}"' in result.stderr

    # the sync step ran in one of the worker's processes, not in the run's
    workers = {worker.pid, *(p.pid for p in psutil.Process(worker.pid).children(recursive=True))}
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])  # as the run's processes had it
    instance = DagsterInstance.get()
    run = instance.get_runs(limit=1)[0]
    started = {e.step_key: e.dagster_event.pid for e in instance.all_logs(
        run.run_id, of_type=DagsterEventType.STEP_START)}
    assert started["parcel_sync"] in workers
    assert run.status.value == "SUCCESS"
    instance.dispose()

    assert_outputs_match_source(f"sqlite:///{source}", tmp_path / "exports",
                                partition_keys(FIRST_KEY, LAST_KEY))
