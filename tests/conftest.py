"""Shared test helpers: small synthetic photos (`benchmarks.images`), so no test needs
downloaded data."""

from __future__ import annotations

import os

import pytest

from benchmarks.images import synthetic_photo

# Quieter TensorFlow logs in test output; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def photo():
    """Factory fixture: `photo(height, width, seed=0)`."""
    return synthetic_photo
