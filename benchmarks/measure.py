"""Timing and rate helpers shared by every section: pure functions, no I/O.

Every figure the harness reports is a median (or a percentile) of repeated runs measured in the
same process, and every target is a ratio of two such figures from the same run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class Timing:
    """Summary of repeated durations, in seconds."""

    samples: int
    median: float
    p95: float
    minimum: float
    mean: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        """Summarises a list of durations."""
        if not seconds:
            raise ValueError("no samples")
        return cls(
            samples=len(seconds),
            median=percentile(seconds, 50),
            p95=percentile(seconds, 95),
            minimum=float(min(seconds)),
            mean=float(np.mean(seconds)),
        )

    def as_dict(self) -> dict[str, float | int]:
        """Milliseconds, rounded, for the JSON report."""
        return {
            key: value if key == "samples" else round(value * 1000, 3)
            for key, value in asdict(self).items()
        }


def time_call(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[Timing, Any]:
    """Runs `fn` `warmup` times untimed, then `repeat` times timed.

    Returns:
        The timing summary and the last result.
    """
    result = None
    for _ in range(warmup):
        result = fn()
    seconds = []
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return Timing.of(seconds), result


def time_interleaved(
    calls: Mapping[str, Callable[[], Any]], repeat: int, warmup: int = 1
) -> dict[str, tuple[Timing, Any]]:
    """Times several calls round-robin, so that their ratios survive a machine that drifts.

    On a shared VM the speed of the cores wanders by 10-30 % over a minute (other tenants, clock
    changes). Timing each call's repeats back to back puts that drift into the ratio between
    calls; taking turns, one sample of each per round and the starting call rotated each round,
    exposes every call to the same conditions and to no fixed ordering (caches, allocator state).

    Args:
        calls: The calls to compare, by name.
        repeat: Timed samples per call.
        warmup: Untimed calls of each, before the timed rounds.

    Returns:
        Each name's timing summary and last result, in the order of `calls`.
    """
    names = list(calls)
    results: dict[str, Any] = dict.fromkeys(names)
    for _ in range(warmup):
        for name in names:
            results[name] = calls[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(max(1, repeat)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            results[name] = calls[name]()
            seconds[name].append(time.perf_counter() - started)
    return {name: (Timing.of(seconds[name]), results[name]) for name in names}


def megapixels_per_second(pixels: int, seconds: float) -> float:
    """Throughput in megapixels per second (0 for a zero duration)."""
    return 0.0 if seconds <= 0 else pixels / seconds / 1e6


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def sgemm_gflops(size: int = 1024, repeat: int = 3) -> float:
    """numpy's float32 matrix-multiply rate in GFLOP/s (2 n^3 operations per product).

    The ceiling any convolution engine on this machine can be compared with: EDSR is almost all
    3x3 convolutions, which onnxruntime, OpenCV and TensorFlow lower to the same kind of GEMM.
    """
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    timing, _ = time_call(lambda: a @ b, repeat=repeat)
    return 2 * size**3 / timing.median / 1e9


def conv_flops(model_path: str | Path, height: int, width: int, batch: int = 1) -> float:
    """Floating-point operations (2 per multiply-add) of the model's Conv nodes for one input.

    Shapes come from ONNX shape inference with the input fixed to (batch, height, width, 3);
    everything but the convolutions (adds, ReLUs, pixel shuffles) is under 1 % of EDSR's work.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (batch, height, width, 3), strict=True):
        dim.Clear()
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(model)
    shapes = {
        info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
        for info in [*inferred.graph.value_info, *inferred.graph.output]
    }
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    total = 0.0
    for node in inferred.graph.node:
        if node.op_type != "Conv" or node.input[1] not in weights:
            continue
        out_shape = shapes.get(node.output[0])
        if not out_shape or 0 in out_shape:
            raise ValueError(f"shape inference did not give the shape of {node.output[0]}")
        _, in_per_group, *kernel = weights[node.input[1]]
        macs_per_output = in_per_group * math.prod(kernel)
        total += 2.0 * math.prod(out_shape) * macs_per_output  # NCHW output: N*C*H*W values
    return total
