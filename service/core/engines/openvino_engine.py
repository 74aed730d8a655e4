"""The OpenVINO engine: the model compiled for the CPU by OpenVINO, the faster CPU engine.

OpenVINO reads the ONNX file directly (no conversion step) and, on CPUs with bfloat16 units
(AMX, AVX512-BF16), computes the convolutions in bfloat16 when asked, at a PSNR cost measured in
docs/benchmarks.md (engines). `service.core.engines.create_engine` picks it; it implements the same
`Engine` protocol as `OnnxEngine`, so tiling, ensembles and admission work unchanged.

* Precision: `INFERENCE_PRECISION_HINT` is always set explicitly. OpenVINO's own default on a
  bfloat16 CPU is bf16, so `fp32` must be asked for; `auto` picks bf16 only where the CPU reports
  it (`OPTIMIZATION_CAPABILITIES`), and a `bf16`/`fp16` the CPU lacks falls back to fp32 with the
  reason in `ModelInfo.precision_reason`.
* Shapes: with fixed tiles the model is reshaped to the one tile shape before compiling (static
  shapes let the CPU plugin plan memory once); with fitted tiles it keeps dynamic height and width.
  The CPU plugin's per-shape kernel cache is switched off (`CPU_RUNTIME_CACHE_CAPACITY` 0): fitted
  tiles give nearly every image its own shape, and the cache (5,000 shapes by default) grew the
  process by ~0.7 MB per new shape (+263 MB over a 3 x 600 soak) while saving ~1 % of a run.
* Threads: a compiled model is thread-safe, an infer request is not. `run` takes an idle request
  from a pool (creating one when all are busy), so concurrent calls never share one; each
  request owns its intermediate buffers, so the pool grows only to the concurrency really seen.

The pure choices (precision, compile options) are module functions, tested without OpenVINO.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings
from service.core.engines.base import (
    SCALE_PROBE_SIDE,
    ModelInfo,
    TensorSpec,
    check_contract,
    check_model_file,
    resolve_tile_mode,
    scale_from_metadata,
    warm_up_engine,
)
from service.exceptions import ModelLoadError

logger = logging.getLogger(__name__)

DEVICE = "CPU"
#: `ModelInfo.providers` entry of this engine (what `X-Upscaler-Provider` says).
PROVIDER = f"openvino:{DEVICE}"
#: OpenVINO's names for the service's precisions.
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
#: `OPTIMIZATION_CAPABILITIES` entries that mean the CPU computes a precision natively.
PRECISION_CAPABILITIES = {"bf16": "BF16", "fp16": "FP16"}


class EngineUnavailableError(ModelLoadError):
    """OpenVINO is not installed, or cannot compile this model: another engine may run it."""


def choose_openvino_precision(setting: str, capabilities: Iterable[str]) -> tuple[str, str | None]:
    """The precision OpenVINO computes in, and why it differs from the setting (or what `auto`
    chose), from the CPU's `OPTIMIZATION_CAPABILITIES`.

    `auto` is bf16 where the CPU has bfloat16 units (about 2x the fp32 speed, within 0.01 dB on
    the benchmark sets), else fp32. `bf16` and `fp16` are obeyed where the CPU has them and fall
    back to fp32 otherwise (emulated half precision is slower than fp32). `fp32` is fp32.

    Returns:
        (`fp32` | `bf16` | `fp16`, reason or None).
    """
    available = {name.upper() for name in capabilities}
    listed = ", ".join(sorted(available)) or "none"
    if setting == "auto":
        if PRECISION_CAPABILITIES["bf16"] in available:
            return "bf16", "auto: the CPU computes bfloat16 natively"
        return "fp32", f"auto: the CPU has no bfloat16 support (capabilities: {listed})"
    if setting in PRECISION_CAPABILITIES:
        if PRECISION_CAPABILITIES[setting] in available:
            return setting, None
        return "fp32", (
            f"{setting} requested but the CPU does not compute it natively (capabilities: "
            f"{listed}); running fp32"
        )
    return "fp32", None


def openvino_config(
    *, precision: str, hint: str, threads: int = 0, cache_dir: Path | None = None
) -> dict[str, str]:
    """The `compile_model` configuration.

    Args:
        precision: `fp32`, `bf16` or `fp16` (from `choose_openvino_precision`).
        hint: `latency` (one stream, every core on one request) or `throughput` (several
            streams for parallel requests).
        threads: `UPSCALER_INTRA_OP_THREADS`: CPU threads in all (INFERENCE_NUM_THREADS);
            0 lets OpenVINO use every core.
        cache_dir: Where OpenVINO caches the compiled model, or None.
    """
    config = {
        "PERFORMANCE_HINT": hint.upper(),
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[precision],
        # No per-shape kernel cache: up to 5,000 shapes x ~0.7 MB for ~1 % of speed (docstring).
        "CPU_RUNTIME_CACHE_CAPACITY": "0",
    }
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def _metadata(model: Any) -> dict[str, str]:
    """The ONNX `metadata_props`, which OpenVINO's ONNX reader keeps under `framework`."""
    if not model.has_rt_info(["framework"]):
        return {}
    try:
        entries = model.get_rt_info(["framework"]).astype(dict)
        return {str(key): value.astype(str) for key, value in entries.items()}
    except Exception as exc:  # an unexpected rt_info layout only costs the metadata
        logger.warning("cannot read the model metadata through OpenVINO: %s", exc)
        return {}


def _specs(ports: Any) -> list[TensorSpec]:
    specs = []
    for port in ports:
        shape = port.get_partial_shape()
        dims = None
        if not shape.rank.is_dynamic:
            dims = tuple(d.get_length() if d.is_static else None for d in shape)
        float32 = port.get_element_type().get_type_name() == "f32"
        specs.append(TensorSpec(name=port.get_any_name(), float32=float32, shape=dims))
    return specs


def _probe_scale(model: Any, path: Path) -> int:
    """The scale from shape inference on a small input (no compilation, no run)."""
    probe = model.clone()
    side = SCALE_PROBE_SIDE
    try:
        probe.reshape({probe.inputs[0]: [1, side, side, 3]})
        height = probe.outputs[0].get_partial_shape()[1].get_length()
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with many messages
        raise ModelLoadError(f"model {path} failed a probe reshape: {exc}") from exc
    if height % side:
        raise ModelLoadError(
            f"model {path} maps {side} pixels to {height}, which is not an integer scale"
        )
    return height // side


class _RequestPool:
    """Infer requests of one compiled model, each used by one thread at a time."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.created = 0
        self._lock = threading.Lock()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                self.created += 1
            request = self.compiled.create_infer_request()
        try:
            request.infer({0: batch}, share_inputs=True)
            # The output tensor is the request's own buffer, overwritten by its next run.
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        finally:
            self._idle.put(request)


def _read_model(path: Path) -> tuple[Any, Any, Any]:
    """OpenVINO's core, the model read from `path` and the CPU's optimisation capabilities.

    Raises:
        EngineUnavailableError: OpenVINO is missing, its CPU plugin is unusable or it cannot
            read the file; another engine may run the model.
    """
    try:
        import openvino as ov
    except ImportError as exc:
        raise EngineUnavailableError(f"openvino is not installed ({exc})") from exc
    check_model_file(path)
    try:
        core = ov.Core()
        capabilities = core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    except RuntimeError as exc:  # no usable CPU plugin: onnxruntime runs instead
        raise EngineUnavailableError(f"OpenVINO's {DEVICE} plugin is unusable: {exc}") from exc
    try:
        return core, core.read_model(str(path)), capabilities
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable files
        raise EngineUnavailableError(f"cannot read model {path}: {exc}") from exc


def _engine_config(compiled: Any, config: dict[str, str]) -> dict[str, str]:
    """The compile configuration plus what OpenVINO chose (streams, threads) and its version."""
    import openvino as ov

    engine_config = dict(config)
    for name in ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "OPTIMAL_NUMBER_OF_INFER_REQUESTS"):
        try:
            engine_config[name] = str(compiled.get_property(name))
        except Exception:  # properties vary between OpenVINO releases
            continue
    engine_config["version"] = ov.get_version()
    return engine_config


class OpenVinoEngine:
    """One super-resolution model compiled by OpenVINO for the CPU.

    Args:
        settings: The service settings: model path, precision, tile shape and mode, threads
            (`intra_op_threads`), `openvino_hint` and `openvino_cache_dir`.

    Raises:
        ModelLoadError: If the file is missing or unreadable, or breaks the export contract.
        EngineUnavailableError: If OpenVINO is not installed or cannot read or compile the
            model (then `create_engine` runs onnxruntime instead and reports why).
    """

    def __init__(self, settings: Settings) -> None:
        path = Path(settings.model_path)
        core, model, capabilities = _read_model(path)
        self._input, self._output = check_contract(
            _specs(model.inputs), _specs(model.outputs), path
        )
        metadata = _metadata(model)
        scale = scale_from_metadata(metadata, path) or _probe_scale(model, path)
        precision, precision_reason = choose_openvino_precision(settings.precision, capabilities)
        config = openvino_config(
            precision=precision,
            hint=settings.openvino_hint,
            threads=settings.intra_op_threads,
            cache_dir=settings.openvino_cache_dir,
        )
        tile_mode = resolve_tile_mode(settings.tile_mode, PROVIDER)
        self._core, self._model, self._config = core, model, config
        self._static_shape: tuple[int, ...] | None = None
        compile_model = model
        if tile_mode == "fixed":
            side = settings.tile_size
            self._static_shape = (settings.tile_batch_size, side, side, 3)
            compile_model = model.clone()
            try:
                compile_model.reshape({compile_model.inputs[0]: list(self._static_shape)})
            except RuntimeError as exc:
                raise EngineUnavailableError(f"cannot fix {path}'s input shape: {exc}") from exc
        self._pool = _RequestPool(self._compile(compile_model, path))
        self._dynamic_pool: _RequestPool | None = None
        self._dynamic_lock = threading.Lock()
        engine_config = _engine_config(self._pool.compiled, config)
        self.info = ModelInfo.build(
            settings,
            path=path,
            scale=scale,
            names=(self._input, self._output),
            metadata=metadata,
            providers=(PROVIDER,),
            precision=precision,
            engine="openvino",
            requested_providers=tuple(settings.providers),
            precision_reason=precision_reason,
            engine_config=engine_config,
        )
        logger.info(
            "model %s compiled by OpenVINO %s: scale x%d, %s (%s), %s tiles, config %s",
            path,
            engine_config["version"],
            scale,
            precision,
            precision_reason or "as set",
            tile_mode,
            engine_config,
        )
        if precision_reason and settings.precision != "auto":
            logger.warning("precision %s: %s", settings.precision, precision_reason)

    def _compile(self, model: Any, path: Path) -> Any:
        try:
            return self._core.compile_model(model, DEVICE, self._config)
        except Exception as exc:  # unsupported operations, devices or options
            raise EngineUnavailableError(f"cannot compile model {path}: {exc}") from exc

    def _dynamic(self) -> _RequestPool:
        """The dynamic-shape model, compiled once on first need (a batch off the fixed shape)."""
        with self._dynamic_lock:
            if self._dynamic_pool is None:
                logger.warning(
                    "a batch of another shape than the fixed tile %s: compiling the model with "
                    "dynamic shapes too",
                    self._static_shape,
                )
                self._dynamic_pool = _RequestPool(self._compile(self._model, self.info.path))
            return self._dynamic_pool

    @property
    def infer_requests(self) -> int:
        """Infer requests created so far (the most calls that ran at once)."""
        return self._pool.created + (self._dynamic_pool.created if self._dynamic_pool else 0)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Runs the model on an NHWC float32 batch (N, H, W, 3) with values in 0-255.

        Safe to call from several threads at once.

        Returns:
            The model output, float32 of shape (N, H * scale, W * scale, 3), not clipped.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        pool = self._pool
        if self._static_shape is not None and batch.shape != self._static_shape:
            pool = self._dynamic()
        return pool.infer(batch)

    def warm_up(self) -> float:
        """Runs one batch of the serving tile shape (see `service.core.engines.warm_up_engine`)."""
        return warm_up_engine(self)
