"""Input by URL: `{"image_url": "https://..."}` as the JSON body of `POST /upscale` and of the
job routes, when `UPSCALER_URL_INPUT` is on.

The body is small and read under the same upload slot and timeout as an image; the image is
then fetched by `service.core.urlfetch.UrlFetcher` (every connection's address checked, the
byte limit enforced while streaming) and goes through exactly the checks of an upload.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect

from service.api.context import context_of
from service.core.lifecycle import Serving
from service.exceptions import (
    ClientDisconnectedError,
    EmptyUploadError,
    InvalidParameterError,
    UploadTimeoutError,
    UrlInputDisabledError,
)

JSON_MEDIA_TYPE = "application/json"
#: Largest JSON body: a URL, not an image.
MAX_JSON_BYTES = 8 * 1024
#: The one field of the body.
URL_FIELD = "image_url"

_BINARY = {"schema": {"type": "string", "format": "binary"}}

#: The request body's OpenAPI schema (beside the image's).
JSON_BODY_SCHEMA: dict[str, Any] = {
    "schema": {
        "type": "object",
        "required": [URL_FIELD],
        "properties": {
            URL_FIELD: {
                "type": "string",
                "format": "uri",
                "description": "http(s) URL of the image; only with UPSCALER_URL_INPUT=true.",
            }
        },
        "additionalProperties": False,
    }
}


def upload_openapi(description: str, upload_field: str) -> dict[str, Any]:
    """The `openapi_extra` of a route that takes an image: multipart field `upload_field`, the
    raw body, or the JSON `image_url` body (which `document_url_input` removes while off)."""
    multipart = {"type": "object", "required": [upload_field]}
    multipart["properties"] = {upload_field: _BINARY["schema"]}
    content = {
        "multipart/form-data": {"schema": multipart},
        "image/*": _BINARY,
        JSON_MEDIA_TYPE: JSON_BODY_SCHEMA,
    }
    return {"requestBody": {"required": True, "description": description, "content": content}}


def document_url_input(schema: dict[str, Any], enabled: bool) -> None:
    """Makes the OpenAPI document offer the JSON `image_url` body only when input by URL is on
    (otherwise the service answers it with 415, and a generated client would send it)."""
    if enabled:
        return
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            body = operation.get("requestBody") if isinstance(operation, dict) else None
            content = body.get("content", {}) if isinstance(body, dict) else {}
            if content.get(JSON_MEDIA_TYPE) == JSON_BODY_SCHEMA:
                del content[JSON_MEDIA_TYPE]


def _image_url(body: bytes) -> str:
    """The URL of a `{"image_url": "..."}` body.

    Raises:
        InvalidParameterError: For anything else.
    """
    shape = f'the JSON body must be {{"{URL_FIELD}": "https://..."}}'
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError: not JSON, not UTF-8, or an integer past Python's 4300-digit limit;
        # RecursionError: thousands of nested brackets.
        raise InvalidParameterError(f"{shape}; it is not valid JSON") from None
    if not isinstance(document, dict) or set(document) != {URL_FIELD}:
        raise InvalidParameterError(shape)
    url = document[URL_FIELD]
    if not isinstance(url, str) or not url.strip():
        raise InvalidParameterError(shape)
    return url.strip()


async def _read_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise InvalidParameterError(
                f"the JSON body is over {MAX_JSON_BYTES} bytes; it holds only {URL_FIELD!r}"
            )
    return bytes(body)


async def read_image_url(request: Request, state: Serving) -> bytes:
    """The image at the body's `image_url`, fetched under the upload limits.

    Raises:
        UrlInputDisabledError: UPSCALER_URL_INPUT is off (415).
        InvalidParameterError: The body is not `{"image_url": "..."}` (422).
        UrlRefusedError, UrlFetchError: See `UrlFetcher.fetch` (422).
        ImageUrlTooLargeError: Over UPSCALER_MAX_UPLOAD_BYTES (413).
        OverloadedError, UploadTimeoutError, EmptyUploadError, ClientDisconnectedError.
    """
    settings = state.settings
    if not settings.url_input:
        raise UrlInputDisabledError(
            f"Content-Type {JSON_MEDIA_TYPE!r} ({{{URL_FIELD!r}: URL}}) is off on this service "
            "(UPSCALER_URL_INPUT); send the image itself, as multipart field 'file' or with an "
            "image/* Content-Type"
        )
    fetcher = context_of(request).fetcher
    timeout = settings.upload_timeout_seconds
    # Fetching holds up to the byte limit in memory, as an upload does: the same slots.
    async with state.uploads.slot():
        try:
            with anyio.fail_after(timeout):
                body = await _read_body(request)
        except TimeoutError:
            raise UploadTimeoutError(f"the body did not arrive within {timeout:g} s") from None
        except ClientDisconnect as exc:
            raise ClientDisconnectedError("the client disconnected during the upload") from exc
        url = _image_url(body)
        data = await anyio.to_thread.run_sync(fetcher.fetch, url, settings.max_upload_bytes)
    if not data:
        raise EmptyUploadError(f"the {URL_FIELD} answered an empty body")
    return data
