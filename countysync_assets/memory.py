"""Memory settings of the processes that run countysync: freed batch memory given back to the
system, so a long sync's footprint stays that of a batch; and the objects loaded at start-up
kept out of Python's full garbage collections.

glibc's malloc serves a large block from its own mapping and returns it at ``free``, but
after the first such free it raises that threshold to the block's size (up to 32 MB), so a
sync's later batch columns (a few MB each) come from the heap, which keeps what they leave
behind. A fixed threshold keeps every block of 1 MB and more in its own mapping: measured
on a first sync of 1,000,000 parcels, both processes' peak 909 MB against 936-942 MB; of
2,000,000, 950 MB against 972 MB, and the run's process after the second one ended 685 MB
against 750-777 MB.
"""

import ctypes
import gc

M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def give_back_freed_batches() -> None:
    """Set glibc's fixed mmap threshold for this process (a no-op where the C library has no
    ``mallopt``, as musl's); looked up among the symbols the process already has loaded."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def freeze_loaded_objects() -> None:
    """Move every object loaded so far (Dagster, pandas, GDAL's bindings, the definitions) to
    Python's permanent generation, as ``gc.freeze`` is meant for: they live as long as the
    process, and each full collection walked all of them again (0.12 s of a 0.2 s sensor
    tick, and of a 1,000-row sync's run). Garbage already unreachable is not collected first:
    that would be one such walk at every start."""
    gc.freeze()
