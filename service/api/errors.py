"""HTTP mapping of the domain exceptions: one table, one handler, one JSON shape.

Every error response is `{"detail": "<message>"}`; the core modules' messages are written for the
client, so they are passed through unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from service.exceptions import (
    ClientDisconnectedError,
    CorruptImageError,
    EmptyUploadError,
    ImageTooLargeError,
    InvalidParameterError,
    JobConflictError,
    JobNotFoundError,
    JobStoreFullError,
    JobsUnavailableError,
    MissingFieldError,
    NotAcceptableError,
    NotReadyError,
    OverloadedError,
    ResultExpiredError,
    ResultNotReadyError,
    StartupError,
    UnsupportedImageError,
    UnsupportedMediaTypeError,
    UploadTimeoutError,
    UploadTooLargeError,
    UpscalerError,
)

logger = logging.getLogger(__name__)

#: Status code for each domain exception. Subclasses inherit their base's code.
ERROR_STATUS: dict[type[UpscalerError], int] = {
    UploadTooLargeError: 413,
    UploadTimeoutError: 408,
    ImageTooLargeError: 413,
    NotAcceptableError: 406,
    UnsupportedMediaTypeError: 415,
    UnsupportedImageError: 415,
    EmptyUploadError: 422,
    InvalidParameterError: 422,
    MissingFieldError: 422,
    CorruptImageError: 422,
    NotReadyError: 503,
    OverloadedError: 503,
    JobsUnavailableError: 404,
    JobNotFoundError: 404,
    ResultNotReadyError: 404,
    JobConflictError: 409,
    ResultExpiredError: 410,
    JobStoreFullError: 507,
    # nginx's "client closed request": nobody reads it, but logs and metrics show what happened.
    ClientDisconnectedError: 499,
    # Only reachable if a model fails after start-up; never caused by user input.
    StartupError: 500,
}


class ErrorBody(BaseModel):
    """Body of every error response."""

    detail: str


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: OpenAPI documentation of the error responses of `POST /upscale`.
UPSCALE_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("Malformed multipart body."),
    406: _documented(
        "The Accept header allows none of image/png, image/webp, image/jpeg (nor */*, image/*), "
        "or the output is too large for every format it allows (WebP holds at most 16383 "
        "pixels a side, JPEG 65500)."
    ),
    408: _documented("The upload did not arrive within UPSCALER_UPLOAD_TIMEOUT_SECONDS."),
    413: _documented(
        "Request body (or the image at `image_url`, counted while it streams) over "
        "UPSCALER_MAX_UPLOAD_BYTES, image dimensions over "
        "UPSCALER_MAX_INPUT_PIXELS (decompression bombs included; nothing is decoded) or, with "
        "quality=max, over UPSCALER_MAX_ENSEMBLE_INPUT_PIXELS."
    ),
    415: _documented(
        "Content-Type is neither multipart/form-data nor image/* (nor application/json with "
        "UPSCALER_URL_INPUT on), or the file is not an image in a supported format (JPEG, PNG, "
        "WebP, BMP, TIFF, GIF) or pixel mode."
    ),
    422: _documented(
        "Empty upload, missing `file` field, a truncated/corrupt file of a supported format, "
        "an unknown `quality` or `metadata`, or an `image_url` refused (the detail names the "
        "rule: scheme, address range, redirects) or that could not be fetched."
    ),
    503: _documented(
        "Model still warming up, all inference slots and the queue are full, the estimated "
        "wait for a slot is over UPSCALER_MAX_WAIT_SECONDS (Retry-After: when it would not "
        "be), or UPSCALER_MAX_CONCURRENT_UPLOADS bodies are already arriving. Carries a "
        "Retry-After header."
    ),
}


def status_for(exc: UpscalerError) -> int:
    """Looks up the status code of a domain exception (500 if it is not in the table)."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


async def _handle_upscaler_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UpscalerError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after_seconds", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status >= 500 and status != 503:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc)
    elif status == 499:
        # The client is gone, so this response is never seen and uvicorn logs no access line:
        # without this, abandoned requests would show only in the metrics.
        logger.info("%s %s abandoned: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": exc.detail}, status_code=status, headers=headers)


def _describe_validation_error(error: dict[str, Any]) -> str:
    # ("query", "quality") reads "query 'quality'"; a bare ("body",) reads "body".
    source, *path = [str(part) for part in error.get("loc", ())] or ["request"]
    where = f"{source} {'.'.join(path)!r}" if path else source
    return f"{where}: {error.get('msg', 'invalid')}"


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own 422 body is a list of error objects; the service promises one shape for
    # every error, {"detail": "<message>"}, so the list is folded into one sentence.
    assert isinstance(exc, RequestValidationError)
    message = "; ".join(_describe_validation_error(error) for error in exc.errors())
    return JSONResponse({"detail": message or "invalid request"}, status_code=422)


#: The methods a 405's Allow header may name, in its order.
_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


async def _handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's 405 names only the methods of the first route whose path matched, but one
    # path may be several routes (`/jobs/{id}`: GET, PUT, DELETE): the Allow header lists them all.
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = [
            method
            for method in _METHODS
            if any(
                route.matches({**request.scope, "method": method})[0] is Match.FULL
                for route in request.app.router.routes
            )
        ]
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)


async def _handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the traceback itself after this response is sent; the client only learns
    # that it was not its fault.
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Registers the JSON error handlers on `app`."""
    app.add_exception_handler(UpscalerError, _handle_upscaler_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(HTTPException, _handle_http_error)
    app.add_exception_handler(Exception, _handle_unexpected_error)
