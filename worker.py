"""`dramatiq worker:broker`: the app (for its configuration and database), its broker and actors."""

import contextlib
import ctypes
import ctypes.util

from tasks.runtime import calm_garbage_collector
from webapp import create_app


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives every thread that allocates its own malloc arena; a worker's dispatch threads then
    hold several mostly empty arenas each. Two arenas keep a worker's resident memory flat."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
            ctypes.CDLL(libc_name).mallopt(-8, arenas)  # M_ARENA_MAX


_limit_malloc_arenas()
app = create_app()
broker = app.extensions["crier.workers"].broker
calm_garbage_collector()  # after start-up: what exists now stays out of collections
