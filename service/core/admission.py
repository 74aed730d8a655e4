"""Admission control: a bounded number of running upscales and a bounded waiting queue.

Without it, a burst of uploads would all start at once, each holding its decoded image and its
16x larger output in memory, and every one of them would finish late. With it, at most
`max_concurrency` run, at most `max_queue` wait, and the rest are refused straight away so the
client can retry elsewhere or later.

The gate lives on the event loop and is used only from coroutines: it never crosses into the
worker threads, which only ever see work that has already been admitted.
"""

from __future__ import annotations

import asyncio
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
        self._max_queue = max_queue
        self._retry_after_seconds = retry_after_seconds
        self._busy_message = busy_message
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Requests queued for a slot now."""
        return self._waiting

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Holds one slot for the duration of the `async with` block, waiting if needed.

        Raises:
            OverloadedError: If no slot is free and the queue is full.
        """
        # No await separates this check from taking the semaphore or joining the queue, so the
        # decision cannot race with other coroutines on the same loop.
        if self._slots.locked() and self._waiting >= self._max_queue:
            raise OverloadedError(self._retry_after_seconds, self._busy_message)
        self._waiting += 1
        try:
            # A client that gives up while waiting cancels this await, which leaves the queue.
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()
