"""The job routes: upscales that outlive a connection (`service.core.jobs`).

`POST /jobs` and `PUT /jobs/{id}` take exactly what `POST /upscale` takes (the same
dependencies, in the same order: key, model, Accept, quality, then the body; the same header
check before anything is stored) plus `webhook` and `webhook_events_filter`, and answer 202 with
the job and its `Location`. `GET /jobs/{id}` shows it, `/events` streams its changes
(server-sent events), `/result` serves the image, `/preview` the tiles finished so far,
`POST /jobs/{id}/cancel` stops it and `DELETE` removes it.

A job belongs to the API key that submitted it (a digest of a digest of the key is stored,
never the key): another key's job is a 404, as if it did not exist. Without UPSCALER_JOBS_DIR
(or on Ray Serve) every route answers 404 with the reason.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.auth import require_api_key
from service.api.context import context_of
from service.api.deps import (
    UPLOAD_FIELD,
    AcceptedFormats,
    KeepMetadata,
    RequestedModel,
    RequestedQuality,
    UploadedBytes,
)
from service.api.errors import UPSCALE_ERROR_RESPONSES, ErrorBody
from service.api.urlinput import upload_openapi
from service.core.choice import AUTO, Fixed, Selection
from service.core.jobs import webhooks
from service.core.jobs.service import JobService
from service.core.jobs.store import NewJob
from service.core.pipeline import Pipeline, Quality
from service.core.urlfetch import check_url, refusal
from service.exceptions import (
    InvalidParameterError,
    JobsUnavailableError,
    NotAcceptableError,
    ResultExpiredError,
    ResultNotReadyError,
    UrlRefusedError,
)
from service.imaging.decode import ImageInfo, inspect_image
from service.imaging.encode import OutputFormat

router = APIRouter(tags=["jobs"])

JOBS_PATH = "/jobs"
#: A client's job ID: also a safe path segment.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: How often an event stream checks for the drain; keep-alives go every `KEEPALIVE_TICKS`.
STREAM_TICK_SECONDS = 1.0
#: Idle proxies cut connections after about 60 s: a comment every 15 s keeps streams open.
KEEPALIVE_TICKS = 15
_RESULT_CHUNK = 256 * 1024


def job_service(request: Request) -> JobService:
    """The app's jobs.

    Raises:
        JobsUnavailableError: When the app keeps none (404, saying why).
    """
    context = context_of(request)
    if context.jobs is None:
        raise JobsUnavailableError(context.jobs_off)
    return context.jobs


Jobs = Annotated[JobService, Depends(job_service)]


def owner_of(key: Annotated[str, Depends(require_api_key)]) -> str:
    """Whose jobs the request may see: a digest of its API key's digest ("" without keys).

    The key is the one `require_api_key` accepted (the same dependency, run once per request),
    so the owner cannot drift from the check. The digest of a digest keeps the job database
    from holding the keys file's own values.
    """
    if not key:
        return ""
    inner = hashlib.sha256(key.encode()).digest()
    return hashlib.sha256(b"upscaler-job-owner\0" + inner).hexdigest()


Owner = Annotated[str, Depends(owner_of)]


def requested_job_id(job_id: str) -> str:
    """A client-chosen ID (`PUT /jobs/{id}`), checked before the body is read.

    Raises:
        InvalidParameterError: Unless 1-64 characters of `A-Z a-z 0-9 _ -`.
    """
    if not JOB_ID.fullmatch(job_id):
        raise InvalidParameterError(
            f"job ID {job_id[:80]!r} is not valid: use 1-64 characters of A-Z a-z 0-9 _ -"
        )
    return job_id


@dataclass(frozen=True)
class Webhook:
    """Where to announce the job's events, and which ones."""

    url: str
    events: tuple[str, ...]


def requested_webhook(
    jobs: Jobs,
    webhook: Annotated[
        str | None,
        Query(
            description="http(s) URL told of the job's events by a signed POST (Standard "
            "Webhooks); needs UPSCALER_WEBHOOK_SECRET. The body: `{type, timestamp, data: JOB}`."
        ),
    ] = None,
    webhook_events_filter: Annotated[
        list[str] | None,
        Query(
            description="Events to send: `start`, `completed` (repeated or comma-separated; "
            "both when omitted). `completed` is retried with backoff on 429, 5xx and errors.",
        ),
    ] = None,
) -> Webhook | None:
    """The `webhook` and `webhook_events_filter` query parameters, checked before the body.

    Raises:
        InvalidParameterError: Webhooks off, an unknown event, or a filter without a webhook.
        UrlRefusedError: A URL of the wrong form, or an IP address in a refused range.
    """
    names = [name.strip() for value in webhook_events_filter or () for name in value.split(",")]
    unknown = sorted({name for name in names if name not in webhooks.EVENTS})
    if unknown:
        raise InvalidParameterError(
            f"webhook_events_filter: unknown event(s) {', '.join(map(repr, unknown))}; "
            f"use {' or '.join(map(repr, webhooks.EVENTS))}"
        )
    if webhook is None:
        if names:
            raise InvalidParameterError("webhook_events_filter needs a webhook URL")
        return None
    if not jobs.webhooks_enabled:
        raise InvalidParameterError(
            "webhooks are off on this service: it has no UPSCALER_WEBHOOK_SECRET to sign them"
        )
    _check_webhook_url(webhook, jobs)
    events = tuple(name for name in webhooks.EVENTS if name in names) or webhooks.EVENTS
    return Webhook(webhook, events)


def _check_webhook_url(url: str, jobs: JobService) -> None:
    # The address of each delivery's connection is checked when it is made; a literal address
    # in a refused range is refused now already, so the client learns it at once.
    try:
        host = check_url(url).host
    except UrlRefusedError as exc:
        raise UrlRefusedError(f"webhook refused: {exc}") from None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    rule = refusal(address, jobs.settings.url_allow_networks)
    if rule is not None:
        raise UrlRefusedError(
            f"webhook refused: {host} is a {rule} address "
            "(UPSCALER_URL_ALLOW_NETWORKS can allow a network)"
        )


RequestedWebhook = Annotated[Webhook | None, Depends(requested_webhook)]


# --- OpenAPI ----------------------------------------------------------------------------------

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_SUBMIT_BODY = upload_openapi(
    "What POST /upscale takes: the image as multipart field `file` or as the raw body, or "
    '(UPSCALER_URL_INPUT=true) `{"image_url": "https://..."}`.',
    UPLOAD_FIELD,
)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


_UNAUTHORIZED = {401: _error("API keys are configured and the key is missing or unknown.")}
_NOT_FOUND = {
    404: _error(
        "No such job for this key (never submitted, deleted, forgotten a day after its "
        "result expired, or another key's), or this service keeps no jobs (the detail says "
        "why: UPSCALER_JOBS_DIR unset, Ray Serve)."
    )
}
_JOB_EXAMPLE = "The job: `id`, `status`, `progress`, `queue_position`, times, `result`, `detail`."
_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": f"Stored and queued. {_JOB_EXAMPLE} `Location` names it."},
    **_UNAUTHORIZED,
    **UPSCALE_ERROR_RESPONSES,
    404: _NOT_FOUND[404],
    422: _error(
        UPSCALE_ERROR_RESPONSES[422]["description"].rstrip(".")
        + ", an unknown `model`, a `webhook` without UPSCALER_WEBHOOK_SECRET or in a refused "
        "address range, or an unknown `webhook_events_filter` event."
    ),
    507: _error(
        "The job (its input, and room for its result) would take the jobs folder past "
        "UPSCALER_JOBS_MAX_BYTES: retry after Retry-After seconds, when the oldest result "
        "expires (or DELETE finished jobs)."
    ),
}


def _inspect(
    pipeline: Pipeline, data: bytes, formats: tuple[OutputFormat, ...], quality: Quality
) -> tuple[OutputFormat, ImageInfo]:
    # The checks of POST /upscale before it queues, and the size the job will show.
    output_format = pipeline.choose_format(data, formats, quality)
    return output_format, inspect_image(data, max_pixels=pipeline.max_input_pixels)


async def _submit(
    request: Request,
    jobs: JobService,
    owner: str,
    job_id: str | None,
    selection: Selection,
    formats: tuple[OutputFormat, ...],
    quality: Quality,
    keep_metadata: bool,
    webhook: Webhook | None,
    data: bytes,
) -> JSONResponse:
    pipeline = selection.pipeline
    output_format, info = await run_in_threadpool(_inspect, pipeline, data, formats, quality)
    new = NewJob(
        owner=owner,
        id=job_id,
        data=data,
        # `auto` is decided when the job runs, from the input, like /upscale's.
        model=selection.model.name if isinstance(selection, Fixed) else AUTO,
        quality=quality.value,
        media_type=output_format.media_type,
        input_width=info.width,
        input_height=info.height,
        output_scale=pipeline.scale,
        webhook=None if webhook is None else webhook.url,
        webhook_events=() if webhook is None else webhook.events,
        keep_metadata=keep_metadata,
    )
    record, created = await jobs.submit(new)
    location = str(request.url_for("get_job", job_id=record.id))
    return JSONResponse(
        jobs.describe(record), status_code=202 if created else 200, headers={"Location": location}
    )


@router.post(
    JOBS_PATH,
    status_code=202,
    summary="Submit an upscale as a job",
    description="The body, query parameters, limits and errors of POST /upscale, plus "
    "`webhook`: answers at once with the job (202) and `Location: /jobs/{id}`.",
    responses=_SUBMIT_RESPONSES,
    openapi_extra=_SUBMIT_BODY,
    dependencies=[Depends(require_api_key)],
)
async def submit_job(
    request: Request,
    jobs: Jobs,
    owner: Owner,
    selection: RequestedModel,
    formats: AcceptedFormats,
    quality: RequestedQuality,
    keep_metadata: KeepMetadata,
    webhook: RequestedWebhook,
    data: UploadedBytes,
) -> JSONResponse:
    """Stores the image and queues the job; the ID is generated."""
    return await _submit(
        request, jobs, owner, None, selection, formats, quality, keep_metadata, webhook, data
    )


@router.put(
    JOBS_PATH + "/{job_id}",
    status_code=202,
    summary="Submit an upscale as a job with your own ID (idempotent)",
    description="As POST /jobs, with the ID chosen by the client (1-64 of `A-Z a-z 0-9 _ -`): "
    "a retried submit never runs twice. The same ID with the same input and parameters "
    "answers 200 with the existing job; with another, 409.",
    responses={
        **_SUBMIT_RESPONSES,
        200: {"description": f"The job existed with this input. {_JOB_EXAMPLE}"},
        409: _error("The ID is taken by a job with another input or other parameters."),
    },
    openapi_extra=_SUBMIT_BODY,
    dependencies=[Depends(require_api_key)],
)
async def put_job(
    request: Request,
    jobs: Jobs,
    owner: Owner,
    job_id: Annotated[str, Depends(requested_job_id)],
    selection: RequestedModel,
    formats: AcceptedFormats,
    quality: RequestedQuality,
    keep_metadata: KeepMetadata,
    webhook: RequestedWebhook,
    data: UploadedBytes,
) -> JSONResponse:
    """Stores and queues the job under the client's ID, or returns the one it has."""
    return await _submit(
        request, jobs, owner, job_id, selection, formats, quality, keep_metadata, webhook, data
    )


@router.get(
    JOBS_PATH + "/{job_id}",
    summary="A job's status, progress, queue position, timings and result",
    responses={200: {"description": _JOB_EXAMPLE}, **_UNAUTHORIZED, **_NOT_FOUND},
    dependencies=[Depends(require_api_key)],
)
async def get_job(jobs: Jobs, owner: Owner, job_id: str) -> dict[str, Any]:
    """`status` is `queued`, `running`, `succeeded`, `failed` or `canceled`; `progress` counts
    tiles (8 passes with quality=max); `detail` says why a job failed."""
    return jobs.describe(jobs.store.get(owner, job_id))


def _event(view: dict[str, Any]) -> str:
    return f"event: job\ndata: {json.dumps(view)}\n\n"


@router.get(
    JOBS_PATH + "/{job_id}/events",
    summary="Server-sent events: the job at every change, until it ends",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream` of `event: job` messages whose data is the "
            "job (as GET /jobs/{id}), the first at once, then one per change (status, each "
            "tile), the last when it has ended; `: keep-alive` comments every 15 s.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **_UNAUTHORIZED,
        **_NOT_FOUND,
    },
    dependencies=[Depends(require_api_key)],
)
async def job_events(request: Request, jobs: Jobs, owner: Owner, job_id: str) -> Response:
    """Streams the job's changes; ends when it ends, is deleted, or the service drains."""
    stream = jobs.watch(owner, job_id, STREAM_TICK_SECONDS)
    first = await anext(stream)  # a 404 now, before the stream's 200 is sent
    drain = context_of(request).lifecycle.drain

    async def events() -> AsyncIterator[str]:
        yield _event(first)
        ticks = 0
        async for view in stream:
            if drain.draining:
                return  # the client reconnects to whichever process serves next
            if view is not None:
                yield _event(view)
                continue
            ticks += 1
            if ticks % KEEPALIVE_TICKS == 0:
                yield ": keep-alive\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _result_headers(facts: dict[str, Any], quality: str) -> dict[str, str]:
    """The headers POST /upscale answers with, from what the job kept."""
    steps = [("decode", facts.get("decode_ms")), ("model", facts.get("model_ms"))]
    if facts.get("evidence"):
        steps.insert(1, ("choose", facts.get("choose_ms")))
    steps.append(("encode", facts.get("encode_ms")))
    input_size, output_size = facts.get("input_size", ()), facts.get("output_size", ())
    headers = {
        "X-Upscaler-Model": facts.get("model", ""),
        "X-Upscaler-Model-Version": facts.get("model_version", ""),
        "X-Upscaler-Provider": facts.get("provider", ""),
        "X-Upscaler-Engine": facts.get("engine", ""),
        "X-Upscaler-Device": facts.get("device", ""),
        "X-Upscaler-Precision": facts.get("precision", ""),
        "X-Inference-Time-Ms": f"{facts.get('model_ms', 0):.1f}",
        "X-Input-Size": "x".join(map(str, input_size)),
        "X-Output-Size": "x".join(map(str, output_size)),
        "X-Upscaler-Quality": quality,
        "Server-Timing": ", ".join(f"{name};dur={ms:.1f}" for name, ms in steps if ms is not None),
        "Vary": "Accept",
    }
    if facts.get("evidence"):
        headers["X-Upscaler-Evidence"] = facts["evidence"]
    return headers


def _chunks(file: IO[bytes]) -> Iterator[bytes]:
    with file:
        while chunk := file.read(_RESULT_CHUNK):
            yield chunk


@router.get(
    JOBS_PATH + "/{job_id}/result",
    summary="The job's upscaled image",
    response_class=Response,
    responses={
        200: {
            "description": "The image, in the format the submit's Accept header chose, with "
            "the headers of POST /upscale.",
            "content": {fmt.media_type: _BINARY for fmt in OutputFormat},
        },
        **_UNAUTHORIZED,
        404: _error(
            _NOT_FOUND[404]["description"] + " Also before the result exists (the "
            "job is queued or running), or when the job failed or was canceled."
        ),
        406: _error(
            "The Accept header rules out the result's format (chosen when it was submitted)."
        ),
        410: _error("The result was deleted after UPSCALER_JOB_RETENTION_SECONDS."),
    },
    dependencies=[Depends(require_api_key)],
)
async def job_result(jobs: Jobs, owner: Owner, job_id: str, formats: AcceptedFormats) -> Response:
    """Serves the result; its format was negotiated at submit, and this Accept must allow it."""
    record, path = jobs.result(owner, job_id)
    output_format = OutputFormat(record.media_type.removeprefix("image/"))
    if output_format not in formats:
        raise NotAcceptableError(
            f"the result of job {job_id!r} is {record.media_type} (chosen by the Accept header "
            "of its submit), which this request's Accept header rules out"
        )
    try:
        # Opened here: an expiry deleting the file meanwhile cannot cut the answer short.
        file = open(path, "rb")  # noqa: SIM115 (closed by _chunks)
    except FileNotFoundError:
        raise ResultExpiredError(f"the result of job {job_id!r} was deleted") from None
    headers = _result_headers(dict(record.facts), record.quality)
    headers["Content-Length"] = str(os.fstat(file.fileno()).st_size)
    return StreamingResponse(_chunks(file), media_type=record.media_type, headers=headers)


@router.get(
    JOBS_PATH + "/{job_id}/preview",
    summary="The tiles a running job has finished, as a small PNG",
    response_class=Response,
    responses={
        200: {
            "description": "RGBA PNG of at most 512 pixels a side: finished tiles opaque, the "
            "rest transparent (lay it over the input to watch it sharpen). Not cached.",
            "content": {"image/png": _BINARY},
        },
        **_UNAUTHORIZED,
        404: _error(_NOT_FOUND[404]["description"] + " Also when the job is not running."),
    },
    dependencies=[Depends(require_api_key)],
)
async def job_preview(jobs: Jobs, owner: Owner, job_id: str) -> Response:
    """The finished tiles of the first pass, subsampled; rendered per request."""
    png = await run_in_threadpool(jobs.preview, owner, job_id)
    if png is None:
        status = jobs.store.get(owner, job_id).status.value
        raise ResultNotReadyError(f"job {job_id!r} has no preview: it is {status}")
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post(
    JOBS_PATH + "/{job_id}/cancel",
    summary="Cancel a job",
    description="A queued job is canceled at once; a running one stops before its next tile "
    "and its slot goes to the next job. An ended job is returned unchanged.",
    responses={200: {"description": _JOB_EXAMPLE}, **_UNAUTHORIZED, **_NOT_FOUND},
    dependencies=[Depends(require_api_key)],
)
async def cancel_job(jobs: Jobs, owner: Owner, job_id: str) -> dict[str, Any]:
    """Cancels the job and returns it (`status: canceled` unless it had ended)."""
    return jobs.describe(await jobs.cancel(owner, job_id))


@router.delete(
    JOBS_PATH + "/{job_id}",
    status_code=204,
    summary="Delete a job and its files",
    description="Stops it first if it runs. Its ID is free again afterwards.",
    responses={204: {"description": "Deleted."}, **_UNAUTHORIZED, **_NOT_FOUND},
    dependencies=[Depends(require_api_key)],
)
async def delete_job(jobs: Jobs, owner: Owner, job_id: str) -> Response:
    """Removes the job, its input and its result."""
    await jobs.delete(owner, job_id)
    return Response(status_code=204)
