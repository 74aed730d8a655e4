"""How many glibc malloc arenas a process has once several threads have allocated: the proof
that `service.host.limit_malloc_arenas` (or `MALLOC_ARENA_MAX`) is in force, since glibc has no
getter for the bound.

Each new thread that allocates gets an arena of its own up to the bound (glibc's default: 8 per
core), so with THREADS threads alive at once an unbounded process holds THREADS + 1 arenas and a
bounded one at most the bound. `malloc_info` lists one `<heap nr=...>` per arena.
"""

from __future__ import annotations

import subprocess
import sys

THREADS = 8

#: Python source that leaves the count in `arenas` (run with `exec`, here or in a Ray replica).
PROBE = f"""
import ctypes, os, tempfile, threading

def _count_arenas():
    libc = ctypes.CDLL(None)
    libc.fdopen.restype, libc.fdopen.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.TemporaryFile() as report:
        stream = libc.fdopen(os.dup(report.fileno()), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        report.seek(0)
        return report.read().count(b"<heap nr=")

def _arenas_with_threads():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    alive = threading.Barrier({THREADS} + 1)
    def allocate():
        block = libc.malloc(4096)
        alive.wait()  # every thread holds its block
        alive.wait()  # until counted
        libc.free(block)
    threads = [threading.Thread(target=allocate) for _ in range({THREADS})]
    for thread in threads:
        thread.start()
    alive.wait()
    try:
        return _count_arenas()
    finally:
        alive.wait()
        for thread in threads:
            thread.join()

arenas = _arenas_with_threads()
"""


def arenas_after(setup: str, env: dict[str, str] | None = None) -> int:
    """The arena count of a fresh Python process that ran `setup`, then the probe."""
    script = f"{setup}\n{PROBE}\nprint(arenas)"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1])
