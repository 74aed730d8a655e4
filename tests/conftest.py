"""Shared test helpers: small synthetic photos (`benchmarks.images`), so no test needs
downloaded data."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.images import synthetic_photo

WEB_TESTS = Path(__file__).parent / "web"

# Quieter TensorFlow logs in test output; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def photo():
    """Factory fixture: `photo(height, width, seed=0)`."""
    return synthetic_photo


@pytest.fixture(autouse=True)
def _remove_service_log_handlers():
    """Removes the log handlers a test's app added (`service.logs.make_handler`'s, marked by
    their request-ID filter): they are bound to the sys.stderr of the moment, which pytest's
    capture closes after the test, and a later test's log line would then print an 'I/O
    operation on closed file' traceback. Handlers that were there before and that
    `configure_logging` removed (pytest's --log-file and live-log handlers) are put back."""
    from service.logs import RequestIdFilter

    loggers = [logging.getLogger(), logging.getLogger("service")]
    before = {logger: (set(logger.handlers), logger.level) for logger in loggers}
    yield
    for logger, (handlers, level) in before.items():
        for handler in list(logger.handlers):
            ours = any(isinstance(f, RequestIdFilter) for f in handler.filters)
            if ours and handler not in handlers:
                logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)  # a no-op for those still attached
        logger.setLevel(level)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    """Runs the browser tests last, whatever order the paths were given in (and after `--ff`
    reorders): Playwright's sync API keeps an event loop running in the main thread until the
    session ends, and the tests that start one of their own (`asyncio.run`) would then fail."""
    yield
    items.sort(key=lambda item: item.path.is_relative_to(WEB_TESTS))
