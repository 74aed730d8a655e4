"""The log formats (`UPSCALER_LOG_FORMAT=text|json`) and request IDs on log records; set up
explicitly by the entry points, never at import.

- `configure_logging` (`python -m service`): one root handler for every logger, uvicorn's too.
- `ensure_log_output` (`uvicorn service.main:app`, Ray replicas): a handler on the `service`
  logger unless the host application configured logging.
- `install_request_ids` (called by `service.api.app.create_app`): a log-record factory that
  copies the request ID of the HTTP request being served (`request_id_var`, set by
  `service.api.middleware.RequestContextMiddleware`) onto every record, worker threads included
  (anyio and Starlette copy the context into them): `record.request_id`, None outside requests.

Only the standard library's logging: `JsonFormatter` writes one JSON object per line, with the
access fields of `service.access` lines.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Any

_TEXT_FORMAT = "%(levelname)s:     %(name)s: %(message)s"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "upscaler_request_id", default=None
)


def install_request_ids() -> None:
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


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to records made without the factory (never drops any)."""

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


def ensure_log_output(log_format: str = "text") -> None:
    """Adds a handler to the `service` logger unless logging is configured already.

    `uvicorn service.main:app` configures only uvicorn's own loggers, which would leave the
    service's INFO lines (the provider report, warm-up) unseen.
    """
    service_logger = logging.getLogger("service")
    if logging.getLogger().handlers or service_logger.handlers:
        return
    service_logger.addHandler(make_handler(log_format))
    service_logger.setLevel(logging.INFO)
