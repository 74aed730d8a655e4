"""What the routes' parameters are: the served models and gates (reached through an `Annotated`
dependency that asks the lifecycle for readiness), the queries and Accept header, and the
size-limited upload.

`POST /upscale` declares them in the order they run, cheapest first: the model and quality
queries and the Accept header are checked before a single byte of the body is read, and the body
is counted while it arrives, before the request queues for a model slot.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Depends, Query, Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from service.api.context import context_of
from service.api.urlinput import JSON_MEDIA_TYPE, read_image_url
from service.core.choice import Fixed, Selection, select
from service.core.lifecycle import Serving
from service.core.pipeline import Quality
from service.exceptions import (
    ClientDisconnectedError,
    EmptyUploadError,
    InvalidParameterError,
    MissingFieldError,
    UnsupportedMediaTypeError,
    UploadTimeoutError,
    UploadTooLargeError,
)
from service.imaging.encode import OutputFormat
from service.imaging.negotiation import acceptable_formats

#: Name of the multipart field that carries the image.
UPLOAD_FIELD = "file"

#: Where `requested_model` leaves the chosen model's name in the request's state, for the
#: metrics middleware (which sees the request before and after the endpoint, not its parameters).
MODEL_STATE_KEY = "upscaler_model"

#: Raw (non-multipart) bodies are accepted with these media types, or with none at all.
_RAW_MEDIA_TYPES = frozenset({"", "application/octet-stream"})


def loaded_service(request: Request) -> Serving:
    """The models and gates once loaded, warm or not (`GET /models`).

    Raises:
        NotReadyError: Before the models are loaded.
    """
    return context_of(request).lifecycle.loaded()


def ready_service(request: Request) -> Serving:
    """The models and gates, once warm, unless the service is draining
    (`service.core.lifecycle.ModelLifecycle.ready`).

    Raises:
        NotReadyError: While starting, warming up, draining (SIGTERM), or if warm-up failed.
    """
    return context_of(request).lifecycle.ready()


LoadedService = Annotated[Serving, Depends(loaded_service)]
ReadyService = Annotated[Serving, Depends(ready_service)]


def requested_model(
    request: Request,
    state: ReadyService,
    model: Annotated[
        str | None,
        Query(
            description="Name of the model to run (GET /models lists them), or `auto`: chosen "
            "from the input (the clean model for clean images, the robust one for JPEG, "
            "noise, resizes without smoothing, drawings and screenshots) when both kinds are "
            "served. When omitted: "
            "`auto` when both kinds are served, else the default model (UPSCALER_DEFAULT_MODEL).",
        ),
    ] = None,
) -> Selection:
    """The `model` query parameter: a loaded model, or `auto` (`service.core.choice.select`).

    Checked before the upload is read, like `quality`, and with the service's one error shape.
    A named model is left in the request's state for the metrics' `model` label (the route
    leaves the one `auto` chose).

    Raises:
        UnknownModelError: For a name no loaded model has (422, listing the known names).
    """
    selection = select(state.models, model)
    if isinstance(selection, Fixed):
        setattr(request.state, MODEL_STATE_KEY, selection.model.name)
    return selection


RequestedModel = Annotated[Selection, Depends(requested_model)]


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """Wraps an ASGI receive channel so that the body is counted as it arrives.

    Content-Length can be absent (chunked uploads) or wrong, so the bytes are counted while
    streaming and the upload is refused as soon as it passes the limit, before the rest of it is
    read into memory.
    """
    received = 0

    async def receive_within_limit() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise UploadTooLargeError(limit)
        return message

    return receive_within_limit


async def _read_raw(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return bytes(body)


async def _read_multipart(request: Request) -> bytes:
    # Starlette's parser spools file parts to a temporary file beyond 1 MiB, so memory stays
    # bounded while the counting receive channel enforces the size limit.
    async with request.form(max_files=1, max_fields=16) as form:
        upload = form.get(UPLOAD_FIELD)
        if upload is None:
            # The multipart parser cannot tell a missing part from one cut off by a body that
            # ended early (it stops without an error), so the message names both.
            raise MissingFieldError(
                f"multipart field {UPLOAD_FIELD!r} is missing (or the body ended before that "
                "part was complete)"
            )
        if not isinstance(upload, UploadFile):
            raise MissingFieldError(f"multipart field {UPLOAD_FIELD!r} must be a file, not text")
        return await upload.read()


async def read_upload(request: Request, state: ReadyService) -> bytes:
    """Reads the uploaded image: multipart field `file`, a raw `image/*` body, or the image at
    the `image_url` of a JSON body (`service.api.urlinput`, when UPSCALER_URL_INPUT is on).

    Raises `UploadTooLargeError` (Content-Length or bytes received over the limit),
    `OverloadedError` (too many bodies arriving), `UploadTimeoutError`,
    `UnsupportedMediaTypeError`, `MissingFieldError`, `EmptyUploadError` or
    `ClientDisconnectedError`.
    """
    limit = state.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(limit)

    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == JSON_MEDIA_TYPE:  # {"image_url": ...}: fetched, not uploaded
        return await read_image_url(request, state)
    if media_type != "multipart/form-data" and not (
        media_type.startswith("image/") or media_type in _RAW_MEDIA_TYPES
    ):
        raise UnsupportedMediaTypeError(
            f"Content-Type {media_type!r} is not supported; send multipart/form-data with a "
            f"{UPLOAD_FIELD!r} field, or the image itself with an image/* Content-Type"
        )
    limited = Request(request.scope, _limited_receive(request.receive, limit))
    timeout = state.settings.upload_timeout_seconds
    try:
        # Bodies are read before the request queues for an upscale, so the number being read at
        # once is bounded separately: each can hold up to `limit` bytes while it arrives.
        async with state.uploads.slot():
            with anyio.fail_after(timeout):
                if media_type == "multipart/form-data":
                    data = await _read_multipart(limited)
                else:
                    data = await _read_raw(limited)
    except ClientDisconnect as exc:
        raise ClientDisconnectedError("the client disconnected during the upload") from exc
    except TimeoutError as exc:
        raise UploadTimeoutError(f"the upload did not arrive within {timeout:g} s") from exc
    if not data:
        raise EmptyUploadError("the upload is empty")
    return data


UploadedBytes = Annotated[bytes, Depends(read_upload)]


def accepted_formats(request: Request) -> tuple[OutputFormat, ...]:
    """The response formats the Accept header allows, most wanted first (PNG by default).

    The endpoint picks among them once it knows the image's size (WebP and JPEG have size
    limits). Declared before the upload, so a request that accepts nothing the service can
    write is refused before its body is read.

    Raises:
        NotAcceptableError: If the Accept header rules out PNG, WebP and JPEG alike.
    """
    return acceptable_formats(request.headers.get("accept"))


AcceptedFormats = Annotated[tuple[OutputFormat, ...], Depends(accepted_formats)]


def requested_quality(
    quality: Annotated[
        str,
        Query(
            description="`standard`, or `max` for the self-ensemble: 8 model runs averaged "
            "(8x the time, slightly sharper; inputs up to UPSCALER_MAX_ENSEMBLE_INPUT_PIXELS).",
            json_schema_extra={"enum": [member.value for member in Quality]},
        ),
    ] = Quality.STANDARD.value,
) -> Quality:
    """The `quality` query parameter.

    Parsed here rather than by FastAPI's validation so that a bad value is refused before the
    upload is read (FastAPI reads every dependency, the body included, before it reports
    validation errors) and with the service's one error shape, `{"detail": "..."}`.

    Raises:
        InvalidParameterError: For anything but `standard` or `max`.
    """
    try:
        return Quality(quality)
    except ValueError:
        allowed = " or ".join(repr(member.value) for member in Quality)
        raise InvalidParameterError(
            f"query parameter quality={quality!r} is not valid; use {allowed}"
        ) from None


RequestedQuality = Annotated[Quality, Depends(requested_quality)]


#: The values of the `metadata` query parameter: whether the photo's EXIF and XMP are kept.
METADATA_CHOICES = {"strip": False, "keep": True}


def requested_metadata(
    metadata: Annotated[
        str,
        Query(
            description="`strip` (the default): the output carries only the ICC profile; "
            "`keep`: also the input's EXIF and XMP (GPS position included), with the "
            "orientation reset to upright and the dimensions the output's.",
            json_schema_extra={"enum": list(METADATA_CHOICES)},
        ),
    ] = "strip",
) -> bool:
    """The `metadata` query parameter, as whether to keep EXIF and XMP; refused before the
    upload is read, like `quality`.

    Raises:
        InvalidParameterError: For anything but `strip` or `keep`.
    """
    if metadata not in METADATA_CHOICES:
        raise InvalidParameterError(
            f"query parameter metadata={metadata!r} is not valid; use 'strip' or 'keep'"
        )
    return METADATA_CHOICES[metadata]


KeepMetadata = Annotated[bool, Depends(requested_metadata)]
