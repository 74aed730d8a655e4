"""`uvicorn service.main:app`: the stable name of the ASGI entry point (`service.entry.server`).

The app is built from the environment when uvicorn asks for it, not when this module is
imported, so a bad setting fails start-up with its message instead of a traceback at import.
Before that, this process's malloc arenas are bounded (`service.host.limit_malloc_arenas`), while
no thread of the service runs yet.
"""

from __future__ import annotations

from typing import Any

from service.host import limit_malloc_arenas


def __getattr__(name: str) -> Any:
    if name == "app":
        limit_malloc_arenas()
        from service.entry.server import asgi_app

        return asgi_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
