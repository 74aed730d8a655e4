"""The models' lifecycle, in one place: load → warm up → ready → swap → stop, and readiness.

`ModelLifecycle` owns the served models from the moment they are loaded to the moment they are
dropped, and everything that changes with them:

- **start** loads the models the settings name (`service.core.registry.load_models`) in a worker
  thread, opens the admission gates (`Serving`), then warms the models up in the background,
  one after the other, and only then watches their files (`service.core.reload`).
- **warm_up** is the one warm-up of the service: every model in turn; ready when all are warm,
  `failed` with the reason otherwise (a corrected file that the watcher swaps in warms them all
  up again, with no restart).
- **swap** serves other models in one assignment: a request takes its model once, at its start,
  so requests in flight finish on the model they started on. The hot reload swaps one model at
  a time; `replace` (Ray's config change) loads, warms up and swaps a whole new set.
- **readiness** is decided here only (`/readyz`, the routes' dependency and Ray's health check
  read it): starting, draining, failed, warming up or ready.
- **stop** ends the warm-up or the watcher and drops the models.

No HTTP here: the HTTP layer reads the lifecycle (`service.api.deps`), it never writes to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import anyio

from service.config import Settings
from service.core.admission import AdmissionGate
from service.core.choice import Auto
from service.core.metrics import ServiceMetrics
from service.core.registry import EngineFactory, ModelRegistry, ServedModel, load_models
from service.core.reload import ModelReloader
from service.exceptions import ModelLoadError, NotReadyError

logger = logging.getLogger(__name__)


class Phase(enum.StrEnum):
    """Where the service stands (`/readyz`'s `status`)."""

    STARTING = "starting"
    DRAINING = "draining"
    FAILED = "failed"
    WARMING_UP = "warming_up"
    READY = "ready"


@dataclass(frozen=True)
class Readiness:
    """The phase, and for `failed` why warm-up failed."""

    phase: Phase
    detail: str | None = None

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def message(self) -> str:
        """What a refused request is told."""
        return {
            Phase.STARTING: "the model is not loaded yet",
            Phase.DRAINING: "the service is shutting down; retry later",
            Phase.FAILED: f"the model failed to warm up: {self.detail}",
            Phase.WARMING_UP: "the model is warming up",
            Phase.READY: "ready",
        }[self.phase]


class Drain:
    """Whether the service is draining (SIGTERM), and how many requests are in flight (counted
    by `service.api.middleware.InFlightMiddleware`); used from the event loop only."""

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


@dataclass(frozen=True)
class Serving:
    """What requests use while models are served; a swap replaces it in one assignment.

    Attributes:
        settings: The settings the models were loaded with.
        models: The loaded models, each with its engine and pipeline.
        gate: Admission control for upscales.
        uploads: Bounds the request bodies being received at once (no queue: beyond the bound,
            503), since each may hold up to `settings.max_upload_bytes` in memory.
        limiter: Worker threads for upscales, as many as `settings.max_concurrency`, kept apart
            from the default thread pool so that other blocking work never waits behind them.
    """

    settings: Settings
    models: ModelRegistry
    gate: AdmissionGate
    uploads: AdmissionGate
    limiter: anyio.CapacityLimiter

    @classmethod
    def open(cls, settings: Settings, models: ModelRegistry) -> Serving:
        """The gates of a service whose models have just been loaded (inside the event loop)."""
        retry = settings.retry_after_seconds
        return cls(
            settings=settings,
            models=models,
            gate=AdmissionGate(settings.max_concurrency, settings.max_queue, retry),
            uploads=AdmissionGate(
                settings.max_concurrent_uploads,
                0,
                retry,
                busy_message="too many uploads are arriving at once; retry later",
            ),
            limiter=anyio.CapacityLimiter(settings.max_concurrency),
        )


async def _warm_in_turn(models: Iterable[ServedModel]) -> None:
    """Warms up models one after the other: warming up runs a full tile with every core (or
    searches GPU kernels), so in parallel they would only compete, and memory peaks once.

    Raises:
        ModelLoadError: Naming the first model whose warm-up failed (the cause chained).
    """
    for model in models:
        try:
            await anyio.to_thread.run_sync(model.warm_up, abandon_on_cancel=True)
        except Exception as exc:
            raise ModelLoadError(f"model {model.name!r}: {exc}") from exc


class ModelLifecycle:
    """The served models from load to drop (see the module docstring).

    Args:
        settings: The settings to start with (`start` may be given others).
        engine_factory: Loads one model (tests substitute their own).
        metrics: The app's metrics, kept in step with the served models.
        watch_sighup: Whether SIGHUP asks the watcher for a check (the server process; not
            Ray replicas, whose main thread is Ray's).
    """

    def __init__(
        self,
        settings: Settings,
        engine_factory: EngineFactory,
        metrics: ServiceMetrics,
        *,
        watch_sighup: bool = False,
    ) -> None:
        self.engine_factory = engine_factory
        self.metrics = metrics
        self.drain = Drain()
        self.warmup_error: str | None = None
        self._settings = settings
        self._watch_sighup = watch_sighup
        self._serving: Serving | None = None
        self._warm = threading.Event()
        self._reload_errors: dict[str, str] = {}
        self._watcher: ModelReloader | None = None
        self._task: asyncio.Task[None] | None = None

    # --- what the rest of the service reads -------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings of the models served (or to be served)."""
        return self._serving.settings if self._serving else self._settings

    @property
    def serving(self) -> Serving | None:
        """The models and gates, once loaded (warm or not)."""
        return self._serving

    @property
    def models(self) -> ModelRegistry:
        """The models served.

        Raises:
            NotReadyError: Before they are loaded.
        """
        return self.loaded().models

    @property
    def reload_errors(self) -> Mapping[str, str]:
        """Why the latest reload of a model (or a config change) was refused, by name."""
        return MappingProxyType(self._reload_errors)

    @property
    def watcher(self) -> ModelReloader | None:
        """The model file watcher, while one runs."""
        return self._watcher

    def readiness(self) -> Readiness:
        """Where the service stands: the one decision behind `/readyz`, the routes and Ray."""
        if self._serving is None:
            return Readiness(Phase.STARTING)
        if self.drain.draining:
            return Readiness(Phase.DRAINING)
        if self.warmup_error is not None:
            return Readiness(Phase.FAILED, self.warmup_error)
        if not self._warm.is_set():
            return Readiness(Phase.WARMING_UP)
        return Readiness(Phase.READY)

    def loaded(self) -> Serving:
        """The models and gates, warm or not.

        Raises:
            NotReadyError: Before the models are loaded.
        """
        if self._serving is None:
            raise NotReadyError(
                Readiness(Phase.STARTING).message(), self._settings.retry_after_seconds
            )
        return self._serving

    def ready(self) -> Serving:
        """The models and gates, for an upscale.

        Raises:
            NotReadyError: Unless ready (starting, draining, failed or warming up).
        """
        readiness = self.readiness()
        if not readiness.ready:
            raise NotReadyError(readiness.message(), self.settings.retry_after_seconds)
        assert self._serving is not None
        return self._serving

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Blocks (a thread, not the event loop) until the warm-up succeeded; False on timeout."""
        return self._warm.wait(timeout)

    # --- changes ------------------------------------------------------------------------------

    async def start(self, settings: Settings | None = None) -> Serving:
        """Loads the models `settings` name (the lifecycle's own when omitted) and starts, in the
        background, their warm-up and then the watcher of their files.

        Raises:
            ModelLoadError: If a model cannot be loaded (see `service.core.registry`).
        """
        settings = settings or self._settings
        try:
            # Loading can take seconds (CUDA initialisation); keep the event loop free meanwhile.
            models = await anyio.to_thread.run_sync(load_models, settings, self.engine_factory)
        except ModelLoadError as exc:
            logger.error("cannot start: %s", exc)
            raise
        serving = Serving.open(settings, models)
        self._serving = serving
        self.metrics.track_queue(lambda: serving.gate.waiting)
        self._publish()
        self._start_watch(warm_up=True)
        return serving

    async def warm_up(self) -> None:
        """Warms up every served model in turn, then marks the service ready; on a failure it
        stays unready with the reason in `warmup_error`.

        Ready only when all are warm: a request may pick any listed model, and none should pay a
        first-run cost or find it unusable after /readyz said ready.
        """
        self.warmup_error = None
        models = self.models
        try:
            await _warm_in_turn(models)
        except ModelLoadError as exc:
            self.warmup_error = str(exc)
            logger.exception("warm-up failed (%s); the service stays unready", exc)
            return
        self._warm.set()
        auto = Auto.of(models)
        default = (
            f"default: auto, {auto.clean.name} for clean input, {auto.robust.name} for degraded"
            if auto
            else f"default {models.default_name}"
        )
        logger.info("ready to upscale with %s (%s)", ", ".join(models.names), default)

    async def swap(self, models: ModelRegistry) -> None:
        """Serves `models` (loaded and warmed up) from now on, in one assignment. After a failed
        start-up warm-up, the models are all warmed up again (a corrected file came in)."""
        self._serving = dataclasses.replace(self.loaded(), models=models)
        self._publish()
        if self.warmup_error is not None:
            await self.warm_up()

    async def replace(self, settings: Settings) -> None:
        """Loads the models `settings` name, warms them up beside the serving ones, and swaps
        them in; the watcher then watches their files.

        Raises:
            ModelLoadError: If they cannot be loaded or warmed up (the serving models stay).
        """
        models = await anyio.to_thread.run_sync(load_models, settings, self.engine_factory)
        await _warm_in_turn(models)
        # The old files' watcher stops first, so that it cannot swap one of them back in.
        await self._stop_watch()
        self._serving = dataclasses.replace(self.loaded(), settings=settings, models=models)
        self._publish()
        self._reload_errors.clear()
        self._start_watch(warm_up=False)

    def note_reload_error(self, name: str, detail: str) -> None:
        """Records why a reload of `name` (a model, or a config) was refused."""
        self._reload_errors[name] = detail

    def clear_reload_error(self, name: str) -> None:
        """Forgets a refused reload of `name` (it reloaded, or its file is gone)."""
        self._reload_errors.pop(name, None)

    async def stop(self) -> None:
        """Stops the warm-up or the watcher and drops the models (a no-op when none run)."""
        await self._stop_watch()
        self._serving = None
        self._warm.clear()

    # --- internals ----------------------------------------------------------------------------

    def _publish(self) -> None:
        models = self.models
        default = models.default.engine.info
        self.metrics.set_provider(default.provider, default.fallback)
        self.metrics.set_models(
            [(m.name, m.engine.info.provider, m.engine.info.precision) for m in models],
            models.default_name,
        )
        self.metrics.set_versions([(m.name, m.version) for m in models])

    def _start_watch(self, *, warm_up: bool) -> None:
        watcher = ModelReloader(self)
        self._watcher = watcher
        if self._watch_sighup:
            watcher.install_sighup()
        self._task = asyncio.create_task(self._run(watcher, warm_up))

    async def _run(self, watcher: ModelReloader, warm_up: bool) -> None:
        # The watcher starts once the warm-up is over (not before: a reload would compete with
        # it for the cores), also after a failed one: a corrected file then replaces the failing
        # model and the service warms up again, with no restart.
        if warm_up:
            await self.warm_up()
        await watcher.run(self.settings.reload_interval_seconds)

    async def _stop_watch(self) -> None:
        task, watcher = self._task, self._watcher
        self._task = self._watcher = None
        if watcher is not None:
            watcher.remove_sighup()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
