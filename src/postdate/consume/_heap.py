"""The garbage collector of a worker process, set for thousands of held deliveries.

A worker holds each delivery from the ladder's lead until its due time: a burst keeps
thousands of them alive at once, each a few hundred objects (frames, headers, x-death
tables, tasks). CPython's default thresholds (700, 10, 10) then run full collections
that find nothing to free, each longer than the last as the heap grows. In a burst of
20,000 commands they took 1.1-1.8 s of the worker's time with prefetch 5,000 (pauses up
to 0.5 s), 2.2 s with prefetch 20,000 (one pause 0.6 s); with these thresholds, 0.1-0.3
s. Garbage without cycles is freed at once either way (reference counting).
"""

from __future__ import annotations

import gc

# Young collections every 50,000 net allocations instead of 700; a middle one every 50 of
# them, a full one every 100 middle ones (and only when the heap grew by a quarter).
WORKER_GC_THRESHOLDS = (50_000, 50, 100)


def tune_for_worker() -> None:
    """Freeze what exists now (modules, the app, settings) out of the collector's scans
    and set :data:`WORKER_GC_THRESHOLDS`. For a process that runs a worker: ``postdate
    worker`` and :func:`postdate.consume._worker.run` call it after loading the app."""
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
