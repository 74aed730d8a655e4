"""`JobService`: the one owner of the jobs, from submit to expiry, on the app's event loop.

- **The dispatcher** waits until the models are ready, then for a slot of the same admission
  gate as `POST /upscale` (jobs and direct upscales share the cores, never oversubscribe them),
  with the next job's estimate: only that one job waits in the gate's queue, however many slots
  are idle, so direct upscales see one place taken and the wait it really adds. With the slot
  it starts a **runner**, which claims the oldest queued job and runs the model's pipeline in a
  worker thread of the same thread limiter, with a cancel event the tiler checks before each
  model call and a `JobProgress` it reports each stitched tile to.
- **Cancel** marks the record at once; the running pipeline stops before its next tile and its
  slot goes to the next job. **Stop** (the app's shutdown, however it comes: SIGTERM, Ctrl-C)
  first stops claiming, then cancels each running job before its next tile and waits for its
  thread, which puts the job back in the queue uncounted (a job still waiting for a worker
  thread, which a direct upscale may hold for minutes, goes back at once); the store closes
  once no thread uses it. So a graceful restart loses nothing; a crash is handled by
  `JobStore` at start.
- **Changes** (status, tiles) wake the event streams through one asyncio event, replaced at
  each change: a watcher re-reads its job and sends it if it changed, so bursts coalesce.
- **Expiry** runs every few seconds (`JobStore.expire`); a result past its time is refused at
  once even before that (`result_file`).
- **Webhooks**: `start` once, `completed` retried with exponential backoff on 429, 5xx and
  network errors; each outcome recorded on the job; deliveries cut short by a stop are made
  again at the next start. They have their own connections and at most `WEBHOOK_CONCURRENCY`
  at once, so that slow receivers never hold up fetches of `image_url`; at most
  `HOST_CONCURRENCY` of them, and `MAX_WAITING_PER_HOST` waiting, for one receiver host, so that
  a dead receiver cannot hold up the others'. A `completed` held back for want of room is left
  `retrying`, and the expiry sweep sends it once there is room.
- **Errors of the store** (a full disk) never leave a job `running` until the next start: the
  runner tries once to fail it, and no task ends with an exception nobody sees.
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
from urllib.parse import urlsplit

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
#: Webhook deliveries made at once: each holds a thread and a connection for up to
#: UPSCALER_URL_TIMEOUT_SECONDS.
WEBHOOK_CONCURRENCY = 4
#: Deliveries waiting (for a turn, or to retry) at most; past it, an event is held back (see
#: `JobService._hold_back`), so that slow receivers cannot grow the service without bound.
MAX_WAITING_DELIVERIES = 256
#: The same for the deliveries to one receiver host: one dead receiver cannot take all the room.
MAX_WAITING_PER_HOST = 64
#: Deliveries made at once to one receiver host: the other turns stay free for other hosts.
HOST_CONCURRENCY = 2
#: The detail of a job whose end could not be stored (the store failed: a full disk, say).
STORE_ERROR_DETAIL = "internal error while storing the job"


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
    #: Around the wait for a worker thread, which `stop` ends: a direct upscale may hold the
    #: last one for minutes.
    waiting: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def stop(self) -> None:
        """The service stops: the job goes back to the queue, before its next tile or before
        it gets a thread at all. Called on the event loop (the cancel scope belongs to it)."""
        self.stopping = True
        self.cancel.set()
        self.waiting.cancel()


@dataclass
class _Receiver:
    """The deliveries to one receiver host: how many wait or are made, and its turns."""

    waiting: int = 0
    turns: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(HOST_CONCURRENCY)
    )


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
        settings: JOBS_DIR, retention, size cap, and the webhook and URL settings (webhooks
            are delivered under the address rules of image_url).
        lifecycle: The models (readiness, gates, pipelines).
        clock: Wall-clock time (tests move it forward).
    """

    def __init__(
        self,
        settings: Settings,
        lifecycle: ModelLifecycle,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.jobs_dir is not None
        self.settings = settings
        self.lifecycle = lifecycle
        self.clock = clock
        self._store: JobStore | None = None
        self._running: dict[str, _Running] = {}
        self._change = asyncio.Event()
        self._notify_scheduled = False
        self._wakeup = _Wakeup()
        #: Set first thing by `stop`: no job is claimed, and no webhook sent, after it.
        self._closing = False
        #: The dispatcher, the sweep and the deliveries: they hold no job, `stop` cancels them.
        self._tasks: set[asyncio.Task[None]] = set()
        #: The runners: each may have a job's thread running, so `stop` waits for them instead.
        self._runners: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._webhooks = UrlFetcher(
            settings.url_allow_networks,
            settings.url_timeout_seconds,
            max_connections=WEBHOOK_CONCURRENCY,
        )
        self._webhook_turns: anyio.CapacityLimiter | None = None
        #: Deliveries waiting or being made: in all, per receiver host, and which ones.
        self._deliveries = 0
        self._receivers: dict[str, _Receiver] = {}
        self._sending: set[tuple[str, str]] = set()
        #: `completed` events held back for want of room (job key -> receiver host).
        self._held: dict[str, str] = {}
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
        """Opens the store (recovering what a crash left) and starts the dispatcher, the expiry
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
        self._webhook_turns = anyio.CapacityLimiter(WEBHOOK_CONCURRENCY)
        self._spawn(self._dispatch())
        await self._resume_deliveries()
        self._spawn(self._sweep())
        self._wakeup.notify()

    async def stop(self) -> None:
        """Stops claiming jobs, puts the running ones back in the queue (each stops before its
        next tile, uncounted), waits for their threads, then closes the store."""
        self._closing = True
        for running in self._running.values():
            running.stop()
        # A thread cannot be cancelled: a runner's is waited for (the tile in flight, or the
        # encode it is in); a runner still waiting for one stops waiting. The other tasks hold
        # no job; a store write of theirs still running ends on its own (the store's close
        # waits for it), and a POST is ended by the close of its connections.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._runners, return_exceptions=True)
        self._webhooks.close()
        if self._store is not None:
            self._store.close()
            self._store = None

    def _spawn(
        self, coroutine: Any, tasks: set[asyncio.Task[None]] | None = None
    ) -> asyncio.Task[None]:
        group = self._tasks if tasks is None else tasks
        task = asyncio.create_task(coroutine)
        group.add(task)
        task.add_done_callback(group.discard)
        task.add_done_callback(_log_failure)
        return task

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
        record, canceled = await anyio.to_thread.run_sync(self.store.cancel, owner, job_id)
        self._interrupt(record.key)
        # Only the call that ended it announces its end: another cancel, or the job's own end,
        # may have come first.
        if canceled:
            self._changed()
            self._announce(record)
        return record

    async def delete(self, owner: str, job_id: str) -> None:
        """Removes the job and its files (stopping it first if it runs).

        Raises:
            JobNotFoundError: If the owner has no such job.
        """
        record = await anyio.to_thread.run_sync(self.store.delete, owner, job_id)
        self._interrupt(record.key)
        self._changed()

    def _interrupt(self, key: str) -> None:
        """Stops the job's pipeline before its next tile, if it runs. The record has changed
        already: a runner that registers the job after this reads it again before it starts
        (`_run`), so a cancel between the claim and that registration is not lost."""
        running = self._running.get(key)
        if running is not None:
            running.cancel.set()

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

    async def _dispatch(self) -> None:
        """Hands queued jobs to the gate's slots, one at a time (see the module docstring)."""
        while True:
            await self._wakeup.event.wait()
            serving = await self._ready()
            try:
                await self._hand_over(serving)
            except OverloadedError:
                # Direct upscales fill the slots and their queue: the job waits its turn.
                await asyncio.sleep(READY_POLL_SECONDS)
            except Exception:
                # The store failing (a disk error): the dispatcher must outlive it, and pause
                # before it tries again.
                logger.exception("jobs: the dispatcher met an error; it goes on")
                await asyncio.sleep(READY_POLL_SECONDS)

    async def _hand_over(self, serving: Serving) -> None:
        """Waits for a slot with the next job's estimate (so that direct upscales see their
        wait behind it, `AdmissionGate.estimated_wait`), then starts a runner with the slot.

        Raises:
            OverloadedError: The gate's queue is full.
            Exception: The runner's claim failed (the store's error).
        """
        generation = self._wakeup.generation
        upcoming = self.store.peek_next()
        if upcoming is None:
            self._wakeup.clear_if(generation)
            return
        slot = contextlib.AsyncExitStack()  # entered here, left by the runner
        await slot.enter_async_context(serving.gate.slot(_estimate(serving, upcoming)))
        if not self.lifecycle.readiness().ready:
            # A drain (SIGTERM) began while this waited for the slot: it starts no job. The
            # wake-up stays set, so the dispatcher waits for readiness again.
            await slot.aclose()
            return
        claimed: asyncio.Future[JobRecord | None] = asyncio.get_running_loop().create_future()
        # (Retrieved even when the dispatcher is cancelled first: no unretrieved exception.)
        claimed.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._spawn(self._take(serving, slot, claimed), self._runners)
        # The claim's outcome: so that the next look at the queue does not see this job, and
        # so that a claim that failed reaches `_dispatch`, which pauses before the next try.
        await claimed

    async def _take(
        self,
        serving: Serving,
        slot: contextlib.AsyncExitStack,
        claimed: asyncio.Future[JobRecord | None],
    ) -> None:
        """A runner: claims the oldest queued job and runs it in the slot it was given; the
        claim's outcome (the job, None, or the store's error) goes to the dispatcher."""
        async with slot:
            record: JobRecord | None = None
            try:
                if not self._closing:
                    record = await anyio.to_thread.run_sync(self.store.claim_next)
            except Exception as exc:
                if not claimed.done():
                    claimed.set_exception(exc)
                return
            if not claimed.done():  # (cancelled if the dispatcher was: the stop handles it)
                claimed.set_result(record)
            if record is None:
                return
            try:
                await self._run(serving, record)
            except Exception:
                # The store failing while the job ends (a disk error): the job must not stay
                # `running` until a restart counts it as a crash.
                logger.exception("jobs: job %s met an error while it ended", record.id)
                ended = await anyio.to_thread.run_sync(self._fail_internally, record)
                if ended is not None:
                    self._changed()
                    self._announce(ended)

    async def _run(self, serving: Serving, record: JobRecord) -> None:
        running = _Running()
        self._running[record.key] = running
        try:
            # A cancel or DELETE that came between the claim's commit and the line above found
            # nothing to interrupt; the record says so.
            current = self.store.by_key(record.key)
            if current is None or current.status is not JobStatus.RUNNING:
                return
            if self._closing:  # a stop since the claim: back to the queue, not started
                running.stop()
            else:
                self._changed()
                self._announce(record)
            with self.lifecycle.metrics.inflight.track_inprogress():
                await self._in_thread(serving, record, running)
        finally:
            # A job claimed again (stopped, then requeued) has a runner of its own now.
            if self._running.get(record.key) is running:
                del self._running[record.key]
            self._changed()
        ended = self.store.by_key(record.key)
        # A cancel announced its own end; a deleted job has none to announce.
        if ended is not None and ended.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            self._announce(ended)

    async def _in_thread(self, serving: Serving, record: JobRecord, running: _Running) -> None:
        """Runs the job (`_execute`) in a worker thread of the models' limiter, waiting for one
        only until `stop` (`_Running.waiting`)."""
        with running.waiting:
            await anyio.to_thread.run_sync(
                self._execute, serving, record, running, limiter=serving.limiter
            )
        if running.waiting.cancelled_caught:
            # Stopped before a thread was free, so never started: `_execute` sees the cancel
            # at once and puts the job back (a store write: a thread, but none of the models').
            await anyio.to_thread.run_sync(self._execute, serving, record, running)

    def _execute(self, serving: Serving, record: JobRecord, running: _Running) -> None:
        """Runs one job in a worker thread and stores how it ended; if storing fails, tries
        once to fail it (`_fail_internally`)."""
        try:
            self._attempt(serving, record, running)
        except Exception:
            logger.exception("job %s: how it ended could not be stored", record.id)
            self._fail_internally(record)

    def _attempt(self, serving: Serving, record: JobRecord, running: _Running) -> None:
        store = self.store
        quality = Quality(record.quality)
        try:
            if running.cancel.is_set():
                raise ClientDisconnectedError("interrupted before it started")
            selection = select(serving.models, record.model)
            passes = 8 if quality is Quality.MAX else 1
            progress = JobProgress(selection.pipeline.scale, passes, self._changed_from_thread)
            running.progress = progress
            data = self._input(record)
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
            self._interrupted(record, running)
            return
        except UpscalerError as exc:  # the input, or a model no longer served
            store.settle(record.key, JobStatus.FAILED, exc.detail)
            return
        except Exception:
            if running.cancel.is_set():  # deleted meanwhile: its input went with it
                self._interrupted(record, running)
                return
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

    def _input(self, record: JobRecord) -> bytes:
        """The job's input.

        Raises:
            ClientDisconnectedError: A DELETE removed the job (and its folder) before its cancel
                reached this job: the cancel it is, no failure.
        """
        try:
            return self.store.read_input(record)
        except FileNotFoundError:
            if self.store.by_key(record.key) is not None:
                raise
            raise ClientDisconnectedError("deleted before it started") from None

    def _interrupted(self, record: JobRecord, running: _Running) -> None:
        """Ends a job whose cancel event stopped it: back in the queue, uncounted, when the
        service stops; otherwise canceled (already so, or deleted: then this changes nothing)."""
        if running.stopping:
            self.store.requeue(record.key)
        else:
            self.store.settle(record.key, JobStatus.CANCELED, "canceled by the client")

    def _fail_internally(self, record: JobRecord) -> JobRecord | None:
        """Tries once to fail a job whose end could not be stored (in a thread).

        Returns:
            The failed job, or None if it had ended already, or the store failed again (it
            then runs again at the next start).
        """
        try:
            if self.store.settle(record.key, JobStatus.FAILED, STORE_ERROR_DETAIL):
                return self.store.by_key(record.key)
        except Exception:
            logger.exception("job %s: it could not be marked failed either", record.id)
        return None

    async def _sweep(self) -> None:
        """Expires results, and sends the `completed` events held back, every few seconds."""
        interval = min(EXPIRY_SWEEP_SECONDS, max(self.store.retention_seconds / 4, 0.2))
        while True:
            try:
                expired, forgotten = await anyio.to_thread.run_sync(self.store.expire)
                if expired or forgotten:
                    logger.info(
                        "jobs: %d result(s) expired, %d job(s) forgotten", expired, forgotten
                    )
                    self._changed()
                self._send_held()
            except Exception:  # the store failing: the sweep must outlive it
                logger.exception("jobs: the sweep met an error; it goes on")
            await asyncio.sleep(interval)

    # --- webhooks ---------------------------------------------------------------------------

    async def _resume_deliveries(self) -> None:
        """Makes again the `completed` deliveries a stop cut short; records them as failed when
        the service no longer has the secret to sign them."""
        for record in await anyio.to_thread.run_sync(self.store.undelivered):
            if self.webhooks_enabled:
                self._announce(record)
                continue
            tried = record.webhook_state.get("completed", {}).get("attempts", 0)
            detail = "not delivered: UPSCALER_WEBHOOK_SECRET is no longer set to sign it"
            await self._record_delivery(record, "completed", "failed", tried, None, detail)

    def _announce(self, record: JobRecord) -> None:
        """Sends the webhook event this record's status calls for, if the job asked for it.
        Not while stopping: a `completed` left unsent is made at the next start."""
        event = "completed" if record.status.terminal else "start"
        if record.status is JobStatus.QUEUED or self._closing:
            return
        if not (record.webhook and event in record.webhook_events and self.webhooks_enabled):
            return
        if (record.key, event) in self._sending:
            return  # being made already
        host = _receiver_host(record.webhook)
        full = self._no_room(host)
        if full is not None:
            self._hold_back(record, event, host, full)
            return
        receiver = self._receivers.setdefault(host, _Receiver())
        receiver.waiting += 1
        self._deliveries += 1
        self._sending.add((record.key, event))
        task = self._spawn(self._deliver(record, event, receiver))
        # A callback, not a `finally` in `_deliver`: it runs however the task ends, even when
        # it fails before its first line, or is cancelled before it starts.
        task.add_done_callback(lambda _: self._delivery_ended(record.key, event, host))

    def _no_room(self, host: str) -> str | None:
        """Why no more delivery may wait now, in all or for `host`; None if one may."""
        if self._deliveries >= MAX_WAITING_DELIVERIES:
            return f"{MAX_WAITING_DELIVERIES} deliveries were waiting already"
        receiver = self._receivers.get(host)
        if receiver is not None and receiver.waiting >= MAX_WAITING_PER_HOST:
            return f"{MAX_WAITING_PER_HOST} deliveries to {host} were waiting already"
        return None

    def _hold_back(self, record: JobRecord, event: str, host: str, reason: str) -> None:
        """An event with no room to wait: `completed` is left `retrying`, for the sweep to
        send once there is room (`_send_held`); `start`, sent once and never late, is not
        sent."""
        logger.warning("jobs: webhook %s of job %s held back: %s", event, record.id, reason)
        if event == "completed":
            self._spawn(self._hold(record, host, f"waiting: {reason}; sent when there is room"))
        else:
            detail = f"not sent: {reason}"
            self._spawn(self._record_delivery(record, event, "failed", 0, None, detail))

    async def _hold(self, record: JobRecord, host: str, detail: str) -> None:
        # Held once recorded: a delivery the sweep starts must not be overwritten by this.
        await self._record_delivery(record, "completed", "retrying", 0, None, detail)
        self._held[record.key] = host

    def _send_held(self) -> None:
        """Sends the `completed` events held back, as far as there is room now."""
        for key, host in list(self._held.items()):
            if self._deliveries >= MAX_WAITING_DELIVERIES:
                return
            if self._no_room(host) is not None:
                continue
            del self._held[key]
            record = self.store.by_key(key)
            if record is not None:  # (None: deleted meanwhile)
                self._announce(record)

    def _delivery_ended(self, key: str, event: str, host: str) -> None:
        self._sending.discard((key, event))
        self._deliveries -= 1
        receiver = self._receivers[host]
        receiver.waiting -= 1
        if receiver.waiting == 0:
            del self._receivers[host]

    async def _deliver(self, record: JobRecord, event: str, receiver: _Receiver) -> None:
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
            async with receiver.turns:
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
            status = await anyio.to_thread.run_sync(
                self._webhooks.post, url, body, headers, limiter=self._webhook_turns
            )
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


def _log_failure(task: asyncio.Task[None]) -> None:
    # Every task's exception is retrieved and logged when it ends: asyncio would only report
    # one nobody awaits when the task is garbage-collected, if ever.
    if not task.cancelled() and task.exception() is not None:
        logger.error("jobs: task %s failed", task.get_name(), exc_info=task.exception())


def _receiver_host(url: str) -> str:
    # The host a webhook goes to (checked at submit: http(s) with a host), as the caps count.
    return urlsplit(url).hostname or ""


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
