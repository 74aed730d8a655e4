"""The tile micro-batcher: fixed-shape calls, every request gets exactly its own tiles back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import BatcherClosedError, TileBatcher

TILE = (4, 4, 3)


class RecordingModel:
    """Doubles every tile (so a tile's result identifies the tile) and records batch shapes."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.padding: list[bool] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=10)
        self.shapes.append(batch.shape)
        self.padding.append(bool((batch == 0).all(axis=(1, 2, 3)).any()))
        return batch * 2


def _tiles(count: int, first_id: int) -> np.ndarray:
    """Tiles filled with their own id, so results can be traced back."""
    ids = np.arange(first_id, first_id + count, dtype=np.float32)
    return np.broadcast_to(ids[:, None, None, None], (count, *TILE)).copy()


def test_concurrent_requests_get_exactly_their_own_tiles() -> None:
    model = RecordingModel()
    batcher = TileBatcher(model, batch_size=4, tile_shape=TILE, max_wait_seconds=0.002)

    def request(index: int) -> bool:
        with batcher.client():
            ok = True
            for group in range(5):
                count = 1 + (index + group) % 6  # groups of 1-6 tiles, split over batches
                first = index * 1000 + group * 10 + 1
                result = batcher.submit(_tiles(count, first)).result(timeout=20)
                ok &= np.array_equal(result, _tiles(count, first) * 2)
            return ok

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(request, range(16)))
    batcher.close()
    assert set(model.shapes) == {(4, *TILE)}  # only ever the one fixed shape
    stats = batcher.stats
    assert stats.tiles == sum(1 + (i + g) % 6 for i in range(16) for g in range(5))
    assert stats.slots == 4 * stats.batches and 0 < stats.fill <= 1


def test_tiles_of_concurrent_requests_share_a_batch() -> None:
    model = RecordingModel()
    # A long wait: the batch must run because it is full, not because the wait ran out.
    batcher = TileBatcher(model, batch_size=2, tile_shape=TILE, max_wait_seconds=30)
    with batcher.client(), batcher.client():
        first = batcher.submit(_tiles(1, 1))
        second = batcher.submit(_tiles(1, 2))
        assert np.array_equal(first.result(timeout=10), _tiles(1, 1) * 2)
        assert np.array_equal(second.result(timeout=10), _tiles(1, 2) * 2)
    batcher.close()
    assert batcher.stats.batches == 1 and batcher.stats.shared_batches == 1
    assert model.padding == [False]


def test_a_lone_request_never_waits_and_is_padded_with_zeros() -> None:
    model = RecordingModel()
    batcher = TileBatcher(model, batch_size=8, tile_shape=TILE, max_wait_seconds=60)
    with batcher.client():
        # With a 60 s wait this would time out if a lone client's partial batch waited.
        result = batcher.submit(_tiles(3, 1)).result(timeout=10)
    batcher.close()
    assert np.array_equal(result, _tiles(3, 1) * 2)
    assert model.shapes == [(8, *TILE)] and model.padding == [True]


def test_partial_batch_runs_when_the_wait_runs_out() -> None:
    batcher = TileBatcher(RecordingModel(), batch_size=8, tile_shape=TILE, max_wait_seconds=0.01)
    with batcher.client(), batcher.client():  # a second client that never sends anything
        result = batcher.submit(_tiles(2, 5)).result(timeout=10)
    batcher.close()
    assert np.array_equal(result, _tiles(2, 5) * 2)


def test_model_errors_reach_the_requests() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("CUDA out of memory")

    batcher = TileBatcher(broken, batch_size=2, tile_shape=TILE)
    future = batcher.submit(_tiles(5, 1))
    with pytest.raises(RuntimeError, match="out of memory"):
        future.result(timeout=10)
    # The batcher survives and keeps serving.
    with pytest.raises(RuntimeError):
        batcher.submit(_tiles(1, 1)).result(timeout=10)
    batcher.close()


def test_cancelled_work_is_skipped() -> None:
    gate = threading.Event()
    model = RecordingModel(gate)
    batcher = TileBatcher(model, batch_size=1, tile_shape=TILE)
    running = batcher.submit(_tiles(1, 1))  # blocks the worker on the gate
    queued = batcher.submit(_tiles(1, 2))
    assert queued.cancel()
    gate.set()
    running.result(timeout=10)
    batcher.close()
    assert batcher.stats.tiles == 1


def test_close_fails_queued_work_and_refuses_more() -> None:
    gate = threading.Event()
    model = RecordingModel(gate)
    batcher = TileBatcher(model, batch_size=1, tile_shape=TILE)
    running = batcher.submit(_tiles(1, 1))
    # Close only once the worker is inside the model with the first tile; otherwise both tiles
    # would still be queued and both rightly fail.
    assert model.entered.wait(timeout=10)
    queued = batcher.submit(_tiles(1, 2))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.set()
    closer.join(timeout=10)
    assert np.array_equal(running.result(timeout=10), _tiles(1, 1) * 2)
    with pytest.raises(BatcherClosedError):
        queued.result(timeout=10)
    with pytest.raises(BatcherClosedError):
        batcher.submit(_tiles(1, 3))


@pytest.mark.parametrize("shape", [(0, 4, 4, 3), (1, 4, 5, 3), (4, 4, 3)])
def test_wrong_tile_shapes_are_refused(shape: tuple[int, ...]) -> None:
    batcher = TileBatcher(RecordingModel(), batch_size=2, tile_shape=TILE)
    with pytest.raises(ValueError, match="tiles"):
        batcher.submit(np.zeros(shape, np.float32))
    batcher.close()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        TileBatcher(RecordingModel(), batch_size=0, tile_shape=TILE)
    with pytest.raises(ValueError):
        TileBatcher(RecordingModel(), batch_size=1, tile_shape=TILE, max_wait_seconds=-1)
