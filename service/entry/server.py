"""The server process: `python -m service [--host HOST] [--port PORT] [--model PATH]` (`main`),
and the app that `uvicorn service.main:app` serves (`asgi_app`).

Every other setting comes from the `UPSCALER_*` environment variables (see `service.config`).

Signals: SIGTERM drains (`DrainingServer`): `/readyz` answers 503 `draining` and new uploads
503 at once, while the server keeps listening until the requests in flight have finished (at
most `UPSCALER_DRAIN_SECONDS`); then uvicorn shuts down and the process exits 0. SIGINT (Ctrl-C)
is uvicorn's own graceful shutdown (a second one forces it). SIGHUP checks the model files now
(`service.core.reload`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.api.app import create_app
from service.config import Settings
from service.core.lifecycle import Drain
from service.core.reload import ignore_sighup
from service.exceptions import StartupError
from service.logs import configure_logging, ensure_log_output

logger = logging.getLogger("service")

#: uvicorn's exit status when the app cannot start (the model cannot be loaded).
STARTUP_FAILURE = 3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m service", description="Serve the EDSR x4 upscaler over HTTP."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--model", type=Path, default=None, help="ONNX model file (overrides UPSCALER_MODEL_PATH)"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default: %(default)s)",
    )
    return parser.parse_args(argv)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM turned into a drain before the graceful shutdown.

    uvicorn alone, on SIGTERM, stops listening and waits for the requests in flight; meanwhile
    nothing tells a load balancer to stop sending work, and the process then re-raises SIGTERM
    on itself (exit status 143). Here the first SIGTERM only marks the app draining; the server
    keeps answering (503 for new uploads and /readyz) until no request is in flight or
    `drain_seconds` have passed, then shuts down as uvicorn does, and exits 0.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_seconds = drain_seconds
        self._drain_deadline: float | None = None
        self._drain_announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)
        elif self._drain_deadline is None:
            # A signal handler: set flags only (no logging, no locks).
            self.drain.begin()
            self._drain_deadline = time.monotonic() + self.drain_seconds
        else:
            # A second SIGTERM: stop waiting for the drain, still exiting gracefully.
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self._drain_deadline is None:
            return False
        remaining = self._drain_deadline - time.monotonic()
        if not self._drain_announced:
            self._drain_announced = True
            logger.info(
                "SIGTERM: draining; %d request(s) in flight, waiting up to %.0f s",
                self.drain.active,
                self.drain_seconds,
            )
        if self.drain.active > 0 and remaining > 0:
            return False
        if self.drain.active > 0:
            logger.warning("drain time over with %d request(s) in flight", self.drain.active)
        # What is left of the drain bounds uvicorn's own wait for connections to close.
        self.config.timeout_graceful_shutdown = max(remaining, 1.0)
        return True


def main(argv: Sequence[str] | None = None) -> None:
    """Starts uvicorn with the settings from the environment and the command line.

    Exits with uvicorn's start-up failure status (3) when the model cannot be loaded.
    """
    args = parse_args(argv)
    # SIGHUP asks for a model check once the models are loaded (service.core.reload); until then,
    # and after, its default action would end the server.
    ignore_sighup()
    settings = Settings(model_path=args.model) if args.model is not None else Settings()
    # One root handler for every logger, uvicorn's included (log_config=None below); the
    # service's access line (service.logs) replaces uvicorn's, which lacks the request ID.
    configure_logging(settings.log_format, args.log_level)
    try:
        app = create_app(settings)
    except StartupError as exc:  # e.g. an unreadable UPSCALER_API_KEYS_FILE
        logger.error("cannot start: %s", exc)
        sys.exit(STARTUP_FAILURE)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.drain_seconds)),
    )
    server = DrainingServer(config, app.state.context.lifecycle.drain, settings.drain_seconds)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn handles SIGINT itself
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def asgi_app() -> FastAPI:
    """The app `uvicorn service.main:app` serves, with settings from the environment; logs go
    to stderr unless the host configured logging."""
    settings = Settings()
    ensure_log_output(settings.log_format)
    return create_app(settings)
