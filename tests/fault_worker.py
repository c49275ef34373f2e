"""One sync operation in a process of its own, for test_faults.py to kill -9 at any moment.

    python tests/fault_worker.py MODE INSTANCE_DIR SOURCE_URL EXPORT_DIR [CURSOR_FILE]

MODE ``sensor`` ticks the change sensor and runs what it requests until it asks for nothing,
keeping the cursor in CURSOR_FILE as the daemon keeps it in its storage (written before the
runs start); ``reconcile`` runs the delete check; ``backfill`` syncs every demo partition in
one run, as a single-run backfill does.
"""

import sys
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.in_process import InProcessSync


def main(mode: str, instance_dir: str, url: str, exports: str, cursor_file: str = "") -> int:
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(instance_dir))
    cursor_path = Path(cursor_file) if cursor_file else None
    cursor = cursor_path.read_text() if cursor_path and cursor_path.exists() else None
    sync = InProcessSync(MasterParcelsSource(url=url), Path(exports), instance, cursor)
    if mode == "reconcile":
        return 0 if sync.reconcile() else 1
    if mode == "backfill":
        return 0 if sync.sync_range("2026-05-28", "2026-05-31") else 1
    while (result := sync.tick()).run_requests:
        cursor_path.write_text(sync.cursor)
        if not all(sync.run(result)):
            return 1
    cursor_path.write_text(sync.cursor)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
