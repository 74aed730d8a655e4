"""Admission control: a bounded number of running upscales, a bounded waiting queue, and a
bounded wait.

Without it, a burst of uploads would all start at once, each holding its decoded image and its
16x larger output in memory, and every one of them would finish late. With it, at most
`max_concurrency` run, at most `max_queue` wait, and the rest are refused straight away so the
client can retry elsewhere or later. A queue of a few large images can still mean a long wait on
a slow host (8 images of 4.6 minutes each on a 2-core CPU: over half an hour), so each request
also brings the estimate of its own work, and a request whose estimated wait for a slot (what is
left of the work running, and the work queued before it) passes its `max_wait` is refused with
the time after which that wait would be short enough.

The gate lives on the event loop and is used only from coroutines: it never crosses into the
worker threads, which only ever see work that has already been admitted.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.exceptions import OverloadedError


class AdmissionGate:
    """Limits concurrent work and the number of requests waiting for it.

    Args:
        max_concurrency: Holders of a slot at the same time.
        max_queue: Requests allowed to wait for a slot; more are refused.
        retry_after_seconds: Suggested client back-off carried by `OverloadedError`.
        busy_message: What `OverloadedError` tells the client.
    """

    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        retry_after_seconds: int = 5,
        busy_message: str = "server is busy; retry later",
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be positive, got {max_concurrency}")
        if max_queue < 0:
            raise ValueError(f"max_queue must not be negative, got {max_queue}")
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self._retry_after_seconds = retry_after_seconds
        self._busy_message = busy_message
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0
        self._queued_seconds = 0.0
        #: The estimated seconds and the start of each slot held.
        self._running: dict[object, tuple[float, float]] = {}

    @property
    def waiting(self) -> int:
        """Requests queued for a slot now."""
        return self._waiting

    def estimated_wait(self) -> float:
        """Seconds a request arriving now would wait for a slot: none while one is free, else
        what is left of the running work's estimates plus the queued work's, shared by the
        slots. Work that overruns its estimate counts as about to end."""
        if not self._slots.locked():
            return 0.0
        now = time.monotonic()
        left = sum(max(0.0, work - (now - at)) for work, at in self._running.values())
        return max(0.0, left + self._queued_seconds) / self._max_concurrency

    def _check_wait(self, max_wait: float | None) -> None:
        wait = self.estimated_wait()
        if max_wait is None or wait <= max_wait:
            return
        # The wait shrinks by a second a second (no new work goes before this request).
        retry = max(1, math.ceil(wait - max_wait))
        raise OverloadedError(
            retry,
            f"the estimated wait for a free slot is {wait:.0f} s, more than this service's "
            f"limit of {max_wait:g} s; retry in {retry} s",
        )

    @asynccontextmanager
    async def slot(
        self, seconds: float = 0.0, *, max_wait: float | None = None
    ) -> AsyncIterator[None]:
        """Holds one slot for the duration of the `async with` block, waiting if needed.

        Args:
            seconds: The estimated duration of this work, counted in the waits of later ones.
            max_wait: Refuse, rather than queue, when the estimated wait is longer (None: any
                wait the queue allows).

        Raises:
            OverloadedError: If no slot is free and the queue is full (Retry-After:
                `retry_after_seconds`), or the estimated wait passes `max_wait` (Retry-After:
                when it no longer would).
        """
        # No await separates these checks from taking the semaphore or joining the queue, so
        # the decision cannot race with other coroutines on the same loop.
        if self._slots.locked() and self._waiting >= self._max_queue:
            raise OverloadedError(self._retry_after_seconds, self._busy_message)
        self._check_wait(max_wait)
        self._waiting += 1
        self._queued_seconds += seconds
        try:
            # A client that gives up while waiting cancels this await, which leaves the queue.
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self._queued_seconds -= seconds
        token = object()
        self._running[token] = (seconds, time.monotonic())
        try:
            yield
        finally:
            del self._running[token]
            self._slots.release()
