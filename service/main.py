"""`uvicorn service.main:app`: the stable name of the ASGI entry point (`service.entry.server`).

The app is built from the environment when uvicorn asks for it, not when this module is
imported, so a bad setting fails start-up with its message instead of a traceback at import.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from service.entry.server import asgi_app

        return asgi_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
