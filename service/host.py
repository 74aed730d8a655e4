"""What the host offers and how to use it well: the CPUs this process may use, a bound on
glibc's malloc arenas, and atomic file writes.

Shared by the service, the benchmarks and the training package (which may import from the
service, never the reverse). Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: glibc's `mallopt` parameter for the most malloc arenas (`M_ARENA_MAX` in malloc.h).
_M_ARENA_MAX = -8
#: The arenas the service's processes allow. glibc's default is 8 per core, and each thread that
#: allocates may get its own, whose freed memory it keeps: under a long mixed workload
#: (scripts/soak.py, 3 x 600 requests) `python -m service` grew 646 -> 833 MB with the default
#: and stayed at 572 -> 586 MB with two.
MALLOC_ARENAS = 2
#: Where glibc reads the bound at start-up; an operator's own value there is left alone.
ARENA_ENVIRONMENT = "MALLOC_ARENA_MAX"
ARENA_TUNABLE = "glibc.malloc.arena_max"


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Bounds this process's glibc malloc arenas, as `MALLOC_ARENA_MAX` would, with `mallopt`.

    The arenas made before the call stay, and once a process has made 8 glibc settles on its own
    bound for good, so the entry points call this first, before any import starts threads
    (`python -m service`, `uvicorn service.main:app`, `upscale --local`); processes that others
    start with threads of their own (Ray replicas) get `MALLOC_ARENA_MAX` in their environment
    instead. A `MALLOC_ARENA_MAX` (or
    `GLIBC_TUNABLES`) already set is the operator's choice, which glibc has applied: left alone.

    Returns:
        Whether this call set the bound (False: set already, or not glibc).
    """
    if ARENA_ENVIRONMENT in os.environ or ARENA_TUNABLE in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc (macOS has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary sibling of `path` to write; renames it over `path` on success.

    A reader (or a process restarting) never sees half a file: it sees the old one or the new
    one. The temporary keeps the suffix of `path`, for writers that choose the format by it
    (Keras' `model.save`). On failure the temporary is removed and `path` is left alone.
    """
    target = Path(path)
    # Unique per process and thread, so that concurrent writers of one path never share it;
    # hidden, so that a folder scan (the models folder) never takes it for a file.
    tmp = target.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Writes `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
