"""FastAPI dependencies: the shared service state, readiness, and the size-limited upload."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Depends, Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from service.encoding import OutputFormat
from service.exceptions import (
    ClientDisconnectedError,
    EmptyUploadError,
    MissingFieldError,
    NotReadyError,
    UnsupportedMediaTypeError,
    UploadTimeoutError,
    UploadTooLargeError,
)
from service.negotiation import negotiate_format
from service.state import ServiceState

#: Name of the multipart field that carries the image.
UPLOAD_FIELD = "file"

#: Raw (non-multipart) bodies are accepted with these media types, or with none at all.
_RAW_MEDIA_TYPES = frozenset({"", "application/octet-stream"})


def get_state(request: Request) -> ServiceState:
    """The state built by the lifespan.

    Raises:
        NotReadyError: Before the lifespan has loaded the model.
    """
    state: ServiceState | None = getattr(request.app.state, "service", None)
    if state is None:
        settings = request.app.state.settings
        raise NotReadyError("the model is not loaded yet", settings.retry_after_seconds)
    return state


def get_ready_state(state: Annotated[ServiceState, Depends(get_state)]) -> ServiceState:
    """The state, once the model is warmed up.

    Raises:
        NotReadyError: While warming up, or if the warm-up failed.
    """
    retry_after = state.settings.retry_after_seconds
    if state.warmup_error is not None:
        raise NotReadyError(f"the model failed to warm up: {state.warmup_error}", retry_after)
    if not state.ready:
        raise NotReadyError("the model is warming up", retry_after)
    return state


ReadyState = Annotated[ServiceState, Depends(get_ready_state)]


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
            raise MissingFieldError(f"multipart field {UPLOAD_FIELD!r} is missing")
        if not isinstance(upload, UploadFile):
            raise MissingFieldError(f"multipart field {UPLOAD_FIELD!r} must be a file, not text")
        return await upload.read()


async def read_upload(request: Request, state: ReadyState) -> bytes:
    """Reads the uploaded image: multipart field `file`, or a raw `image/*` body.

    Raises:
        UploadTooLargeError: If Content-Length or the bytes received exceed the limit.
        UploadTimeoutError: If the body takes longer than the upload timeout to arrive.
        UnsupportedMediaTypeError: For any other Content-Type.
        MissingFieldError: If a multipart body lacks the `file` field.
        EmptyUploadError: If no bytes arrived.
        ClientDisconnectedError: If the client went away mid-upload.
    """
    limit = state.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(limit)

    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limited = Request(request.scope, _limited_receive(request.receive, limit))
    timeout = state.settings.upload_timeout_seconds
    try:
        with anyio.fail_after(timeout):
            if media_type == "multipart/form-data":
                data = await _read_multipart(limited)
            elif media_type.startswith("image/") or media_type in _RAW_MEDIA_TYPES:
                data = await _read_raw(limited)
            else:
                raise UnsupportedMediaTypeError(
                    f"Content-Type {media_type!r} is not supported; send multipart/form-data "
                    f"with a {UPLOAD_FIELD!r} field, or the image itself with an image/* "
                    "Content-Type"
                )
    except ClientDisconnect as exc:
        raise ClientDisconnectedError("the client disconnected during the upload") from exc
    except TimeoutError as exc:
        raise UploadTimeoutError(f"the upload did not arrive within {timeout:g} s") from exc
    if not data:
        raise EmptyUploadError("the upload is empty")
    return data


UploadedBytes = Annotated[bytes, Depends(read_upload)]


def output_format(request: Request) -> OutputFormat:
    """The response format the Accept header asks for (PNG by default).

    Declared before the upload in the endpoint, so a request that accepts nothing the service
    can write is refused before its body is read.

    Raises:
        NotAcceptableError: If the Accept header rules out PNG, WebP and JPEG alike.
    """
    return negotiate_format(request.headers.get("accept"))


NegotiatedFormat = Annotated[OutputFormat, Depends(output_format)]
