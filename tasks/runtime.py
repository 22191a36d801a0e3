"""Process-level tuning shared by the long-running processes that must keep a pace (workers, sandbox)."""

from __future__ import annotations

import gc

GC_THRESHOLDS = (20_000, 20, 20)


def calm_garbage_collector() -> None:
    """Keep full garbage collections short and rare; call once start-up is done.

    A full collection walks every tracked object the process holds, the whole of its imported
    libraries included, and stops all its threads meanwhile, long enough for sends to wake too late
    for their rate-limit slots (docs/decisions.md). Freezing what exists
    after start-up keeps it out of every later collection; larger thresholds make collections rarer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
