"""The HTTP app: `create_app()` and the module-level `app` for `uvicorn service.main:app`.

One request, top to bottom: `service.routes` (the endpoints; their parameters are checked by
`service.deps`), then `service.pipeline` (decode → model → encode, no HTTP). FastAPI appears only
in this module, the routes, the dependencies and the error handlers (`service.errors`).

Around every request: `service.logs.RequestContextMiddleware` (request ID, access line, the
in-flight count the drain waits for), outermost so that even a 500 carries `X-Request-ID`; then
CORS when `UPSCALER_CORS_ORIGINS` is set; then the metrics. API keys are a dependency of the
protected routes (`service.auth`). Besides warm-up, the lifespan runs the model watcher
(`service.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial

import anyio
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from service import web
from service.auth import ApiKeys
from service.config import Settings
from service.deps import MODEL_STATE_KEY, ServiceState
from service.drain import Drain
from service.engine import Engine, create_engine
from service.errors import install_error_handlers
from service.exceptions import ModelLoadError
from service.logs import REQUEST_ID_HEADER, RequestContextMiddleware, make_handler
from service.metrics import RequestMetricsMiddleware, ServiceMetrics
from service.registry import ModelRegistry, load_models
from service.reload import ModelReloader, warm_up_all
from service.routes import RESPONSE_HEADERS, UPSCALE_PATH, router

logger = logging.getLogger("service")

#: Loads one model from settings whose `model_path` names it; called once per served model.
EngineFactory = Callable[[Settings], Engine]


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: EngineFactory = create_engine,
    models_at_startup: bool = True,
) -> FastAPI:
    """Builds the upscaling app.

    The models (every one in the models folder, or the one `model_path` names: see
    `service.registry`) are loaded when the app starts (its lifespan), not here, so building an
    app is cheap. A model that cannot be loaded makes start-up fail with `ModelLoadError` naming
    the path, and uvicorn exits. Warm-up then runs in the background, one model after the other:
    `/healthz` answers at once, `/readyz` and `/upscale` answer 503 until every model is warm.

    Args:
        settings: Settings to use; read from the environment when omitted.
        engine_factory: Loads one model from settings whose `model_path` names it (tests
            substitute their own); called once per model, in the models' order.
        models_at_startup: False: the lifespan loads no model, and the host calls
            `start_models` itself once it knows which (the Ray Serve deployment,
            `service.serve`, whose models come with its `user_config` after start-up). Until
            then the app answers 503 `starting`.
    """
    settings = settings or Settings()
    metrics = ServiceMetrics()
    app = UpscalerApp(
        title="EDSR upscaler",
        summary="x4 image super-resolution with EDSR models on onnxruntime or OpenVINO.",
        version="0.1.0",
        lifespan=partial(
            _lifespan, engine_factory=engine_factory, models_at_startup=models_at_startup
        ),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None  # a ServiceState once the lifespan has loaded the model
    app.state.reloader = None  # a ModelReloader while the lifespan runs
    app.state.model_task = None  # warm-up, then the model watcher (`start_models`)
    app.state.sighup = False
    app.state.engine_factory = engine_factory
    app.state.drain = Drain()
    app.state.api_keys = ApiKeys.from_settings(settings)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "HEAD"],
            allow_headers=["Authorization", "Content-Type", "Accept", REQUEST_ID_HEADER],
            expose_headers=[*RESPONSE_HEADERS, REQUEST_ID_HEADER, "Retry-After"],
            max_age=600,
        )
    app.add_middleware(
        RequestMetricsMiddleware, metrics=metrics, path=UPSCALE_PATH, model_key=MODEL_STATE_KEY
    )
    app.include_router(router)
    app.include_router(web.router)
    return app


class UpscalerApp(FastAPI):
    """FastAPI with `RequestContextMiddleware` outside Starlette's error middleware."""

    def build_middleware_stack(self) -> ASGIApp:
        drain: Drain = self.state.drain
        return RequestContextMiddleware(
            super().build_middleware_stack(), on_enter=drain.enter, on_exit=drain.exit
        )


@contextlib.asynccontextmanager
async def _lifespan(
    app: FastAPI, engine_factory: EngineFactory, models_at_startup: bool = True
) -> AsyncIterator[None]:
    """Loads the models once, warms them up in the background, then watches their files
    (`service.reload`) until shutdown, when they are dropped (see `start_models`)."""
    settings: Settings = app.state.settings
    _ensure_log_output(settings.log_format)
    if models_at_startup:
        app.state.sighup = True  # each watcher started checks the files at once on SIGHUP
        await start_models(app)
    try:
        yield
    finally:
        await stop_models(app)


async def start_models(app: FastAPI, settings: Settings | None = None) -> ServiceState:
    """Loads the models that `settings` name (the app's settings when omitted) with the app's
    engine factory, makes them the app's service state, and starts in the background their
    warm-up, then the watcher of their files (`service.reload`); `stop_models` ends both.

    The lifespan calls it; a host that chooses the models itself calls it instead
    (`create_app(..., models_at_startup=False)`).

    Raises:
        ModelLoadError: If a model cannot be loaded (see `service.registry.load_models`).
    """
    settings = settings or app.state.settings
    try:
        # Loading can take seconds (CUDA initialisation); keep the event loop free meanwhile.
        models = await anyio.to_thread.run_sync(load_models, settings, app.state.engine_factory)
    except ModelLoadError as exc:
        logger.error("cannot start: %s", exc)
        raise
    state = ServiceState.start(settings, models, app.state.metrics)
    app.state.service = state
    _start_watch(app, state, warm_up=True)
    return state


async def replace_models(app: FastAPI, settings: Settings, models: ModelRegistry) -> None:
    """Serves `models` (loaded and warmed up by the caller) as the models `settings` name,
    in place of the running ones: one assignment, as a hot reload swaps (requests in flight
    finish on the model they started on). The watcher of the old files is stopped first, so
    it cannot swap one of them back in, and a new one watches the files of `settings`."""
    state: ServiceState = app.state.service
    await _stop_watch(app)
    state.settings = settings
    state.swap_models(models)
    state.reload_errors.clear()
    _start_watch(app, state, warm_up=False)


async def stop_models(app: FastAPI) -> None:
    """Stops the warm-up or the watcher and drops the models (a no-op when none run)."""
    await _stop_watch(app)
    app.state.service = None


def _start_watch(app: FastAPI, state: ServiceState, *, warm_up: bool) -> None:
    reloader = ModelReloader(state, app.state.engine_factory)
    app.state.reloader = reloader
    if app.state.sighup:
        reloader.install_sighup()
    interval = state.settings.reload_interval_seconds
    work = _warm_up_then_watch(state, reloader) if warm_up else reloader.run(interval)
    app.state.model_task = asyncio.create_task(work)


async def _stop_watch(app: FastAPI) -> None:
    task: asyncio.Task[None] | None = app.state.model_task
    reloader: ModelReloader | None = app.state.reloader
    app.state.model_task = None
    app.state.reloader = None
    if reloader is not None:
        reloader.remove_sighup()
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _warm_up_then_watch(state: ServiceState, reloader: ModelReloader) -> None:
    # The watcher starts once the warm-up is over (not before: a reload would compete with it
    # for the cores), also after a failed one: a corrected file then replaces the failing
    # model and the service warms up again, with no restart.
    await warm_up_all(state)
    await reloader.run(state.settings.reload_interval_seconds)


def _ensure_log_output(log_format: str = "text") -> None:
    # `uvicorn service.main:app` configures only uvicorn's own loggers, which would leave the
    # provider report (INFO) unseen. Add a handler unless the host application (or
    # `python -m service`, which configures the root logger) set up logging.
    service_logger = logging.getLogger("service")
    if logging.getLogger().handlers or service_logger.handlers:
        return
    service_logger.addHandler(make_handler(log_format))
    service_logger.setLevel(logging.INFO)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.main:app` builds the app from the environment when it asks for it, not
    # when the module is imported (as `python -m service` does, with its own settings): a bad
    # setting then fails start-up with its message instead of a traceback at import.
    if name == "app":
        return create_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
