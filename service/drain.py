"""Graceful drain: what SIGTERM starts before the server stops (see `service.__main__`).

`Drain` is one flag and one counter, both used from the event loop only: `begin()` turns
`/readyz` into 503 `draining` and new uploads into 503 with Retry-After, while the requests
already in flight (`active`, counted by `service.logs.RequestContextMiddleware`) finish.
"""

from __future__ import annotations


class Drain:
    """Whether the service is draining, and how many requests are in flight (probes aside)."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0

    def begin(self) -> None:
        """Stops accepting new work; safe to call from a signal handler (sets a flag only)."""
        self.draining = True

    def enter(self) -> None:
        """A request started."""
        self.active += 1

    def exit(self) -> None:
        """A request ended."""
        self.active -= 1
