"""Helpers of the reload and drain tests: constant models, atomic installs, a slow model."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from PIL import Image

from tests.service.helpers import SCALE, save_contract_model


def build_constant_model(path: Path, value: float) -> Path:
    """An x4 model that follows the export contract and paints every output pixel `value`."""
    channels = 3 * SCALE * SCALE
    weights = np.zeros((channels, 3, 1, 1), dtype=np.float32)
    bias = np.full(channels, value, dtype=np.float32)
    nodes = [
        helper.make_node("Transpose", ["lr"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w", "b"], ["features"]),
        helper.make_node("DepthToSpace", ["features"], ["nchw"], blocksize=SCALE, mode="DCR"),
        helper.make_node("Transpose", ["nchw"], ["sr"], perm=[0, 2, 3, 1]),
    ]
    initializers = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")]
    metadata = {"scale": str(SCALE), "description": f"paints {value:g}"}
    return save_contract_model(path, "constant", nodes, initializers, metadata)


def install(source: Path, target: Path) -> None:
    """Installs a file as scripts/retrain.sh does: copy to `NAME.tmp`, then rename over."""
    staged = target.with_name(target.name + ".tmp")
    staged.write_bytes(source.read_bytes())
    os.replace(staged, target)


def painted_value(png: bytes) -> int:
    """The one grey level of a constant model's output."""
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    values = np.unique(pixels)
    assert len(values) == 1, values
    return int(values[0])


def wait_for(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@contextlib.contextmanager
def slow_sessions(delay: float) -> Iterator[list[int]]:
    """Makes every `InferenceSession.run` sleep `delay` s first; yields the list of calls."""
    calls: list[int] = []
    lock = threading.Lock()
    original = ort.InferenceSession.run

    def run(session: ort.InferenceSession, *args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        with lock:
            calls.append(1)
        return original(session, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ort.InferenceSession, "run", run)
        yield calls
