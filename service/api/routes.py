"""The endpoints, as plain functions on one `APIRouter`: `POST /upscale`, the models, the probes
and metrics.

A request reads top to bottom: the parameters of `upscale` (`service.api.deps`) check the model, the
Accept header, the quality and the upload in that order, then the model's pipeline
(`service.core.pipeline`) checks the header, waits for a slot and does the work in a worker thread.
Errors are domain exceptions, mapped to statuses in one table (`service.api.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.auth import has_access, require_api_key, require_api_key_for_metrics
from service.api.context import context_of
from service.api.deps import (
    MODEL_STATE_KEY,
    UPLOAD_FIELD,
    AcceptedFormats,
    KeepMetadata,
    LoadedService,
    ReadyService,
    RequestedModel,
    RequestedQuality,
    UploadedBytes,
)
from service.api.errors import UPSCALE_ERROR_RESPONSES, ErrorBody
from service.api.middleware import ACCESS_STATE_KEY
from service.api.urlinput import upload_openapi
from service.config import Settings
from service.core.choice import AUTO, Auto, Choice
from service.core.lifecycle import Serving
from service.core.pipeline import Quality, UpscaleResult
from service.core.registry import ModelRegistry
from service.exceptions import ClientDisconnectedError
from service.imaging.encode import OutputFormat, describe_png_writer

router = APIRouter()

UPSCALE_PATH = "/upscale"
#: How often a running upscale checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.5

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD_OPENAPI = upload_openapi(
    "The image, as multipart field `file` or as the raw request body; or, with "
    'UPSCALER_URL_INPUT=true, `{"image_url": "https://..."}` as a JSON body.',
    UPLOAD_FIELD,
)
_HEADERS = {
    "X-Upscaler-Model": "Name of the model that ran: the `model` parameter, the one `auto` "
    "chose, or the default.",
    "X-Upscaler-Evidence": "Only when `auto` chose: what the input showed and found, e.g. "
    "`jpeg-quality=72; webp-quality=none; noise=1.3; sharpness=0.70; aliasing=0.71; "
    "hard-edges=0.00; flat=0.02; found=jpeg` (`found=none`: a clean photograph, the clean "
    "model ran).",
    "X-Upscaler-Model-Version": "Version of that model: the first 12 hex digits of its ONNX "
    "file's SHA-256 (changes when a new file is hot-reloaded).",
    "X-Upscaler-Provider": "onnxruntime execution provider that ran the model (`openvino:CPU` "
    "on OpenVINO).",
    "X-Upscaler-Engine": "Engine that ran the model: `onnxruntime` or `openvino`.",
    "X-Upscaler-Device": "Where the model ran: `CPU` or `GPU`.",
    "X-Upscaler-Precision": "What the model computed in: `fp32`, `fp16` or `bf16`.",
    "X-Inference-Time-Ms": "Model time in milliseconds (excludes queueing, decoding, encoding).",
    "X-Input-Size": "Input WIDTHxHEIGHT after EXIF rotation.",
    "X-Output-Size": "Output WIDTHxHEIGHT.",
    "X-Upscaler-Quality": "`standard` or `max`.",
    "Server-Timing": "decode, model and encode durations in milliseconds "
    "(`decode;dur=1.2, model;dur=45.0, encode;dur=8.1`), with `choose` (the evidence) when "
    "`auto` chose.",
    "Vary": "`Accept`: the format depends on it.",
    "X-Request-ID": "The request's ID: the client's own `X-Request-ID` when it is at most 64 "
    "characters of `A-Z a-z 0-9 . _ -`, else a generated one; on every response and log line.",
}
#: The headers of a successful upscale that browsers on other origins may read (CORS).
RESPONSE_HEADERS = tuple(name for name in _HEADERS if name not in ("Vary", "X-Request-ID"))
_UPSCALE_SUCCESS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upscaled image, exactly scale x the input's width and height: PNG "
        "by default, lossless WebP for `Accept: image/webp`, JPEG for `Accept: image/jpeg`.",
        "content": {output_format.media_type: _BINARY for output_format in OutputFormat},
        "headers": {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in _HEADERS.items()
        },
    }
}


_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "API keys are configured (UPSCALER_API_KEYS) and the request carries "
        "no `Authorization: Bearer KEY` header, or an unknown key. Has `WWW-Authenticate: "
        "Bearer`; refused before the body is read.",
    }
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_UNAUTHORIZED,
    **UPSCALE_ERROR_RESPONSES,
    422: {
        "model": ErrorBody,
        "description": UPSCALE_ERROR_RESPONSES[422]["description"].rstrip(".")
        + ", or a `model` that is not loaded (the detail lists the loaded ones).",
    },
}


@router.post(
    UPSCALE_PATH,
    summary="Upscale an image",
    description=(
        "Send an image (JPEG, PNG, WebP, BMP, TIFF or GIF) as multipart field `file` or as "
        "the raw body with an `image/*` Content-Type; receive an image with exactly scale x "
        "its width and height: PNG by default, lossless WebP for `Accept: image/webp`, JPEG "
        "for `Accept: image/jpeg` (alpha flattened onto white). Alpha, greyscale and the ICC "
        "profile are kept; EXIF orientation is applied; 16-bit images become 8 bits. EXIF and "
        "XMP are dropped unless `metadata=keep`."
    ),
    response_class=Response,
    responses={**_UPSCALE_SUCCESS, **_ERROR_RESPONSES},
    openapi_extra=_UPLOAD_OPENAPI,
    # First of all, so that a request without a valid key costs no byte of its body.
    dependencies=[Depends(require_api_key)],
)
async def upscale(
    request: Request,
    state: ReadyService,
    selection: RequestedModel,
    formats: AcceptedFormats,
    quality: RequestedQuality,
    keep_metadata: KeepMetadata,
    data: UploadedBytes,
) -> Response:
    """Upscales one image: header check, a slot, then decode → model → encode in a thread."""
    metrics = context_of(request).metrics
    # Reading the header is cheap and rejects bad or oversized files before they queue.
    check = selection.pipeline.check
    output_format, header = await run_in_threadpool(check, data, formats, quality)
    work = selection.estimate_seconds(header.width, header.height, quality)
    async with state.gate.slot(work, max_wait=state.settings.max_wait_seconds):
        # A client that gave up while queued must not cost an inference.
        if await request.is_disconnected():
            raise ClientDisconnectedError("the client disconnected while queued")
        with metrics.inflight.track_inprogress():
            async with _cancel_when_disconnected(request) as cancel:
                run = partial(selection.run, keep_metadata=keep_metadata)
                choice, result = await anyio.to_thread.run_sync(
                    run, data, output_format, quality, cancel, limiter=state.limiter
                )
    model = choice.model
    setattr(request.state, MODEL_STATE_KEY, model.name)
    metrics.observe_upscale(
        result.input_pixels, result.output_pixels, result.inference_seconds, model.name
    )
    setattr(request.state, ACCESS_STATE_KEY, _access_fields(result, choice))
    return Response(
        content=result.content,
        media_type=result.output_format.media_type,
        headers=_response_headers(result, choice, quality),
    )


def _access_fields(result: UpscaleResult, choice: Choice) -> dict[str, Any]:
    """What the access log line adds for an upscale (see `service.logs`)."""
    model = choice.model
    evidence = {"evidence": choice.describe()} if choice.evidence else {}
    return {
        "model": model.name,
        "model_version": model.version,
        "decode_ms": round(result.decode_seconds * 1000, 1),
        "model_ms": round(result.inference_seconds * 1000, 1),
        "encode_ms": round(result.encode_seconds * 1000, 1),
        "input_size": f"{result.input_width}x{result.input_height}",
        **evidence,
    }


def _response_headers(result: UpscaleResult, choice: Choice, quality: Quality) -> dict[str, str]:
    model = choice.model
    info = model.engine.info
    steps = [
        ("decode", result.decode_seconds),
        ("model", result.inference_seconds),
        ("encode", result.encode_seconds),
    ]
    evidence = choice.describe()
    if evidence is not None:
        steps.insert(1, ("choose", choice.seconds))
    return {
        "X-Upscaler-Model": model.name,
        "X-Upscaler-Model-Version": model.version,
        "X-Upscaler-Provider": info.provider,
        "X-Upscaler-Engine": info.engine,
        "X-Upscaler-Device": info.device,
        "X-Upscaler-Precision": info.precision,
        "X-Inference-Time-Ms": f"{result.inference_seconds * 1000:.1f}",
        "X-Input-Size": f"{result.input_width}x{result.input_height}",
        "X-Output-Size": f"{result.output_width}x{result.output_height}",
        "X-Upscaler-Quality": quality.value,
        "Server-Timing": ", ".join(f"{name};dur={s * 1000:.1f}" for name, s in steps),
        # Caches must not serve a WebP to a client that asked for PNG.
        "Vary": "Accept",
        **({"X-Upscaler-Evidence": evidence} if evidence is not None else {}),
    }


@contextlib.asynccontextmanager
async def _cancel_when_disconnected(request: Request) -> AsyncIterator[threading.Event]:
    """Yields an event that is set when the client disconnects, for the worker thread to poll.

    The upscale runs in a thread that cannot be cancelled from the event loop; the tiler checks
    this event between model calls instead, so a client that gives up stops costing model time
    within one call. It is set too when the block ends otherwise: a request cancelled while its
    thread runs (uvicorn cancels those left after the drain) has let its slot and its thread's
    token go, and its thread must stop at its next tile, not run on to the end beside others.
    """
    cancel = threading.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, cancel))
    try:
        yield cancel
    finally:
        cancel.set()  # (the thread has ended when the block ends normally: no harm then)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
    cancel.set()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """Always ok while the process runs."""
    return {"status": "ok"}


@router.get(
    "/models",
    summary="The models that POST /upscale can run",
    responses={
        **_UNAUTHORIZED,
        503: {"model": ErrorBody, "description": "The models are not loaded yet."},
    },
    dependencies=[Depends(require_api_key)],
)
async def list_models(state: LoadedService) -> dict[str, Any]:
    """`{"default": NAME or "auto", "auto": {...} or null, "models": [{name, description,
    degradation, scale, seconds_per_megapixel, benchmarks}], "estimated_wait_seconds": S}`.

    Before sending an image, a client can tell its user how long it will take: about its
    megapixels times the model's `seconds_per_megapixel` (timed on this host at warm-up; 8
    times that with `quality=max`; null before the warm-up), after `estimated_wait_seconds` in
    the queue (0 while a slot is free; POST /upscale refuses waits over
    UPSCALER_MAX_WAIT_SECONDS).

    `auto` is there when both a clean and a robust model are served: `{"clean": NAME,
    "robust": NAME, "description"}`, and it is then the default (what a request without
    `model` gets). The default model comes first in `models`. `benchmarks` holds the model
    card's Y-PSNR figures (dB, 4 pixels of border shaved) per kind of low-resolution input:
    `{kind: {"label", "psnr": {set: dB}, "bicubic_psnr": {set: dB}}}`, empty when the card has
    none. Answers once the
    models are loaded, warm or not (`/readyz` says when they are warm).
    """
    models = state.models
    auto = Auto.of(models)
    return {
        "default": _default_name(models),
        "auto": _describe_auto(auto) if auto else None,
        "models": [model.summary() for model in models],
        "estimated_wait_seconds": round(state.gate.estimated_wait(), 1),
    }


def _describe_auto(auto: Auto) -> dict[str, str]:
    return {
        "clean": auto.clean.name,
        "robust": auto.robust.name,
        "description": f"Chosen from each image: {auto.clean.name} for clean images, "
        f"{auto.robust.name} for JPEG-compressed, noisy, blurred or unsmoothly resized ones "
        "and for drawings and screenshots (the X-Upscaler-Evidence header says what was found).",
    }


@router.get(
    "/readyz",
    summary="Readiness: the models are loaded and warmed up",
    responses={503: {"description": "Still starting, warming up, or warm-up failed."}},
)
async def readyz(request: Request) -> JSONResponse:
    """`ready` with a description of the default model and a list of all, or 503
    `starting`/`draining`/`failed`/`warming_up` (`service.core.lifecycle.Readiness`)."""
    lifecycle = context_of(request).lifecycle
    readiness = lifecycle.readiness()
    serving = lifecycle.serving
    if serving is None:
        return _not_ready({"status": readiness.phase.value}, lifecycle.settings)
    # With API keys on, probes stay open but the models' paths, metadata and errors are for
    # key holders only (GET /models, which lists less, needs a key).
    describe = _describe(serving, lifecycle.reload_errors) if has_access(request) else {}
    body = {"status": readiness.phase.value, **describe}
    if readiness.ready:
        return JSONResponse(body)
    if describe and readiness.detail:
        body["detail"] = readiness.detail
    return _not_ready(body, serving.settings)


def _not_ready(body: dict[str, Any], settings: Settings) -> JSONResponse:
    # Like /upscale's 503s, a not-ready answer says when to look again.
    retry = {"Retry-After": str(settings.retry_after_seconds)}
    return JSONResponse(body, status_code=503, headers=retry)


def _warmup_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _default_name(models: ModelRegistry) -> str:
    """What a request without `model` gets: `auto` when the service chooses, else the model."""
    return AUTO if Auto.of(models) else models.default_name


def _describe_models(models: ModelRegistry) -> list[dict[str, Any]]:
    described = []
    default = _default_name(models)
    for model in models:
        info = model.engine.info
        described.append(
            {
                "name": model.name,
                "default": model.name == default,
                "version": model.version,
                "path": str(info.path),
                "scale": info.scale,
                "degradation": model.card.degradation,
                "provider": info.provider,
                "precision": info.precision,
                "warmup_ms": _warmup_ms(info.warmup_seconds),
                "seconds_per_megapixel": model.seconds_per_megapixel(),
            }
        )
    return described


def _describe(state: Serving, reload_errors: Mapping[str, str]) -> dict[str, Any]:
    # The top-level fields describe the default model (with `auto`, UPSCALER_DEFAULT_MODEL's),
    # as they did with one model; `models` lists every one (their
    # warm-up times show which are warm while warming up). The registry is read once, so that
    # a reload swapping it meanwhile cannot mix two versions.
    models = state.models
    default = models.default
    info, settings, encoding = default.engine.info, state.settings, default.pipeline.encode_options
    warmup = info.warmup_seconds
    return {
        "default_model": _default_name(models),
        "models": _describe_models(models),
        "model": {
            "name": models.default_name,
            "version": default.version,
            "path": str(info.path),
            "scale": info.scale,
            "input": info.input_name,
            "output": info.output_name,
            "metadata": dict(info.metadata),
        },
        "reload_errors": dict(reload_errors),
        "engine": info.engine,
        "device": info.device,
        "requested_engine": info.requested_engine,
        "engine_config": dict(info.engine_config),
        "providers": list(info.providers),
        "requested_providers": list(info.requested_providers),
        "skipped_providers": dict(info.skipped_providers),
        "fallback": info.fallback,
        "fallback_reason": info.fallback_reason,
        "precision": info.precision,
        "precision_setting": info.precision_setting,
        "precision_reason": info.precision_reason,
        "tile_size": info.tile_size,
        "tile_overlap": settings.tile_overlap,
        "tile_mode": info.tile_mode,
        "tile_batch_size": info.batch_size,
        "warmup_ms": _warmup_ms(warmup),
        "max_concurrency": settings.max_concurrency,
        "max_queue": settings.max_queue,
        "max_wait_seconds": settings.max_wait_seconds,
        "estimated_wait_seconds": round(state.gate.estimated_wait(), 1),
        "encoding": {
            "png": describe_png_writer(encoding),
            "jpeg_quality": encoding.jpeg_quality,
            "formats": [output_format.media_type for output_format in OutputFormat],
        },
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(require_api_key_for_metrics)],
)
async def prometheus_metrics(request: Request) -> Response:
    """The app's metrics, in the format the scraper asks for."""
    body, content_type = context_of(request).metrics.render(request.headers.get("accept"))
    return Response(content=body, headers={"Content-Type": content_type})


# HEAD too, as load balancers and uptime checkers often probe with it (same status, no body);
# left out of the OpenAPI page, where it would only repeat the GET operations.
for _path, _probe in (("/healthz", healthz), ("/readyz", readyz)):
    router.add_api_route(_path, _probe, methods=["HEAD"], include_in_schema=False)
