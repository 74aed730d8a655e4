"""A micro-batcher: tiles of concurrent requests share fixed-shape model calls.

On a GPU one call on 8 tiles costs little more than a call on one, so a request whose image
leaves a half-empty last batch, or a burst of small images of one tile each, wastes most of
each call on zero padding. The batcher sits in front of the model: requests submit groups of
tiles and get futures back; one worker thread packs queued tiles, from any request, into
batches of exactly `batch_size` tiles (the rest zero-padded, so the model only ever sees its one
warmed-up shape), runs the model and hands every request exactly its own upscaled tiles.

A batch that is not full waits for more tiles only while another request is upscaling (one
could add tiles soon), and never longer than `max_wait_seconds` after its oldest tile was
queued: a lone request never waits, and no tile waits more than that bound before its batch
starts. With `batch_size=1` (the CPU default) every batch is full at once and nothing waits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """Tiles were submitted to, or still queued in, a batcher that has been closed."""


@dataclass(eq=False)
class _Work:
    """One submitted group of tiles and where its results go."""

    tiles: np.ndarray
    future: Future[np.ndarray]
    queued_at: float
    taken: int = 0  # tiles handed to a batch so far
    finished: int = 0  # tiles whose results are in
    result: np.ndarray | None = None
    failed: bool = False

    @property
    def remaining(self) -> int:
        return len(self.tiles) - self.taken


@dataclass
class BatchStats:
    """What the batcher has done, for /readyz and the benchmarks.

    Attributes:
        batches: Model calls made.
        tiles: Real tiles run (excluding zero padding).
        slots: Tiles the calls had room for (`batches * batch_size`).
        shared_batches: Calls that carried tiles of more than one submission.
    """

    batches: int = 0
    tiles: int = 0
    slots: int = 0
    shared_batches: int = 0

    @property
    def fill(self) -> float | None:
        """Fraction of batch slots that held real tiles."""
        return None if self.slots == 0 else self.tiles / self.slots


@dataclass
class _Slice:
    work: _Work
    offset: int
    count: int


@dataclass
class _State:
    queue: deque[_Work] = field(default_factory=deque)
    queued_tiles: int = 0
    clients: int = 0
    closed: bool = False


class TileBatcher:
    """Runs tiles submitted by concurrent requests in fixed-shape batches on one worker thread.

    Args:
        run_batch: The model: float32 (batch_size, *tile_shape) in, (batch_size, ...) out. It
            always gets the same array, refilled for each call, so it must not keep it.
        batch_size: Tiles per model call.
        tile_shape: Shape of one input tile, (height, width, channels).
        max_wait_seconds: Longest a partial batch waits for tiles of other requests.
        name: Name of the worker thread.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        batch_size: int,
        tile_shape: tuple[int, int, int],
        max_wait_seconds: float = 0.0,
        name: str = "tile-batcher",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_wait_seconds < 0:
            raise ValueError(f"max_wait_seconds must not be negative, got {max_wait_seconds}")
        self._run_batch = run_batch
        self._batch_size = batch_size
        self._tile_shape = tuple(tile_shape)
        self._max_wait = max_wait_seconds
        self._state = _State()
        self._condition = threading.Condition()
        self._stats = BatchStats()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def batch_size(self) -> int:
        """Tiles per model call."""
        return self._batch_size

    @property
    def max_wait_seconds(self) -> float:
        """Longest a partial batch waits for more tiles."""
        return self._max_wait

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters."""
        with self._condition:
            return BatchStats(**vars(self._stats))

    @contextlib.contextmanager
    def client(self) -> Iterator[None]:
        """Marks a request as upscaling for the duration of the block.

        Partial batches only wait for more tiles while more than one client is active.
        """
        with self._condition:
            self._state.clients += 1
        try:
            yield
        finally:
            with self._condition:
                self._state.clients -= 1
                self._condition.notify_all()

    def submit(self, tiles: np.ndarray) -> Future[np.ndarray]:
        """Queues tiles for upscaling.

        Args:
            tiles: float32 array of shape (k, *tile_shape), k >= 1; any k (larger groups are
                split over several batches).

        Returns:
            A future of the k upscaled tiles, in the order given.

        Raises:
            ValueError: If the tiles do not have the batcher's tile shape.
            BatcherClosedError: If the batcher is closed.
        """
        tiles = np.asarray(tiles, dtype=np.float32)
        if tiles.ndim != 4 or tiles.shape[1:] != self._tile_shape or len(tiles) == 0:
            raise ValueError(
                f"expected (k >= 1, {', '.join(map(str, self._tile_shape))}) tiles, "
                f"got shape {tiles.shape}"
            )
        future: Future[np.ndarray] = Future()
        with self._condition:
            if self._state.closed:
                raise BatcherClosedError("the tile batcher is closed")
            self._state.queue.append(_Work(tiles, future, time.monotonic()))
            self._state.queued_tiles += len(tiles)
            self._condition.notify_all()
        return future

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """Submits tiles and waits for them (a blocking `submit`)."""
        return self.submit(tiles).result()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stops the worker once the current batch is done; still-queued tiles fail."""
        with self._condition:
            self._state.closed = True
            self._condition.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _should_wait(self) -> bool:
        state = self._state
        return (
            not state.closed
            and state.queued_tiles < self._batch_size
            and state.clients > 1
            and self._max_wait > 0
        )

    def _take(self) -> list[_Slice]:
        """Removes up to batch_size tiles from the head of the queue (lock held)."""
        slices: list[_Slice] = []
        room = self._batch_size
        queue = self._state.queue
        while queue and room:
            work = queue[0]
            if work.failed:
                # An earlier batch with part of this work failed; its future holds the error.
                queue.popleft()
                self._state.queued_tiles -= work.remaining
                continue
            if work.taken == 0 and not work.future.set_running_or_notify_cancel():
                # Cancelled before any of it ran (its request gave up): drop it.
                queue.popleft()
                self._state.queued_tiles -= work.remaining
                continue
            count = min(room, work.remaining)
            slices.append(_Slice(work, work.taken, count))
            work.taken += count
            self._state.queued_tiles -= count
            room -= count
            if work.remaining == 0:
                queue.popleft()
        return slices

    def _next_batch(self) -> list[_Slice] | None:
        """Blocks until there is work; None once closed and drained of running work."""
        with self._condition:
            state = self._state
            while True:
                while not state.queue and not state.closed:
                    self._condition.wait()
                if state.closed:
                    self._fail_queued()
                    return None
                deadline = state.queue[0].queued_at + self._max_wait
                while state.queue and self._should_wait():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
                slices = self._take()
                if slices:
                    return slices

    def _fail_queued(self) -> None:
        while self._state.queue:
            work = self._state.queue.popleft()
            if not work.future.done():
                if work.taken == 0:
                    work.future.set_running_or_notify_cancel()
                if not work.future.done():
                    work.future.set_exception(BatcherClosedError("the tile batcher was closed"))
        self._state.queued_tiles = 0

    def _serve(self) -> None:
        batch = np.zeros((self._batch_size, *self._tile_shape), dtype=np.float32)
        while (slices := self._next_batch()) is not None:
            live = [piece for piece in slices if not piece.work.failed]
            position = 0
            for piece in live:
                batch[position : position + piece.count] = piece.work.tiles[
                    piece.offset : piece.offset + piece.count
                ]
                position += piece.count
            # Zero padding keeps the one warmed-up shape (and keeps earlier tiles out of it).
            batch[position:] = 0
            try:
                upscaled = np.asarray(self._run_batch(batch))
            except Exception as exc:  # the model's failure belongs to the requests, not to us
                logger.exception("model call on a batch of %d tile(s) failed", position)
                for piece in live:
                    piece.work.failed = True
                    if not piece.work.future.done():
                        piece.work.future.set_exception(exc)
                continue
            self._record(position, len({id(piece.work) for piece in live}))
            self._deliver(live, upscaled)

    def _record(self, tiles: int, submissions: int) -> None:
        with self._condition:
            self._stats.batches += 1
            self._stats.tiles += tiles
            self._stats.slots += self._batch_size
            self._stats.shared_batches += submissions > 1

    @staticmethod
    def _deliver(slices: list[_Slice], upscaled: np.ndarray) -> None:
        position = 0
        for piece in slices:
            work = piece.work
            part = upscaled[position : position + piece.count]
            position += piece.count
            if work.result is None:
                work.result = np.empty((len(work.tiles), *part.shape[1:]), dtype=part.dtype)
            work.result[piece.offset : piece.offset + piece.count] = part
            work.finished += piece.count
            if work.finished == len(work.tiles) and not work.future.done():
                work.future.set_result(work.result)
