"""Shared test helpers: small synthetic photos (`benchmarks.images`), so no test needs
downloaded data."""

from __future__ import annotations

import logging
import os

import pytest

from benchmarks.images import synthetic_photo

# Quieter TensorFlow logs in test output; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def photo():
    """Factory fixture: `photo(height, width, seed=0)`."""
    return synthetic_photo


@pytest.fixture(autouse=True)
def _restore_log_handlers():
    """Removes the handlers a test's app added: `_ensure_log_output` and `configure_logging` bind
    a handler to the sys.stderr of the moment, which pytest's capture closes after the test, and
    a later test's log line would then print an 'I/O operation on closed file' traceback."""
    loggers = [logging.getLogger(), logging.getLogger("service")]
    saved = [(logger, list(logger.handlers), logger.level) for logger in loggers]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
