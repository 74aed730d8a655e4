"""The job store on its own: recovery after crashes, expiry, the size cap, one process per
folder, reads beside writes, and the tiler's progress reports that the jobs' progress and
preview are built on."""

from __future__ import annotations

import gc
import sqlite3
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.core.jobs import store as store_module
from service.core.jobs.progress import JobProgress
from service.core.jobs.store import MAX_STARTS, SCHEMA_VERSION, JobStatus, JobStore, NewJob
from service.core.tiling import AxisSpan, TileSpan, upscale_tiled
from service.exceptions import JobStoreFullError, ResultExpiredError, SettingsError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store(folder: Path, clock: Clock | None = None, max_bytes: int = 10**8) -> JobStore:
    return JobStore(folder, retention_seconds=60, max_bytes=max_bytes, clock=clock or Clock())


def _new(data: bytes = b"image", job_id: str | None = None, side: int = 2) -> NewJob:
    return NewJob("", job_id, data, "m", "standard", "image/png", side, side, 4)


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
    first, second = _new(b"12345"), _new(b"1234")
    store = _store(tmp_path, clock, max_bytes=first.result_bound + len(first.data))
    record, _ = store.submit(first)
    store.claim_next()
    store.succeed(record.key, b"x" * first.result_bound, {})  # a result as large as can be
    clock.now += 20
    with pytest.raises(JobStoreFullError) as refused:
        store.submit(second)
    assert refused.value.retry_after_seconds == 40  # when the result expires
    assert "room for its result" in refused.value.detail
    assert len(list((tmp_path / "files").iterdir())) == 1  # the refused input is gone


def test_the_size_cap_reserves_room_for_results_not_yet_written(tmp_path: Path) -> None:
    # A 256x256 input makes a 1024x1024 result: up to 4.1 MB for a tiny input file.
    job = _new(b"small input", side=256)
    assert job.result_bound > 4 * 1024 * 1024
    store = _store(tmp_path, max_bytes=job.result_bound + len(job.data) + 100)
    record, _ = store.submit(job)
    with pytest.raises(JobStoreFullError):
        store.submit(_new(b"another", side=256))  # room for both inputs, not both results
    store.claim_next()
    assert store.succeed(record.key, b"a small result", {})  # its real size replaces the room
    assert store.submit(_new(b"another", side=256))[1]


def test_a_second_store_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    first = _store(tmp_path)
    with pytest.raises(SettingsError, match="in use by another process"):
        _store(tmp_path)
    first.close()
    _store(tmp_path).close()  # free once the first is closed


def test_reads_do_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record, _ = store.submit(_new())
    # (The pool outside: a read that waited would time out, end the write, then finish.)
    with ThreadPoolExecutor(1) as pool, store._transaction() as db:  # the writer mid-commit
        db.execute("UPDATE jobs SET detail='not committed yet'")
        seen = pool.submit(store.get, "", record.id).result(timeout=10)
    assert seen.detail is None  # the last commit's view


def test_a_new_job_folder_is_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(store_module, "_fsync_dir", synced.append)
    record, _ = _store(tmp_path).submit(_new())
    assert synced[0] == tmp_path / "files" and tmp_path / "files" / record.key in synced


def test_an_older_database_is_brought_up_to_date_and_a_newer_one_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    done, _ = store.submit(_new(job_id="done"))
    store.claim_next()
    store.succeed(done.key, b"result", {})
    queued, _ = store.submit(_new(b"queued", job_id="queued", side=8))
    store.close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:  # as version 1 wrote it
        db.execute("ALTER TABLE jobs DROP COLUMN reserved_bytes")
        db.execute("PRAGMA user_version=1")
    store = _store(tmp_path)
    # The unfinished job gets the room its result needs (x4, the shipped models' scale).
    assert store.get("", "queued").reserved_bytes == queued.reserved_bytes > 8 * 8 * 16 * 4
    assert store.get("", "done").reserved_bytes == 0
    store.close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    for _ in range(2):  # the refused open let the folder go: the second meets the same refusal
        with pytest.raises(SettingsError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
            _store(tmp_path)


def test_a_database_that_a_rolled_back_service_marked_version_1_opens(tmp_path: Path) -> None:
    """Version 1 run on a version 2 database sets `user_version` back to 1 over the column it
    does not know: the upgrade is decided from the table, never adding the column twice."""
    store = _store(tmp_path)
    record, _ = store.submit(_new())
    store.close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.execute("PRAGMA user_version=1")
    store = _store(tmp_path)
    assert store.get("", record.id).reserved_bytes == record.reserved_bytes > 0
    store.close()


def test_a_result_larger_than_its_reservation_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path)
    record, _ = store.submit(_new(job_id="too-big"))
    store.claim_next()
    assert store.succeed(record.key, b"x" * (record.reserved_bytes + 1), {})
    assert "the result of job too-big takes" in caplog.text


def test_a_canceled_job_keeps_no_result(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record, _ = store.submit(_new())
    store.claim_next()
    canceled, changed = store.cancel("", record.id)
    assert changed and canceled.status is JobStatus.CANCELED
    assert store.cancel("", record.id) == (canceled, False)  # a second cancel changes nothing
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


def test_the_progress_lets_the_first_pass_output_go_when_the_pass_ends() -> None:
    """With quality=max, pass 0's full output must not live on through the other 7 passes."""
    progress = JobProgress(2, 8, lambda: None)
    output = np.zeros((8, 8, 3), dtype=np.uint8)
    alive = weakref.ref(output)
    progress(output, [], 1)  # pass 0 begins
    whole = _whole(4)
    progress(output, [whole], 1)  # ... and ends with its one tile
    del output
    gc.collect()
    assert alive() is None
    preview = progress.preview_png()  # the finished pass is still shown
    progress(np.zeros((8, 8, 3), dtype=np.uint8), [], 1)  # pass 1 begins
    assert progress.preview_png() == preview and progress.tiles_done == 1


def _whole(side: int) -> TileSpan:
    """One tile covering a `side` x `side` input whole."""
    axis = AxisSpan(0, 0, side)
    return TileSpan(axis, axis)
