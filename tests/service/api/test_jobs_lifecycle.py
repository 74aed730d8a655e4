"""The jobs' life around the service's own: a stop while jobs run and wait, a cancel or delete
that lands between a job's claim and its start, how many places of the admission queue waiting
jobs take, start-up that cannot take the jobs folder, and webhooks left over from a run whose
secret is gone. Against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.core.jobs.service import READY_POLL_SECONDS, STORE_ERROR_DETAIL
from service.core.jobs.store import JobRecord, JobStatus, JobStore, NewJob
from service.exceptions import SettingsError
from tests.service.api.jobs_helpers import SLOW_DELAY, job_models, submit, wait_job
from tests.service.helpers import png_bytes
from tests.web.live import LiveServer, slow_model, time_limit, tiny_settings


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    with time_limit(90):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return job_models(tmp_path_factory.mktemp("job-models"))


def _settings(models: Path, jobs_dir: Path, **overrides: Any) -> Any:
    return tiny_settings(
        None,
        models_dir=models,
        default_model="fast",
        jobs_dir=jobs_dir,
        engine="onnxruntime",
        **overrides,
    )


def _records(jobs_dir: Path) -> dict[str, tuple[str, int, float | None]]:
    """Each job's (status, attempts, started), read from the database as the stop left it (a
    `JobStore` would recover it first)."""
    with sqlite3.connect(jobs_dir / "jobs.sqlite3") as db:
        rows = db.execute("SELECT id, status, attempts, started FROM jobs").fetchall()
    return {job_id: (status, attempts, started) for job_id, status, attempts, started in rows}


def test_a_stop_puts_the_running_job_back_uncounted_and_claims_nothing_more(
    models: Path, tmp_path: Path
) -> None:
    jobs_dir = tmp_path / "jobs"
    with slow_model(models / "slow.onnx", SLOW_DELAY) as slow:
        with LiveServer(create_app(_settings(models, jobs_dir))) as live:
            slow_job = {"model": "slow"}
            running = submit(live, png_bytes(64, 64, seed=30), params=slow_job).json()["id"]
            queued = [
                submit(live, png_bytes(8, 8, seed=seed), params=slow_job).json()["id"]
                for seed in (31, 32)
            ]
            wait_job(live, running, lambda j: (j["progress"]["tiles_done"] or 0) >= 1)
        live._thread.join(timeout=30)  # the stop has returned
        assert not live._thread.is_alive()
        calls = slow.calls
        time.sleep(3 * SLOW_DELAY)
        assert slow.calls == calls, "a model call ran after the stop returned"
    records = _records(jobs_dir)
    assert records[running] == ("queued", 0, None)  # back in the queue, the start uncounted
    assert [records[job_id] for job_id in queued] == [("queued", 0, None)] * 2


@pytest.mark.parametrize("action", ["cancel", "delete"])
def test_a_cancel_or_delete_between_claim_and_start_is_not_lost(
    models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    action: str,
) -> None:
    with (
        slow_model(models / "slow.onnx", SLOW_DELAY) as slow,
        LiveServer(create_app(_settings(models, tmp_path / "jobs"))) as live,
    ):
        store = live.app.state.context.jobs.store
        claim = store.claim_next

        def claim_then_interrupt() -> JobRecord | None:
            # The client's cancel (or DELETE) commits right after the claim, before the runner
            # has registered the job: there is no running pipeline yet to tell.
            record = claim()
            if record is not None and record.model == "slow":
                getattr(store, action)(record.owner, record.id)
            return record

        monkeypatch.setattr(store, "claim_next", claim_then_interrupt)
        calls = slow.calls  # (the warm-up's)
        job = submit(live, png_bytes(64, 64, seed=33), params={"model": "slow"}).json()
        # The next job runs once the interrupted one has let its slot go.
        after = submit(live, png_bytes(8, 8, seed=34)).json()
        assert wait_job(live, after["id"], lambda j: j["status"] == "succeeded")
        assert slow.calls == calls, "the interrupted job ran"
        answer = httpx.get(f"{live.url}/jobs/{job['id']}")
    if action == "cancel":
        assert answer.json()["status"] == "canceled" and answer.json()["started_at"] is not None
    else:
        assert answer.status_code == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_jobs_waiting_for_a_slot_take_one_place_of_the_queue(models: Path, tmp_path: Path) -> None:
    """Two slots held by direct upscales and one job queued: the job takes one place of the
    admission queue (not one per idle worker), so a direct upscale still finds a place."""
    settings = _settings(models, tmp_path / "jobs", max_concurrency=2, max_queue=2)
    with (
        slow_model(models / "slow.onnx", SLOW_DELAY),
        LiveServer(create_app(settings)) as live,
        ThreadPoolExecutor(3) as pool,
    ):
        gate = live.app.state.context.lifecycle.serving.gate

        def direct(model: str, seed: int) -> httpx.Response:
            return httpx.post(
                f"{live.url}/upscale",
                content=png_bytes(48, 48, seed=seed),
                params={"model": model},
                headers={"Content-Type": "image/png"},
                timeout=60,
            )

        busy = [pool.submit(direct, "slow", seed) for seed in (40, 41)]
        deadline = time.monotonic() + 30
        while gate.estimated_wait() == 0:  # (none while a slot is free) both slots are held
            assert time.monotonic() < deadline
            time.sleep(0.01)
        job = submit(live, png_bytes(8, 8, seed=42)).json()
        while gate.waiting < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # room for a second (wrong) waiter to show up
        assert gate.waiting == 1
        third = pool.submit(direct, "fast", 43)
        assert third.result().status_code == 200, third.result().text
        assert [answer.result().status_code for answer in busy] == [200, 200]
        assert wait_job(live, job["id"], lambda j: j["status"] == "succeeded")


def test_start_up_fails_clearly_on_a_jobs_folder_in_use_and_stops_what_it_started(
    models: Path, tmp_path: Path
) -> None:
    held = JobStore(tmp_path / "jobs", retention_seconds=60, max_bytes=10**8)  # another's
    app = create_app(_settings(models, tmp_path / "jobs"))

    async def start_up() -> None:
        async with app.router.lifespan_context(app):
            pass

    try:
        with pytest.raises(SettingsError, match="in use by another process"):
            asyncio.run(start_up())
    finally:
        held.close()
    assert app.state.context.lifecycle.serving is None  # the models' lifecycle was stopped


def test_webhooks_left_undelivered_without_a_secret_are_recorded_as_failed(
    models: Path, tmp_path: Path
) -> None:
    """A run with UPSCALER_WEBHOOK_SECRET stopped before a delivery; the next has none."""
    jobs_dir = tmp_path / "jobs"
    store = JobStore(jobs_dir, retention_seconds=60, max_bytes=10**8)
    hook = {"webhook": "http://127.0.0.1:9/h", "webhook_events": ("completed",)}
    new = NewJob("", "hooked", png_bytes(8, 8), "fast", "standard", "image/png", 8, 8, 4, **hook)
    record, _ = store.submit(new)
    store.claim_next()
    store.succeed(record.key, b"result", {})
    store.close()
    with LiveServer(create_app(_settings(models, jobs_dir))) as live:
        job = wait_job(live, "hooked", lambda j: "completed" in j["webhook"]["deliveries"], 10)
    outcome = job["webhook"]["deliveries"]["completed"]
    assert outcome["status"] == "failed" and "UPSCALER_WEBHOOK_SECRET" in outcome["detail"]


def _full_disk(*args: Any) -> Any:
    raise sqlite3.OperationalError("database or disk is full")


def test_a_claim_that_fails_is_tried_again_after_a_pause_not_in_a_loop(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LiveServer(create_app(_settings(models, tmp_path / "jobs"))) as live:
        store = live.app.state.context.jobs.store
        claim, tries = store.claim_next, []

        def full_disk() -> Any:
            tries.append(time.monotonic())
            _full_disk()

        monkeypatch.setattr(store, "claim_next", full_disk)
        job = submit(live, png_bytes(8, 8, seed=50)).json()
        while not tries:
            time.sleep(0.01)
        time.sleep(1.0)
        tried = len(tries)
        monkeypatch.setattr(store, "claim_next", claim)
        # A pause of READY_POLL_SECONDS between tries (without it: thousands a second).
        assert tried <= 1 + 1.0 / READY_POLL_SECONDS + 1
        assert wait_job(live, job["id"], lambda j: j["status"] == "succeeded")


@pytest.mark.parametrize("failing", ["succeed", "by_key"])
def test_a_store_error_while_a_job_ends_fails_it_and_the_runner_goes_on(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """`succeed` fails in the job's thread, `by_key` in the runner on the event loop (the
    first read, before the job starts): either way the job ends failed, not `running` until
    a restart counts it as a crash, and the next job runs."""
    with LiveServer(create_app(_settings(models, tmp_path / "jobs"))) as live:
        store = live.app.state.context.jobs.store
        real = getattr(store, failing)
        broken: list[object] = []

        def fails_once(*args: Any) -> Any:
            if not broken:
                broken.append(args)
                _full_disk()
            return real(*args)

        monkeypatch.setattr(store, failing, fails_once)
        job = submit(live, png_bytes(8, 8, seed=51)).json()
        ended = wait_job(live, job["id"], lambda j: j["status"] not in ("queued", "running"))
        assert (ended["status"], ended["detail"]) == ("failed", STORE_ERROR_DETAIL)
        after = submit(live, png_bytes(8, 8, seed=52)).json()
        assert wait_job(live, after["id"], lambda j: j["status"] == "succeeded")


def test_a_stop_does_not_wait_for_the_thread_a_direct_upscale_holds(
    models: Path, tmp_path: Path
) -> None:
    """A job claimed while a direct upscale holds the last worker thread waits for it; a stop
    then puts the job back at once instead of waiting for that upscale to end."""
    jobs_dir = tmp_path / "jobs"
    live = LiveServer(create_app(_settings(models, jobs_dir)))
    holder = object()  # the direct upscale (the seam: its thread's token, held by the test)
    with live:
        loop = live.app.state.context.jobs._loop
        limiter = live.app.state.context.lifecycle.serving.limiter
        asyncio.run_coroutine_threadsafe(limiter.acquire_on_behalf_of(holder), loop).result(10)
        job = submit(live, png_bytes(8, 8, seed=53)).json()
        wait_job(live, job["id"], lambda j: j["status"] == "running")  # claimed, waiting
    stopped = not live._thread.is_alive()
    if not stopped:  # let it end
        loop.call_soon_threadsafe(limiter.release_on_behalf_of, holder)
        live._thread.join(30)
    assert stopped, "the stop waited for the direct upscale's thread"
    assert _records(jobs_dir)[job["id"]] == ("queued", 0, None)


def test_a_dispatcher_that_gets_its_slot_during_the_drain_starts_no_job(
    models: Path, tmp_path: Path
) -> None:
    with (
        slow_model(models / "slow.onnx", SLOW_DELAY),
        LiveServer(create_app(_settings(models, tmp_path / "jobs"))) as live,
        ThreadPoolExecutor(1) as pool,
    ):
        context = live.app.state.context
        gate = context.lifecycle.serving.gate
        direct = pool.submit(
            httpx.post,
            f"{live.url}/upscale",
            content=png_bytes(48, 48, seed=54),
            params={"model": "slow"},
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while gate.estimated_wait() == 0:  # (none while the slot is free) the upscale holds it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        job = submit(live, png_bytes(8, 8, seed=55)).json()
        while gate.waiting < 1:  # the dispatcher waits for the slot with the job
            assert time.monotonic() < deadline
            time.sleep(0.01)
        context.lifecycle.drain.begin()  # SIGTERM
        assert direct.result().status_code == 200

        async def take_the_slot() -> None:
            async with gate.slot():  # after the dispatcher, which queued for it first
                pass

        asyncio.run_coroutine_threadsafe(take_the_slot(), context.jobs._loop).result(30)
        assert context.jobs.store.get("", job["id"]).status is JobStatus.QUEUED


def test_a_delete_that_removes_the_input_before_the_job_reads_it_is_no_failure(
    models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with LiveServer(create_app(_settings(models, tmp_path / "jobs"))) as live:
        store = live.app.state.context.jobs.store
        read = store.read_input

        def deleted_first(record: JobRecord) -> bytes:
            # The DELETE commits and removes the folder before its cancel reaches the job.
            store.delete(record.owner, record.id)
            monkeypatch.setattr(store, "read_input", read)
            return read(record)

        monkeypatch.setattr(store, "read_input", deleted_first)
        job = submit(live, png_bytes(8, 8, seed=56)).json()
        after = submit(live, png_bytes(8, 8, seed=57)).json()
        assert wait_job(live, after["id"], lambda j: j["status"] == "succeeded")
        assert httpx.get(f"{live.url}/jobs/{job['id']}").status_code == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
