"""The pure ASGI middleware around every request: request IDs and the access log, the count of
requests in flight that the drain waits for, and the request metrics.

Pure ASGI (not `BaseHTTPMiddleware`), so streaming and cancellation behave as without them. Each
does one thing. Paths are compared without the app's `root_path` (`route_path`), so they work
the same behind a path prefix (`uvicorn --root-path`, Ray's `route_prefix`, a proxy at
`/upscaler/`).

- `RequestContextMiddleware` gives every HTTP request an ID: the client's `X-Request-ID` when it
  is sane (at most 64 characters of `[A-Za-z0-9._-]`), else a new uuid4 hex, returned in the
  response's `X-Request-ID` (errors included) and set in `service.logs.request_id_var` for the
  log records. At the end of each request it writes one access line on the `service.access`
  logger: method, path, status, request and response body sizes, duration, and for upscales the
  decode/model/encode times, the model's name and version (left in the request's state by the
  route under `ACCESS_STATE_KEY`). Probes (`/healthz`, `/readyz`, `/metrics`) log at DEBUG.
- `InFlightMiddleware` counts the requests in flight, probes aside, in the lifecycle's `Drain`.
- `RequestMetricsMiddleware` counts and times the requests to the upscaling paths.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Collection, Iterable
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.lifecycle import Drain
from service.core.metrics import ServiceMetrics
from service.logs import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
#: Where the upscale route leaves its access-log fields (timings, model and version).
ACCESS_STATE_KEY = "upscaler_access"
#: Paths polled by probes and scrapers: their access lines are DEBUG, and the drain ignores them.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LEAD = frozenset({"method", "path", "status"})

access_logger = logging.getLogger("service.access")


def route_path(scope: Scope) -> str:
    """The request's path inside the app: without the `root_path` a prefixing proxy added."""
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's `X-Request-ID` when sane, else a new uuid4 hex."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _SANE_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Request ID and access line. Meant to wrap the whole app (outside Starlette's error
    middleware), so that even a 500 from an unexpected exception carries `X-Request-ID`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", ()))
        request_id_var.set(request_id)
        request_state = scope.setdefault("state", {})
        status, received, sent = 500, 0, 0
        started = time.perf_counter()

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, send_with_id)
        finally:
            _log_access(scope, status, received, sent, started, request_state)
        # The ID stays set after an exception, so the server's own traceback line carries it;
        # each request runs in its own task, so it never leaks into another request.


def _log_access(
    scope: Scope,
    status: int,
    received: int,
    sent: int,
    started: float,
    request_state: dict[str, Any],
) -> None:
    path = route_path(scope)
    level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
    fields: dict[str, Any] = {
        "method": scope.get("method", ""),
        "path": path,
        "status": status,
        "request_bytes": received,
        "response_bytes": sent,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    extra = request_state.get(ACCESS_STATE_KEY)
    if isinstance(extra, dict):
        fields.update(extra)
    details = " ".join(f"{key}={value}" for key, value in fields.items() if key not in _LEAD)
    access_logger.log(
        level, "%s %s %s %s", fields["method"], path, status, details, extra={"access": fields}
    )


class InFlightMiddleware:
    """Counts the HTTP requests in flight (probes aside) in `drain`, which SIGTERM waits for."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.exit()


class RequestMetricsMiddleware:
    """Counts the requests to `paths` by final status and times them, errors included.

    A pure ASGI middleware sees the status of every response, including those produced by the
    exception handlers, which an endpoint-level timer would miss. The `model` label is the name
    the endpoint's parameters left under `model_key` in the request's state (`scope["state"]`,
    what `request.state` reads and writes), empty if they left none.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        paths: Collection[str],
        model_key: str = "model",
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = frozenset(paths)
        self.model_key = model_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) not in self.paths:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()
        # The same dict as the endpoint's `request.state`, which Starlette creates the same way.
        request_state = scope.setdefault("state", {})

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            model = str(request_state.get(self.model_key, ""))
            self.metrics.observe_request(status, time.perf_counter() - started, model)
