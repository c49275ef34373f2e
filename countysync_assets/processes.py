"""Whether a process that left a trace (a run's events, a staging file) still runs."""

import psutil


def process_alive(pid: int, since: float) -> bool:
    """Whether ``pid`` still runs and is the process that acted at ``since`` (unix seconds),
    not a newer one that got the same number after a restart."""
    try:
        return psutil.Process(pid).create_time() <= since + 1
    except psutil.NoSuchProcess:
        return False
