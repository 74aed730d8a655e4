"""The job store on its own: recovery after crashes, expiry, the size cap, and the tiler's
progress reports that the jobs' progress and preview are built on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.jobs.progress import JobProgress
from service.core.jobs.store import MAX_STARTS, JobStatus, JobStore, NewJob
from service.core.tiling import upscale_tiled
from service.exceptions import JobStoreFullError, ResultExpiredError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store(folder: Path, clock: Clock | None = None, max_bytes: int = 10**6) -> JobStore:
    return JobStore(folder, retention_seconds=60, max_bytes=max_bytes, clock=clock or Clock())


def _new(data: bytes = b"image", job_id: str | None = None) -> NewJob:
    return NewJob("", job_id, data, "m", "standard", "image/png", 2, 2)


def test_a_job_cut_short_runs_again_and_fails_after_the_second_crash(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record, _ = store.submit(_new())
    for start in range(1, MAX_STARTS + 1):
        claimed = store.claim_next()
        assert claimed is not None and claimed.attempts == start
        store.close()  # the process dies with the job running
        store = _store(tmp_path)
    after = store.get("", record.id)
    assert after.status is JobStatus.FAILED and store.recovered.failed == 1
    assert "stopped 2 times while this job ran" in (after.detail or "")
    assert not (tmp_path / "files" / record.key / "input").exists()


def test_a_graceful_stop_puts_the_job_back_uncounted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.submit(_new())
    claimed = store.claim_next()
    assert claimed is not None
    store.requeue(claimed.key)
    again = store.claim_next()
    assert again is not None and again.attempts == 1


def test_a_folder_without_record_is_removed_at_start(tmp_path: Path) -> None:
    store = _store(tmp_path)
    kept, _ = store.submit(_new())
    orphan = tmp_path / "files" / "cut-short"
    orphan.mkdir()
    (orphan / "input").write_bytes(b"half")
    store.close()
    reopened = _store(tmp_path)
    assert reopened.recovered.orphans == 1 and not orphan.exists()
    assert reopened.read_input(kept) == b"image"


def test_a_result_written_before_a_crash_is_not_served(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record, _ = store.submit(_new())
    store.claim_next()
    # The result file is renamed into place, then the process dies before the commit.
    (tmp_path / "files" / record.key / "result").write_bytes(b"complete but uncommitted")
    store.close()
    store = _store(tmp_path)
    again = store.get("", record.id)
    assert again.status is JobStatus.QUEUED and again.result_bytes == 0


def test_results_expire_then_jobs_are_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    record, _ = store.submit(_new())
    store.claim_next()
    assert store.succeed(record.key, b"result", {})
    assert store.result_file(store.get("", record.id)).read_bytes() == b"result"
    clock.now += 61
    assert store.expire() == (1, 0)
    with pytest.raises(ResultExpiredError):
        store.result_file(store.get("", record.id))
    clock.now += 24 * 3600
    assert store.expire() == (0, 1)
    assert not (tmp_path / "files" / record.key).exists()


def test_the_size_cap_counts_inputs_and_results(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock, max_bytes=10)
    record, _ = store.submit(_new(b"12345"))
    store.claim_next()
    store.succeed(record.key, b"1234567", {})
    clock.now += 20
    with pytest.raises(JobStoreFullError) as refused:
        store.submit(_new(b"1234"))
    assert refused.value.retry_after_seconds == 40  # when the result expires
    assert len(list((tmp_path / "files").iterdir())) == 1  # the refused input is gone


def test_a_canceled_job_keeps_no_result(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record, _ = store.submit(_new())
    store.claim_next()
    store.cancel("", record.id)
    assert not store.succeed(record.key, b"too late", {})
    assert not (tmp_path / "files" / record.key / "result").exists()


def test_the_tiler_reports_every_tile_and_the_preview_covers_them() -> None:
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    changes: list[int] = []
    progress = JobProgress(2, 1, lambda: changes.append(progress.tiles_done))

    def model(batch: np.ndarray) -> np.ndarray:
        return batch.repeat(2, axis=1).repeat(2, axis=2)

    upscale_tiled(image, model, scale=2, tile_size=12, overlap=2, progress=progress)
    assert changes[0] == 0 and changes[-1] == progress.tiles_total == len(changes) - 1 > 1
    assert progress.preview_png() is not None
