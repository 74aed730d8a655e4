"""The HTTP app: `create_app()` and the module-level `app` for `uvicorn service.main:app`.

Only this module and its HTTP helpers (`service.deps`, `service.errors`) know about FastAPI; the
work itself happens in `service.upscaler` and the modules it calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import AdmissionGate
from service.batching import TileBatcher
from service.config import Settings
from service.deps import (
    UPLOAD_FIELD,
    AcceptedFormats,
    ReadyState,
    RequestedQuality,
    UploadedBytes,
)
from service.encoding import EncodeOptions, OutputFormat, describe_png_writer
from service.errors import UPSCALE_ERROR_RESPONSES, install_error_handlers
from service.exceptions import ClientDisconnectedError, ImageTooLargeError, ModelLoadError
from service.imaging import inspect_image
from service.metrics import ServiceMetrics
from service.negotiation import choose_format_for_size
from service.quality import Quality
from service.runtime import UpscalerRuntime
from service.state import ServiceState
from service.upscaler import UpscaleResult, fits_tiles, upscale_image_bytes

logger = logging.getLogger("service")

RuntimeFactory = Callable[[Settings], UpscalerRuntime]

_UPSCALE_PATH = "/upscale"

_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image, as multipart field `file` or as the raw request body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [UPLOAD_FIELD],
                    "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_UPSCALE_SUCCESS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upscaled image, exactly scale x the input's width and height: PNG "
        "by default, lossless WebP for `Accept: image/webp`, JPEG for `Accept: image/jpeg`.",
        "content": {
            output_format.media_type: {"schema": {"type": "string", "format": "binary"}}
            for output_format in OutputFormat
        },
        "headers": {
            "X-Upscaler-Provider": {
                "description": "onnxruntime execution provider that ran the model.",
                "schema": {"type": "string"},
            },
            "X-Inference-Time-Ms": {
                "description": "Model time in milliseconds (excludes queueing, decoding, PNG).",
                "schema": {"type": "string"},
            },
            "X-Input-Size": {
                "description": "Input WIDTHxHEIGHT after EXIF rotation.",
                "schema": {"type": "string"},
            },
            "X-Output-Size": {"description": "Output WIDTHxHEIGHT.", "schema": {"type": "string"}},
            "Server-Timing": {
                "description": "decode, model and encode durations in milliseconds "
                "(`decode;dur=1.2, model;dur=45.0, encode;dur=8.1`).",
                "schema": {"type": "string"},
            },
            "Vary": {
                "description": "`Accept`: the format depends on it.",
                "schema": {"type": "string"},
            },
        },
    }
}


class UpscaleMetricsMiddleware:
    """Counts `/upscale` requests by final status and times them, errors included.

    A pure ASGI middleware sees the status of every response, including those produced by the
    exception handlers, which an endpoint-level timer would miss.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != _UPSCALE_PATH:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe_request(status, time.perf_counter() - started)


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


def _warm_up_blocking(state: ServiceState) -> None:
    runtime = state.runtime
    runtime.warm_up()
    if runtime.io_binding and state.batcher is not None:
        # Bound buffers are per thread: allocate the batcher thread's before the first request.
        side = runtime.tile_size
        state.batcher.run(np.zeros((runtime.batch_size, side, side, 3), dtype=np.float32))


async def _warm_up(state: ServiceState) -> None:
    try:
        await anyio.to_thread.run_sync(_warm_up_blocking, state, abandon_on_cancel=True)
    except Exception as exc:
        state.warmup_error = str(exc)
        logger.exception("model warm-up failed; the service stays unready")
        return
    state.warmed.set()
    logger.info("ready to upscale")


def _describe(state: ServiceState) -> dict[str, Any]:
    runtime, settings = state.runtime, state.settings
    return {
        "model": {
            "path": str(runtime.model_path),
            "scale": runtime.scale,
            "input": runtime.input_name,
            "output": runtime.output_name,
            "metadata": runtime.metadata,
        },
        "providers": list(runtime.providers),
        "requested_providers": list(runtime.requested_providers),
        "skipped_providers": runtime.skipped_providers,
        "fallback": runtime.fallback,
        "fallback_reason": runtime.fallback_reason,
        "precision": runtime.precision,
        "precision_setting": runtime.precision_setting,
        "io_binding": runtime.io_binding,
        "tile_size": runtime.tile_size,
        "tile_overlap": settings.tile_overlap,
        "tile_mode": "fit" if state.fit_tiles else "fixed",
        "tile_batch_size": runtime.batch_size,
        "warmup_ms": None
        if runtime.warmup_seconds is None
        else round(runtime.warmup_seconds * 1000, 1),
        "max_concurrency": settings.max_concurrency,
        "max_queue": settings.max_queue,
        "batching": _describe_batching(state),
        "encoding": {
            "png": describe_png_writer(state.encode_options),
            "jpeg_quality": state.encode_options.jpeg_quality,
            "formats": [output_format.media_type for output_format in OutputFormat],
        },
    }


def _describe_batching(state: ServiceState) -> dict[str, Any] | None:
    if state.batcher is None:
        return None
    stats = state.batcher.stats
    return {
        "batch_wait_ms": state.settings.batch_wait_ms,
        "batches": stats.batches,
        "fill": None if stats.fill is None else round(stats.fill, 3),
        "shared_batches": stats.shared_batches,
    }


def _batcher(settings: Settings, runtime: UpscalerRuntime, fit: bool) -> TileBatcher | None:
    # Fitted tiles differ in shape from image to image, and one tile per call leaves nothing to
    # share: the batcher only pays with fixed tiles batched several at a time (GPUs).
    if fit or runtime.batch_size == 1:
        return None
    return TileBatcher(
        runtime.run,
        batch_size=runtime.batch_size,
        tile_shape=(runtime.tile_size, runtime.tile_size, 3),
        max_wait_seconds=settings.batch_wait_ms / 1000,
    )


def _response_headers(result: UpscaleResult) -> dict[str, str]:
    timing = ", ".join(
        f"{name};dur={seconds * 1000:.1f}"
        for name, seconds in (
            ("decode", result.decode_seconds),
            ("model", result.inference_seconds),
            ("encode", result.encode_seconds),
        )
    )
    return {
        "X-Upscaler-Provider": result.provider,
        "X-Inference-Time-Ms": f"{result.inference_seconds * 1000:.1f}",
        "X-Input-Size": f"{result.input_width}x{result.input_height}",
        "X-Output-Size": f"{result.output_width}x{result.output_height}",
        "Server-Timing": timing,
        # Caches must not serve a WebP to a client that asked for PNG.
        "Vary": "Accept",
    }


#: How often a running upscale checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.5


@contextlib.asynccontextmanager
async def _cancel_when_disconnected(request: Request) -> AsyncIterator[threading.Event]:
    """Yields an event that is set when the client disconnects, for the worker thread to poll.

    The upscale runs in a thread that cannot be cancelled from the event loop; it checks this
    event between groups of tiles instead (see `upscale_image_bytes`), so a client that gives
    up stops costing model time within one group of tiles.
    """
    cancel = threading.Event()

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
        cancel.set()

    watcher = asyncio.create_task(watch())
    try:
        yield cancel
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def create_app(
    settings: Settings | None = None,
    *,
    runtime_factory: RuntimeFactory | None = None,
) -> FastAPI:
    """Builds the upscaling app.

    The model is loaded when the app starts (its lifespan), not here, so building an app is
    cheap. A model that cannot be loaded makes start-up fail with `ModelLoadError` naming the
    path, and uvicorn exits. Warm-up then runs in the background: `/healthz` answers at once,
    `/readyz` and `/upscale` answer 503 until the warm-up finished.

    Args:
        settings: Settings to use; read from the environment when omitted.
        runtime_factory: Builds the runtime from the settings (tests substitute their own);
            defaults to `UpscalerRuntime.from_settings`.

    Returns:
        The FastAPI app.
    """
    settings = settings or Settings()
    make_runtime = runtime_factory or UpscalerRuntime.from_settings
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _ensure_log_output()
        try:
            # Loading can take seconds (CUDA initialisation); keep the event loop free meanwhile.
            runtime = await anyio.to_thread.run_sync(make_runtime, settings)
        except ModelLoadError as exc:
            logger.error("cannot start: %s", exc)
            raise
        fit = fits_tiles(settings.tile_mode, runtime.primary_provider)
        state = ServiceState(
            settings=settings,
            runtime=runtime,
            gate=AdmissionGate(
                settings.max_concurrency, settings.max_queue, settings.retry_after_seconds
            ),
            uploads=AdmissionGate(
                settings.max_concurrent_uploads,
                0,
                settings.retry_after_seconds,
                busy_message="too many uploads are arriving at once; retry later",
            ),
            limiter=anyio.CapacityLimiter(settings.max_concurrency),
            encode_options=EncodeOptions.from_settings(settings),
            fit_tiles=fit,
            batcher=_batcher(settings, runtime, fit),
        )
        metrics.track_queue(lambda: state.gate.waiting)
        metrics.set_provider(runtime.primary_provider, runtime.fallback)
        app.state.service = state
        warm_up = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            warm_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm_up
            if state.batcher is not None:
                state.batcher.close()
            app.state.service = None

    app = FastAPI(
        title="EDSR upscaler",
        summary="x4 image super-resolution with an EDSR model on onnxruntime.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    install_error_handlers(app)
    app.add_middleware(UpscaleMetricsMiddleware, metrics=metrics)

    @app.post(
        _UPSCALE_PATH,
        summary="Upscale an image",
        description=(
            "Send an image (JPEG, PNG, WebP, BMP, TIFF or GIF) as multipart field `file` or as "
            "the raw body with an `image/*` Content-Type; receive an image with exactly scale x "
            "its width and height: PNG by default, lossless WebP for `Accept: image/webp`, JPEG "
            "for `Accept: image/jpeg` (alpha flattened onto white). Alpha, greyscale and the ICC "
            "profile are kept; EXIF orientation is applied; 16-bit images become 8 bits."
        ),
        response_class=Response,
        responses={**_UPSCALE_SUCCESS, **UPSCALE_ERROR_RESPONSES},
        openapi_extra=_UPLOAD_OPENAPI,
    )
    async def upscale(
        request: Request,
        state: ReadyState,
        formats: AcceptedFormats,
        quality: RequestedQuality,
        data: UploadedBytes,
    ) -> Response:
        # Reading the header is cheap and rejects bad or oversized files before they queue.
        info = await run_in_threadpool(inspect_image, data, max_pixels=settings.max_input_pixels)
        ensemble = quality is Quality.MAX
        if ensemble and info.pixels > settings.max_ensemble_input_pixels:
            raise ImageTooLargeError(
                f"quality=max runs the model 8 times, so it takes images of up to "
                f"{settings.max_ensemble_input_pixels} pixels; this one is {info.width}x"
                f"{info.height} = {info.pixels} pixels: send it with quality=standard"
            )
        scale = state.runtime.scale
        output_format = choose_format_for_size(formats, info.width * scale, info.height * scale)
        async with state.gate.slot():
            # A client that gave up while queued must not cost an inference.
            if await request.is_disconnected():
                raise ClientDisconnectedError("the client disconnected while queued")
            with metrics.inflight.track_inprogress():
                async with _cancel_when_disconnected(request) as cancel:
                    result = await anyio.to_thread.run_sync(
                        partial(
                            upscale_image_bytes,
                            data,
                            state.runtime,
                            overlap=settings.tile_overlap,
                            max_input_pixels=settings.max_input_pixels,
                            output_format=output_format,
                            encode_options=state.encode_options,
                            batcher=state.batcher,
                            fit=state.fit_tiles,
                            ensemble=ensemble,
                            cancel=cancel,
                        ),
                        limiter=state.limiter,
                    )
        metrics.observe_upscale(result.input_pixels, result.output_pixels, result.inference_seconds)
        return Response(
            content=result.content,
            media_type=result.output_format.media_type,
            headers={**_response_headers(result), "X-Upscaler-Quality": quality.value},
        )

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: the model is loaded and warmed up",
        responses={503: {"description": "Still starting, warming up, or warm-up failed."}},
    )
    async def readyz(request: Request) -> JSONResponse:
        state: ServiceState | None = request.app.state.service
        # Like /upscale's 503s, a not-ready answer says when to look again.
        retry = {"Retry-After": str(settings.retry_after_seconds)}
        if state is None:
            return JSONResponse({"status": "starting"}, status_code=503, headers=retry)
        description = _describe(state)
        if state.warmup_error is not None:
            body = {"status": "failed", "detail": state.warmup_error, **description}
            return JSONResponse(body, status_code=503, headers=retry)
        if not state.ready:
            body = {"status": "warming_up", **description}
            return JSONResponse(body, status_code=503, headers=retry)
        return JSONResponse({"status": "ready", **description})

    # HEAD too, as load balancers and uptime checkers often probe with it (same status, no
    # body); left out of the OpenAPI page, where it would only repeat the GET operations.
    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(content=body, headers={"Content-Type": content_type})

    return app


app = create_app()
