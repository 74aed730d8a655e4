"""The HTTP app: `create_app()` wires the parts; it decides nothing about a request.

One request, top to bottom: `service.api.routes` (the endpoints; their parameters are checked by
`service.api.deps`), then `service.core.pipeline` (decode → model → encode, no HTTP). The models
are the lifecycle's (`service.core.lifecycle`): the app's lifespan starts and stops it.

Around every request (`service.api.middleware`): request ID and access line, outermost so that
even a 500 carries `X-Request-ID`; the in-flight count the drain waits for; then CORS when
`UPSCALER_CORS_ORIGINS` is set; then the metrics. API keys are a dependency of the protected
routes (`service.api.auth`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from service.api import jobs, web
from service.api.auth import ApiKeys, document_access
from service.api.context import AppContext
from service.api.deps import MODEL_STATE_KEY
from service.api.errors import install_error_handlers
from service.api.middleware import (
    REQUEST_ID_HEADER,
    InFlightMiddleware,
    RequestContextMiddleware,
    RequestMetricsMiddleware,
)
from service.api.routes import RESPONSE_HEADERS, UPSCALE_PATH, router
from service.api.urlinput import document_url_input
from service.config import Settings
from service.core.engines import create_engine
from service.core.jobs.service import JobService
from service.core.lifecycle import ModelLifecycle
from service.core.metrics import ServiceMetrics
from service.core.registry import EngineFactory
from service.core.urlfetch import UrlFetcher
from service.logs import install_request_ids


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: EngineFactory = create_engine,
    models_at_startup: bool = True,
    jobs_unavailable: str | None = None,
) -> FastAPI:
    """Builds the upscaling app.

    The models (every one in the models folder, or the one `model_path` names: see
    `service.core.registry`) are loaded when the app starts (its lifespan), not here, so building
    an app is cheap. A model that cannot be loaded makes start-up fail with `ModelLoadError`
    naming the path, and uvicorn exits. Warm-up then runs in the background, one model after the
    other: `/healthz` answers at once, `/readyz` and `/upscale` answer 503 until every model is
    warm.

    Args:
        settings: Settings to use; read from the environment when omitted.
        engine_factory: Loads one model from settings whose `model_path` names it (tests
            substitute their own); called once per model, in the models' order.
        models_at_startup: False: the lifespan loads no model, and the host starts the
            lifecycle itself once it knows which (the Ray Serve deployment, `service.entry.serve`,
            whose models come with its `user_config` after start-up). Until then the app answers
            503 `starting`.
        jobs_unavailable: Why this host keeps no jobs even with UPSCALER_JOBS_DIR set (Ray
            Serve replicas); the job routes answer 404 with it.

    Raises:
        SettingsError: If the API keys file cannot be read.
    """
    settings = settings or Settings()
    install_request_ids()
    lifecycle = ModelLifecycle(
        settings, engine_factory, ServiceMetrics(), watch_sighup=models_at_startup
    )
    app = UpscalerApp(
        title="EDSR upscaler",
        summary="x4 image super-resolution with EDSR models on onnxruntime or OpenVINO.",
        version="0.1.0",
        lifespan=partial(_lifespan, models_at_startup=models_at_startup),
    )
    app.state.context = _context(settings, lifecycle, jobs_unavailable)
    install_error_handlers(app)
    _add_middleware(app, settings, lifecycle)
    app.include_router(router)
    app.include_router(jobs.router)
    app.include_router(web.router)
    return app


def _add_middleware(app: FastAPI, settings: Settings, lifecycle: ModelLifecycle) -> None:
    """CORS when `UPSCALER_CORS_ORIGINS` is set, then the metrics (the request context and the
    in-flight count wrap everything: `UpscalerApp.build_middleware_stack`)."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD"],
            allow_headers=["Authorization", "Content-Type", "Accept", REQUEST_ID_HEADER],
            expose_headers=[*RESPONSE_HEADERS, REQUEST_ID_HEADER, "Retry-After", "Location"],
            max_age=600,
        )
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=lifecycle.metrics,
        paths=[UPSCALE_PATH],
        model_key=MODEL_STATE_KEY,
    )


def _context(
    settings: Settings, lifecycle: ModelLifecycle, jobs_unavailable: str | None
) -> AppContext:
    # One connection per upload slot: fetches of image_url run under those slots (`urlinput`),
    # so none waits for a turn at the fetcher.
    fetcher = UrlFetcher(
        settings.url_allow_networks,
        settings.url_timeout_seconds,
        max_connections=settings.max_concurrent_uploads,
    )
    if jobs_unavailable is None and settings.jobs_dir is None:
        jobs_unavailable = "this service keeps no jobs: UPSCALER_JOBS_DIR is not set"
    service = None if jobs_unavailable else JobService(settings, lifecycle)
    api_keys = ApiKeys.from_settings(settings)
    return AppContext(settings, lifecycle, api_keys, fetcher, service, jobs_unavailable or "")


class UpscalerApp(FastAPI):
    """FastAPI with the request context and in-flight count outside Starlette's error
    middleware (so that every response, a 500 included, is counted and carries its ID), and an
    OpenAPI document that asks for the keys this app asks for, no more."""

    def build_middleware_stack(self) -> ASGIApp:
        drain = self.state.context.lifecycle.drain
        return RequestContextMiddleware(InFlightMiddleware(super().build_middleware_stack(), drain))

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document, with the authentication and the bodies this app really takes."""
        if self.openapi_schema is not None:
            return self.openapi_schema
        context: AppContext = self.state.context
        schema = super().openapi()  # kept as self.openapi_schema: edited in place, once
        document_access(schema, context.api_keys, context.settings.protect_metrics)
        document_url_input(schema, context.settings.url_input)
        return schema


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI, models_at_startup: bool) -> AsyncIterator[None]:
    """Starts the models' lifecycle (load, then warm-up and the file watcher in the
    background) and the jobs (their store, recovered, and workers that wait for the models),
    and stops both at shutdown, the jobs first (running ones go back to the queue)."""
    context: AppContext = app.state.context
    lifecycle = context.lifecycle
    if models_at_startup:
        await lifecycle.start()
    try:
        # Inside the try: jobs that cannot start (their folder in use, say) stop what started.
        if context.jobs is not None:
            await context.jobs.start()
        yield
    finally:
        if context.jobs is not None:
            await context.jobs.stop()
        await lifecycle.stop()
        context.fetcher.close()
