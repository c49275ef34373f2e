"""An ``OutputSet`` in a second process, so a big run writes on both cores.

The run's process sends each batch to the second process (a bounded queue: at most two
batches in flight), which writes its formats while the run writes the others. Publishing
stays all or nothing: the run asks it to stage, stages its own outputs, and only when both
have staged does either commit. Each process watches the other: if the run is killed, the
second process ends too (the next run removes its staging files, as a killed run's); if the
second process dies or fails, the run fails with its error and every output stays as it was.
"""

import contextlib
import multiprocessing
import os
import pickle
import queue
import threading
import time
import traceback
from collections.abc import Collection
from typing import Any

import pandas as pd
from dagster import Failure

from countysync_assets.io_managers.format_io_manager import OutputTarget
from countysync_assets.io_managers.output_transactions import OutputError
from countysync_assets.memory import freeze_loaded_objects, give_back_freed_batches

IN_FLIGHT = 2  # batches queued for the second process: bounds the memory both hold
LOOK_SECONDS = 1.0  # how often a waiting side checks that the other still runs


class ChildTraceback(Exception):
    """Where an unexpected error was raised in the second process (its traceback as text)."""


class OutputProcess:
    """The run's side: sends batches and requests, raises the second process's errors."""

    def __init__(self, manager: Any, targets: list[OutputTarget], only: Collection[str]):
        context = multiprocessing.get_context("spawn")  # forking a threaded process can hang
        # a message per output of a batch: two batches. Bounded at two messages, the run's
        # process waited whenever the other was busy with one output (a first sync of
        # 1,000,000 parcels: 5.2 s blocked sending, 0.02 s now, for +20 MB peak RSS)
        self.inbox = context.Queue(maxsize=IN_FLIGHT * max(len(targets), 1))
        self.outbox = context.Queue()
        settings = {name: getattr(manager, name) for name in type(manager).model_fields}
        self.only = list(only)
        self.process = context.Process(
            target=serve, name="countysync-output-writer", daemon=True,
            args=(type(manager), settings, targets, self.only, self.inbox, self.outbox,
                  os.getpid()))
        self.process.start()

    def write(self, name: str, frame: pd.DataFrame) -> None:
        self._send(("write", name, frame))

    def ask(self, request: str) -> None:
        """Send ``stage`` or ``commit``; ``answer`` waits for the result."""
        self._send((request,))

    def commit(self) -> None:
        """Publish what the second process staged (it then ends by itself)."""
        self.ask("commit")
        self.answer()
        self.close()

    def answer(self) -> Any:
        while True:
            try:
                kind, payload = self.outbox.get(timeout=LOOK_SECONDS)
            except queue.Empty:
                self._check_alive()
                continue
            return _result(kind, payload)

    def rollback(self) -> None:
        """Tell the second process to discard what it staged, and wait for it to end."""
        if self.process.is_alive():
            try:
                self.inbox.put(("rollback",), timeout=LOOK_SECONDS)
            except queue.Full:  # it is stuck on a batch: its staging files are its own
                self.process.terminate()
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.close()

    def close(self) -> None:
        """Let go of the queues: batches it will never read must not hold this process at
        its exit (a queue waits to flush what was put in it)."""
        self.inbox.cancel_join_thread()
        self.inbox.close()
        self.outbox.close()

    def _send(self, message: tuple) -> None:
        while True:
            with contextlib.suppress(queue.Empty):  # a failure it reported ends the run now
                _result(*self.outbox.get_nowait())
            try:
                self.inbox.put(message, timeout=LOOK_SECONDS)
                return
            except queue.Full:
                self._check_alive()

    def _check_alive(self) -> None:
        """Raise what the second process reported before it ended, or that it died."""
        if not self.process.is_alive():
            with contextlib.suppress(queue.Empty):
                _result(*self.outbox.get(timeout=LOOK_SECONDS))
            raise OutputError(
                f"The process writing the {', '.join(self.only)} outputs (pid "
                f"{self.process.pid}) ended unexpectedly (exit code {self.process.exitcode}: "
                "out of memory?). No output was changed; run the sync again, or set "
                "COUNTYSYNC_PARALLEL_ROWS=0 to write every output in the run's process.")


def serve(manager_class: type, settings: dict, targets: list[OutputTarget], only: list[str],
          inbox: Any, outbox: Any, parent: int) -> None:
    """The second process: an ``OutputSet`` of the formats ``only``, fed from ``inbox``,
    answering ``stage``, ``commit`` and ``rollback`` on ``outbox``."""
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    give_back_freed_batches()
    freeze_loaded_objects()
    manager = manager_class(**settings)
    outputs = None
    try:
        with manager.explained(f"the sync's {', '.join(only)} outputs"):
            outputs = manager.open_outputs(targets, only=only)
            while (message := inbox.get())[0] == "write":
                outputs.write(message[1], message[2])
            if message[0] == "stage":
                outbox.put(("done", outputs.stage()))
                message = inbox.get()
            if message[0] == "commit":
                outputs.commit()
                outbox.put(("done", None))
            else:
                outputs.rollback()
    except BaseException as err:  # every error goes back to the run
        if outputs is not None:
            outputs.rollback()
        outbox.put(("failed", _portable(err)))


def _end_with(parent: int) -> None:
    """End this process as soon as the run's process is gone (killed): what it staged is
    never published, and the next run removes its staging files (``remove_stale_temps``).
    A thread, because the main one may wait forever on a message the run died writing."""
    while os.getppid() == parent:
        time.sleep(LOOK_SECONDS)
    os._exit(1)


def _result(kind: str, payload: Any) -> Any:
    """An answer's payload, or the error the second process reported, raised here."""
    if kind == "failed":
        error, where = payload
        raise error from (ChildTraceback(where) if where else None)
    return payload


def _portable(err: BaseException) -> tuple[BaseException, str | None]:
    """The error as the run can raise it, with its traceback unless it is a clear message (a
    Dagster ``Failure`` names the problem and what to do)."""
    where = None if isinstance(err, Failure) else traceback.format_exc()
    try:
        return pickle.loads(pickle.dumps(err)), where
    except Exception:  # an error class that cannot travel
        return RuntimeError(f"{type(err).__name__}: {err}"), where
