"""What the host offers and how to write to it safely: the CPUs this process may use, and
atomic file writes.

Shared by the service, the benchmarks and the training package (which may import from the
service, never the reverse). Standard library only.
"""

from __future__ import annotations

import contextlib
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
