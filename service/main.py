"""The HTTP app: `create_app()` and the module-level `app` for `uvicorn service.main:app`.

One request, top to bottom: `service.routes` (the endpoints; their parameters are checked by
`service.deps`), then `service.pipeline` (decode → model → encode, no HTTP). FastAPI appears only
in this module, the routes, the dependencies and the error handlers (`service.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial

import anyio
from fastapi import FastAPI

from service.config import Settings
from service.deps import ServiceState
from service.engine import OnnxEngine
from service.errors import install_error_handlers
from service.exceptions import ModelLoadError
from service.metrics import RequestMetricsMiddleware, ServiceMetrics
from service.routes import UPSCALE_PATH, router

logger = logging.getLogger("service")

EngineFactory = Callable[[Settings], OnnxEngine]


def create_app(
    settings: Settings | None = None, *, engine_factory: EngineFactory = OnnxEngine
) -> FastAPI:
    """Builds the upscaling app.

    The model is loaded when the app starts (its lifespan), not here, so building an app is
    cheap. A model that cannot be loaded makes start-up fail with `ModelLoadError` naming the
    path, and uvicorn exits. Warm-up then runs in the background: `/healthz` answers at once,
    `/readyz` and `/upscale` answer 503 until the warm-up finished.

    Args:
        settings: Settings to use; read from the environment when omitted.
        engine_factory: Loads the model from the settings (tests substitute their own).
    """
    settings = settings or Settings()
    metrics = ServiceMetrics()
    app = FastAPI(
        title="EDSR upscaler",
        summary="x4 image super-resolution with an EDSR model on onnxruntime.",
        version="0.1.0",
        lifespan=partial(_lifespan, engine_factory=engine_factory),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None  # a ServiceState once the lifespan has loaded the model
    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, path=UPSCALE_PATH)
    app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI, engine_factory: EngineFactory) -> AsyncIterator[None]:
    """Loads the model once, warms it up in the background, and drops it at shutdown."""
    _ensure_log_output()
    settings: Settings = app.state.settings
    try:
        # Loading can take seconds (CUDA initialisation); keep the event loop free meanwhile.
        engine = await anyio.to_thread.run_sync(engine_factory, settings)
    except ModelLoadError as exc:
        logger.error("cannot start: %s", exc)
        raise
    state = ServiceState.start(settings, engine, app.state.metrics)
    app.state.service = state
    warm_up = asyncio.create_task(_warm_up(state))
    try:
        yield
    finally:
        warm_up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warm_up
        app.state.service = None


async def _warm_up(state: ServiceState) -> None:
    try:
        await anyio.to_thread.run_sync(state.engine.warm_up, abandon_on_cancel=True)
    except Exception as exc:
        state.warmup_error = str(exc)
        logger.exception("model warm-up failed; the service stays unready")
        return
    state.warmed.set()
    logger.info("ready to upscale")


def _ensure_log_output() -> None:
    # `uvicorn service.main:app` configures only uvicorn's own loggers, which would leave the
    # provider report (INFO) unseen. Add a handler unless the host application set up logging.
    service_logger = logging.getLogger("service")
    if logging.getLogger().handlers or service_logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    service_logger.addHandler(handler)
    service_logger.setLevel(logging.INFO)


app = create_app()
