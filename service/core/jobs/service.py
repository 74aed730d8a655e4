"""`JobService`: the one owner of the jobs, from submit to expiry, on the app's event loop.

- **Workers** (one per `UPSCALER_MAX_CONCURRENCY` slot) wait until the models are ready, take a
  slot of the same admission gate and thread limiter as `POST /upscale` (jobs and direct
  upscales share the cores, never oversubscribe them), claim the oldest queued job and run the
  model's pipeline in a worker thread, with a cancel event the tiler checks before each model
  call and a `JobProgress` it reports each stitched tile to.
- **Cancel** marks the record at once; the running pipeline stops before its next tile and the
  worker takes the next job. **Stop** (the app's shutdown) puts running jobs back in the queue,
  uncounted, so a graceful restart loses nothing; a crash is handled by `JobStore` at start.
- **Changes** (status, tiles) wake the event streams through one asyncio event, replaced at
  each change: a watcher re-reads its job and sends it if it changed, so bursts coalesce.
- **Expiry** runs every few seconds (`JobStore.expire`); a result past its time is refused at
  once even before that (`result_file`).
- **Webhooks**: `start` once, `completed` retried with exponential backoff on 429, 5xx and
  network errors; each outcome recorded on the job; deliveries cut short by a stop are made
  again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from service.config import Settings
from service.core.choice import Choice, select
from service.core.jobs import webhooks
from service.core.jobs.progress import JobProgress
from service.core.jobs.store import JobRecord, JobStatus, JobStore, NewJob
from service.core.lifecycle import ModelLifecycle, Serving
from service.core.pipeline import Quality, UpscaleResult
from service.core.urlfetch import UrlFetcher
from service.exceptions import (
    ClientDisconnectedError,
    JobNotFoundError,
    OverloadedError,
    SettingsError,
    UpscalerError,
    UrlFetchError,
    UrlRefusedError,
)
from service.imaging.encode import OutputFormat

logger = logging.getLogger(__name__)

#: How often a worker looks again while the models are not ready.
READY_POLL_SECONDS = 0.5
#: Longest pause between two expiry sweeps.
EXPIRY_SWEEP_SECONDS = 30.0


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


@dataclass
class _Running:
    """A job in a worker thread: what stops it, and how far it got."""

    cancel: threading.Event = field(default_factory=threading.Event)
    progress: JobProgress | None = None
    #: The service is stopping: the job goes back to the queue instead of being canceled.
    stopping: bool = False


class _Wakeup:
    """Tells idle workers that jobs were queued, without losing a wake-up that comes while a
    worker is finding the queue empty (the generation says whether one came)."""

    def __init__(self) -> None:
        self.generation = 0
        self.event = asyncio.Event()

    def notify(self) -> None:
        self.generation += 1
        self.event.set()

    def clear_if(self, generation: int) -> None:
        if generation == self.generation:
            self.event.clear()


def result_facts(
    result: UpscaleResult, choice: Choice, quality: Quality, tiles: int
) -> dict[str, Any]:
    """What a job keeps about its result: what `/upscale` says in its headers."""
    model = choice.model
    info = model.engine.info
    return {
        "model": model.name,
        "evidence": choice.describe(),
        "choose_ms": round(choice.seconds * 1000, 1),
        "model_version": model.version,
        "provider": info.provider,
        "engine": info.engine,
        "device": info.device,
        "precision": info.precision,
        "quality": quality.value,
        "media_type": result.output_format.media_type,
        "input_size": [result.input_width, result.input_height],
        "output_size": [result.output_width, result.output_height],
        "decode_ms": round(result.decode_seconds * 1000, 1),
        "model_ms": round(result.inference_seconds * 1000, 1),
        "encode_ms": round(result.encode_seconds * 1000, 1),
        "tiles": tiles,
    }


class JobService:
    """The jobs of one app (see the module docstring).

    Args:
        settings: JOBS_DIR, retention, size cap and the webhook settings.
        lifecycle: The models (readiness, gates, pipelines).
        fetcher: Delivers webhooks under the same address rules as image_url.
        clock: Wall-clock time (tests move it forward).
    """

    def __init__(
        self,
        settings: Settings,
        lifecycle: ModelLifecycle,
        fetcher: UrlFetcher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.jobs_dir is not None
        self.settings = settings
        self.lifecycle = lifecycle
        self.fetcher = fetcher
        self.clock = clock
        self._store: JobStore | None = None
        self._running: dict[str, _Running] = {}
        self._change = asyncio.Event()
        self._notify_scheduled = False
        self._wakeup = _Wakeup()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        secret = settings.webhook_secret
        self._webhook_key = (
            None if secret is None else webhooks.secret_key(secret.get_secret_value())
        )

    @property
    def store(self) -> JobStore:
        assert self._store is not None, "JobService.start() has not run"
        return self._store

    @property
    def webhooks_enabled(self) -> bool:
        return self._webhook_key is not None

    # --- start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the store (recovering what a crash left) and starts the workers, the expiry
        sweep and the deliveries a stop cut short.

        Raises:
            SettingsError: If JOBS_DIR or its database cannot be opened (start-up fails).
        """
        settings = self.settings
        folder = settings.jobs_dir
        assert folder is not None
        self._loop = asyncio.get_running_loop()
        try:
            self._store = await anyio.to_thread.run_sync(
                lambda: JobStore(
                    folder,
                    retention_seconds=settings.job_retention_seconds,
                    max_bytes=settings.jobs_max_bytes,
                    clock=self.clock,
                )
            )
        except (OSError, sqlite3.Error) as exc:
            raise SettingsError(f"UPSCALER_JOBS_DIR {folder} cannot be used: {exc}") from exc
        for _ in range(settings.max_concurrency):
            self._spawn(self._work())
        self._spawn(self._sweep())
        for record in await anyio.to_thread.run_sync(self.store.undelivered):
            self._spawn(self._deliver(record, "completed"))
        self._wakeup.notify()

    async def stop(self) -> None:
        """Puts running jobs back in the queue, stops every task and closes the store."""
        for running in self._running.values():
            running.stopping = True
            running.cancel.set()
        # The workers requeue their jobs as the pipelines stop (at the next tile).
        deadline = time.monotonic() + 10
        while self._running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._store is not None:
            self._store.close()
            self._store = None

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- changes and what clients see -------------------------------------------------------

    def _changed(self) -> None:
        self._notify_scheduled = False
        event, self._change = self._change, asyncio.Event()
        event.set()

    def _changed_from_thread(self) -> None:
        # Tiles finish in worker threads; a burst of them costs one wake-up of the loop.
        if not self._notify_scheduled and self._loop is not None:
            self._notify_scheduled = True
            self._loop.call_soon_threadsafe(self._changed)

    def describe(self, record: JobRecord) -> dict[str, Any]:
        """The job as `GET /jobs/{id}` shows it (see docs/api.md, Jobs)."""
        running = self._running.get(record.key)
        facts = dict(record.facts)
        progress = running.progress if running is not None else None
        if progress is not None:
            done, total = progress.tiles_done, progress.tiles_total or None
        elif record.status is JobStatus.SUCCEEDED:
            done = total = facts.get("tiles")
        else:
            done, total = 0, None
        expires = None
        if record.finished is not None and record.status is JobStatus.SUCCEEDED:
            expires = record.finished + self.store.retention_seconds
        ended = record.finished if record.status.terminal else None
        return {
            "id": record.id,
            "status": record.status.value,
            "model": record.model,
            "quality": record.quality,
            "metadata": "keep" if record.keep_metadata else "strip",
            "output_format": record.media_type,
            "input": {
                "width": record.input_width,
                "height": record.input_height,
                "bytes": record.input_bytes,
            },
            "progress": {"tiles_done": done, "tiles_total": total},
            "queue_position": self.store.queue_position(record),
            "created_at": _iso(record.created),
            "started_at": _iso(record.started),
            "finished_at": _iso(ended),
            "expires_at": _iso(expires),
            "expired": record.expired is not None,
            "attempts": record.attempts,
            "timings": _timings(record, facts),
            "result": _result_view(record, facts),
            "detail": record.detail,
            "webhook": _webhook_view(record),
        }

    async def watch(self, owner: str, job_id: str, heartbeat: float) -> AsyncIterator[Any]:
        """The job's views, one per change, until it ends; None after `heartbeat` seconds
        without a change (for keep-alives). Stops when the job is deleted.

        Raises:
            JobNotFoundError: If the owner has no such job (at the start).
        """
        last: dict[str, Any] | None = None
        while True:
            change = self._change
            try:
                record = self.store.get(owner, job_id)
            except JobNotFoundError:
                if last is None:
                    raise
                return  # deleted while watched
            view = self.describe(record)
            if view != last:
                yield view
                last = view
            if record.status.terminal:
                return
            try:
                await asyncio.wait_for(change.wait(), heartbeat)
            except TimeoutError:
                yield None

    # --- what clients do ------------------------------------------------------------------

    async def submit(self, new: NewJob) -> tuple[JobRecord, bool]:
        """Stores a job (see `JobStore.submit`) and wakes a worker.

        Raises:
            JobConflictError, JobStoreFullError: See `JobStore.submit`.
        """
        record, created = await anyio.to_thread.run_sync(self.store.submit, new)
        if created:
            self._wakeup.notify()
            self._changed()
        return record, created

    async def cancel(self, owner: str, job_id: str) -> JobRecord:
        """Cancels the job: at once when queued, before its next tile when running.

        Raises:
            JobNotFoundError: If the owner has no such job.
        """
        before = self.store.get(owner, job_id)
        record = await anyio.to_thread.run_sync(self.store.cancel, owner, job_id)
        running = self._running.get(record.key)
        if running is not None:
            running.cancel.set()
        if not before.status.terminal:
            self._changed()
            self._announce(record)
        return record

    async def delete(self, owner: str, job_id: str) -> None:
        """Removes the job and its files (stopping it first if it runs).

        Raises:
            JobNotFoundError: If the owner has no such job.
        """
        record = await anyio.to_thread.run_sync(self.store.delete, owner, job_id)
        running = self._running.get(record.key)
        if running is not None:
            running.cancel.set()
        self._changed()

    def preview(self, owner: str, job_id: str) -> bytes | None:
        """The running job's finished tiles as a PNG (`JobProgress.preview_png`), or None.

        Raises:
            JobNotFoundError: If the owner has no such job.
        """
        record = self.store.get(owner, job_id)
        running = self._running.get(record.key)
        # A canceled job's thread may still finish its tile: the record says it has ended.
        if record.status is not JobStatus.RUNNING or running is None or running.progress is None:
            return None
        return running.progress.preview_png()

    def result(self, owner: str, job_id: str) -> tuple[JobRecord, Any]:
        """The job and its result file.

        Raises:
            JobNotFoundError, ResultNotReadyError, ResultExpiredError: See `JobStore`.
        """
        record = self.store.get(owner, job_id)
        return record, self.store.result_file(record)

    # --- the workers ------------------------------------------------------------------------

    async def _ready(self) -> Serving:
        while True:
            if self.lifecycle.readiness().ready and self.lifecycle.serving is not None:
                return self.lifecycle.serving
            await asyncio.sleep(READY_POLL_SECONDS)

    async def _work(self) -> None:
        while True:
            await self._wakeup.event.wait()
            serving = await self._ready()
            try:
                generation = self._wakeup.generation
                # The next job's estimate goes into the gate, so that direct upscales see
                # their wait behind it (`AdmissionGate.estimated_wait`).
                seconds = _estimate(serving, self.store.peek_next())
                async with serving.gate.slot(seconds):
                    record = await anyio.to_thread.run_sync(self.store.claim_next)
                    if record is None:
                        self._wakeup.clear_if(generation)
                        continue
                    await self._run(serving, record)
            except OverloadedError:
                # Direct upscales fill the slots and their queue: the job waits its turn.
                await asyncio.sleep(READY_POLL_SECONDS)
            except Exception:
                # The store failing (a disk error): this worker must outlive it.
                logger.exception("jobs: the worker met an error; it goes on")
                await asyncio.sleep(READY_POLL_SECONDS)

    async def _run(self, serving: Serving, record: JobRecord) -> None:
        running = _Running()
        self._running[record.key] = running
        self._changed()
        self._announce(record)
        try:
            with self.lifecycle.metrics.inflight.track_inprogress():
                await anyio.to_thread.run_sync(
                    self._execute, serving, record, running, limiter=serving.limiter
                )
        finally:
            del self._running[record.key]
            self._changed()
        ended = await anyio.to_thread.run_sync(self.store.by_key, record.key)
        # A cancel announced its own end; a deleted job has none to announce.
        if ended is not None and ended.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            self._announce(ended)

    def _execute(self, serving: Serving, record: JobRecord, running: _Running) -> None:
        """Runs one job in a worker thread and stores how it ended."""
        store = self.store
        quality = Quality(record.quality)
        try:
            selection = select(serving.models, record.model)
            passes = 8 if quality is Quality.MAX else 1
            progress = JobProgress(selection.pipeline.scale, passes, self._changed_from_thread)
            running.progress = progress
            data = store.read_input(record)
            output_format = OutputFormat(record.media_type.removeprefix("image/"))
            choice, result = selection.run(
                data,
                output_format,
                quality,
                running.cancel,
                progress,
                keep_metadata=record.keep_metadata,
            )
        except ClientDisconnectedError:  # the cancel event: a client, or the service stopping
            if running.stopping:
                store.requeue(record.key)
            else:
                store.settle(record.key, JobStatus.CANCELED, "canceled by the client")
            return
        except UpscalerError as exc:  # the input, or a model no longer served
            store.settle(record.key, JobStatus.FAILED, exc.detail)
            return
        except Exception:
            logger.exception("job %s failed", record.id)
            store.settle(record.key, JobStatus.FAILED, "internal error while upscaling")
            return
        self.lifecycle.metrics.observe_upscale(
            result.input_pixels, result.output_pixels, result.inference_seconds, choice.model.name
        )
        facts = result_facts(result, choice, quality, progress.tiles_total)
        try:
            store.succeed(record.key, result.content, facts)
        except OSError as exc:  # a full disk, say: the job fails, the worker goes on
            logger.error("job %s: its result cannot be stored: %s", record.id, exc)
            detail = f"the result could not be stored ({exc.strerror or exc})"
            store.settle(record.key, JobStatus.FAILED, detail)

    async def _sweep(self) -> None:
        interval = min(EXPIRY_SWEEP_SECONDS, max(self.store.retention_seconds / 4, 0.2))
        while True:
            expired, forgotten = await anyio.to_thread.run_sync(self.store.expire)
            if expired or forgotten:
                logger.info("jobs: %d result(s) expired, %d job(s) forgotten", expired, forgotten)
                self._changed()
            await asyncio.sleep(interval)

    # --- webhooks ---------------------------------------------------------------------------

    def _announce(self, record: JobRecord) -> None:
        """Sends the webhook event this record's status calls for, if the job asked for it."""
        event = "completed" if record.status.terminal else "start"
        if record.status is JobStatus.QUEUED:
            return
        if record.webhook and event in record.webhook_events and self.webhooks_enabled:
            self._spawn(self._deliver(record, event))

    async def _deliver(self, record: JobRecord, event: str) -> None:
        """Delivers one event, retrying `completed` with exponential backoff; records each
        outcome on the job (`webhook.deliveries` in its view)."""
        assert self._webhook_key is not None and record.webhook is not None
        settings = self.settings
        attempts = settings.webhook_max_attempts if event == "completed" else 1
        message_id = f"msg_{record.key}_{event}"
        body = webhooks.message(event, self.describe(record), self.clock())
        for attempt in range(1, attempts + 1):
            timestamp = int(self.clock())
            headers = webhooks.signed_headers(self._webhook_key, message_id, timestamp, body)
            status, detail = await self._post(record.webhook, body, headers)
            delivered = status is not None and 200 <= status < 300
            retry = not delivered and attempt < attempts and webhooks.worth_retrying(status)
            outcome = "delivered" if delivered else ("retrying" if retry else "failed")
            await self._record_delivery(record, event, outcome, attempt, status, detail)
            if not retry:
                return
            await asyncio.sleep(settings.webhook_retry_seconds * 2 ** (attempt - 1))

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None]:
        try:
            status = await anyio.to_thread.run_sync(self.fetcher.post, url, body, headers)
        except (UrlFetchError, UrlRefusedError) as exc:
            return None, exc.detail
        return status, None

    async def _record_delivery(
        self,
        record: JobRecord,
        event: str,
        outcome: str,
        attempt: int,
        status: int | None,
        detail: str | None,
    ) -> None:
        current = await anyio.to_thread.run_sync(self.store.by_key, record.key)
        if current is None:
            return  # deleted meanwhile
        state = dict(current.webhook_state)
        state[event] = {
            "status": outcome,
            "attempts": attempt,
            "response_status": status,
            "detail": detail,
            "at": _iso(self.clock()),
        }
        await anyio.to_thread.run_sync(self.store.set_webhook_state, record.key, state)
        self._changed()


def _estimate(serving: Serving, record: JobRecord | None) -> float:
    """Estimated model seconds of a queued job (0 when none, or its model is gone)."""
    if record is None:
        return 0.0
    try:
        selection = select(serving.models, record.model)
    except UpscalerError:
        return 0.0
    quality = Quality(record.quality)
    return selection.estimate_seconds(record.input_width, record.input_height, quality)


def _timings(record: JobRecord, facts: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds queued and running, and the result's decode / model / encode times."""
    queued = None if record.started is None else (record.started - record.created) * 1000
    run = None
    if record.started is not None and record.finished is not None:
        run = (record.finished - record.started) * 1000
    return {
        "queued_ms": None if queued is None else round(queued, 1),
        "run_ms": None if run is None else round(run, 1),
        **{name: facts.get(name) for name in ("decode_ms", "model_ms", "encode_ms")},
    }


def _result_view(record: JobRecord, facts: dict[str, Any]) -> dict[str, Any] | None:
    if record.status is not JobStatus.SUCCEEDED or record.expired is not None:
        return None
    width, height = facts.get("output_size", [None, None])
    return {
        "media_type": facts.get("media_type", record.media_type),
        "bytes": record.result_bytes,
        "width": width,
        "height": height,
        "model": facts.get("model"),
        "model_version": facts.get("model_version"),
        "engine": facts.get("engine"),
        "device": facts.get("device"),
        "precision": facts.get("precision"),
        "provider": facts.get("provider"),
    }


def _webhook_view(record: JobRecord) -> dict[str, Any] | None:
    if record.webhook is None:
        return None
    return {
        "url": record.webhook,
        "events": list(record.webhook_events),
        "deliveries": dict(record.webhook_state),
    }
