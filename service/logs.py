"""Request IDs, the access log and the log formats (`UPSCALER_LOG_FORMAT=text|json`).

`RequestContextMiddleware` (pure ASGI, so streaming and cancellation behave as without it) gives
every HTTP request an ID: the client's `X-Request-ID` when it is sane (at most 64 characters of
`[A-Za-z0-9._-]`), else a new uuid4 hex. The ID is returned in the response's `X-Request-ID`
(errors included) and kept in a context variable, which a log-record factory copies onto every
record made while the request runs, worker threads included (anyio and Starlette copy the
context into them): `record.request_id`, None outside requests.

At the end of each request the middleware writes one access line on the `service.access`
logger: method, path, status, request and response body sizes, duration, and for upscales the
decode/model/encode times, the model's name and version (left in the request's state by the
route under `ACCESS_STATE_KEY`). Probes (`/healthz`, `/readyz`, `/metrics`) log at DEBUG.

Only the standard library's logging: `JsonFormatter` writes one JSON object per line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
#: Where the upscale route leaves its access-log fields (timings, model and version).
ACCESS_STATE_KEY = "upscaler_access"
#: Paths polled by probes and scrapers: their access lines are DEBUG, not INFO.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TEXT_FORMAT = "%(levelname)s:     %(name)s: %(message)s"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "upscaler_request_id", default=None
)
access_logger = logging.getLogger("service.access")


def _install_record_factory() -> None:
    """Makes every log record carry `request_id` (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_adds_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id_var.get()
        return record

    factory._adds_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_install_record_factory()


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to records made before the factory was installed (never drops any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """The service's usual line, with `[request ID]` appended inside a request."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request {request_id}]" if request_id else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, request_id,
    the access fields (`record.access`, a dict) and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def make_handler(log_format: str) -> logging.Handler:
    """A stderr handler writing `log_format` (`text` or `json`) lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    return handler


def configure_logging(log_format: str, level: str | int = logging.INFO) -> None:
    """Sends every logger (the service's, uvicorn's when it propagates) to one root handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(log_format))
    root.setLevel(level.upper() if isinstance(level, str) else level)


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
    """Request ID, access line, and the count of requests in flight (for the drain).

    Meant to wrap the whole app (outside Starlette's error middleware), so that even a 500 from
    an unexpected exception carries `X-Request-ID`.

    Args:
        app: The app to wrap.
        on_enter: Called when a non-probe request starts; `on_exit` when it ends.
    """

    def __init__(
        self,
        app: ASGIApp,
        on_enter: Callable[[], None] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.on_enter = on_enter
        self.on_exit = on_exit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", ()))
        request_id_var.set(request_id)
        request_state = scope.setdefault("state", {})
        path = scope.get("path", "")
        counted = path not in QUIET_PATHS
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

        if counted and self.on_enter is not None:
            self.on_enter()
        try:
            await self.app(scope, counting_receive, send_with_id)
        finally:
            if counted and self.on_exit is not None:
                self.on_exit()
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
    path = scope.get("path", "")
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
        level,
        "%s %s %s %s",
        fields["method"],
        path,
        status,
        details,
        extra={"access": fields},
    )


_LEAD = frozenset({"method", "path", "status"})
