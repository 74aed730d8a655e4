"""The model engines and the one place that picks them: `create_engine(settings)`.

Two engines implement the `Engine` protocol (`run`, `warm_up`, `info`): `OnnxEngine` here (one
onnxruntime `InferenceSession`, loaded once and shared by all requests) and `OpenVinoEngine`
(`service.openvino_engine`, the faster CPU engine). `create_engine` chooses once, at start-up,
from `UPSCALER_ENGINE`; everything above the engine (tiling, ensemble, admission) only sees the
protocol.

The session is built with the configured execution providers, then asked which providers it
really got. onnxruntime does not fail when CUDA or cuDNN libraries are missing: it logs an error
and quietly runs on the CPU instead, which on a GPU server turns a 50 ms request into a minute.
So the engine describes what really runs (`ModelInfo`), flags a fallback and logs a warning
naming what was requested and what runs.

`InferenceSession.run` is thread-safe, so request threads call `OnnxEngine.run` concurrently
without a lock. The choices made before the session exists (providers, options, precision) are
the pure functions of `service.ortconfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import onnxruntime as ort

from service.config import Settings
from service.exceptions import ModelLoadError
from service.ortconfig import (
    CUDA_PROVIDER,
    GPU_PROVIDERS,
    ProviderPlan,
    auto_engine,
    choose_precision,
    cuda_usable,
    cudnn_tile_problem,
    declared_filters,
    fp16_path_for,
    openvino_installed,
    provider_entries,
    resolve_providers,
    session_options,
)

logger = logging.getLogger(__name__)

#: Side of the input that finds the scale of a model without `scale` metadata.
SCALE_PROBE_SIDE = 16
#: Input and output names fixed by the export contract of the training package.
CONTRACT_NAMES = ("lr", "sr")


@dataclass(frozen=True)
class ModelInfo:
    """The loaded model and how it runs: what `/readyz` reports and the response headers name.

    Attributes:
        path: The ONNX file loaded (the fp16 export when that was chosen).
        scale: Upscaling factor (from the `scale` metadata, or probed).
        input_name: The model input (`lr` by contract).
        output_name: The model output (`sr` by contract).
        metadata: The model's `metadata_props` (scale, filters, training details...).
        providers: Providers the session really uses, most preferred first.
        requested_providers: Providers as configured.
        skipped_providers: Requested providers not tried on this host, with the reason for each.
        fallback_reason: Why the session runs on another provider than requested, or None.
        precision: What the model really computes in: `fp32`, `fp16` (the fp16 export on
            onnxruntime, the f16 inference precision on OpenVINO) or `bf16` (OpenVINO).
        precision_setting: The precision as configured (`auto`, `fp32`, `fp16` or `bf16`).
        tile_size: Side of the (largest) tile fed to the model.
        batch_size: Tiles per model call.
        tile_mode: `fit` (tiles fitted to each image) or `fixed`, resolved from `auto`.
        warmup_seconds: Duration of the warm-up run, None before it.
        engine: The engine really running: `onnxruntime` or `openvino`.
        device: Where it runs: `CPU` or `GPU`.
        requested_engine: The engine as configured (`auto`, `onnxruntime` or `openvino`).
        precision_reason: Why `precision` differs from the setting (or what `auto` chose and
            why), or None.
        engine_config: The engine's own settings that matter for speed (OpenVINO's hints,
            streams and threads), for /readyz.
    """

    path: Path
    scale: int
    input_name: str
    output_name: str
    metadata: Mapping[str, str]
    providers: tuple[str, ...]
    requested_providers: tuple[str, ...]
    skipped_providers: Mapping[str, str]
    fallback_reason: str | None
    precision: str
    precision_setting: str
    tile_size: int
    batch_size: int
    tile_mode: Literal["fit", "fixed"]
    warmup_seconds: float | None = None
    engine: str = "onnxruntime"
    device: str = "CPU"
    requested_engine: str = "onnxruntime"
    precision_reason: str | None = None
    engine_config: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def provider(self) -> str:
        """The provider that runs the model's nodes (the first one in use)."""
        return self.providers[0]

    @property
    def fallback(self) -> bool:
        """Whether the model does not run on the engine or provider it was asked for first."""
        return self.fallback_reason is not None


class Engine(Protocol):
    """What the service needs of an engine; `OnnxEngine` and `OpenVinoEngine` provide it.

    `run` must be safe to call from several threads at once.
    """

    info: ModelInfo

    def run(self, batch: np.ndarray) -> np.ndarray:
        """NHWC float32 (N, H, W, 3) in 0-255 -> (N, H * scale, W * scale, 3), not clipped."""
        ...

    def warm_up(self) -> float:
        """One run of the serving tile shape; records and returns its duration in seconds."""
        ...


def resolve_tile_mode(setting: str, provider: str) -> Literal["fit", "fixed"]:
    """`auto` fits tiles on the CPU provider, where any shape runs at no extra cost and fitted
    tiles save overlap and padding work, and keeps them fixed on GPU providers, which search
    kernels for every new shape."""
    if setting == "auto":
        return "fixed" if provider in GPU_PROVIDERS else "fit"
    return "fit" if setting == "fit" else "fixed"


@functools.cache
def _preload_nvidia_wheel_libraries() -> None:
    """Loads CUDA and cuDNN from NVIDIA's pip wheels (the `gpu` extra), which live where the
    dynamic loader does not look; `preload_dlls` prints, so its output is logged instead."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or importlib.util.find_spec("nvidia") is None:
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            preload()
    except Exception as exc:  # a failed preload only means CUDA may fall back; keep going
        logger.warning("onnxruntime.preload_dlls() failed: %s", exc)
    if captured.getvalue().strip():
        logger.info("onnxruntime.preload_dlls(): %s", captured.getvalue().strip())


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model file is not readable: {path}")


def scale_from_metadata(metadata: Mapping[str, str], path: Path) -> int | None:
    """The export's declared `scale`, or None when it has none (or an invalid one: logged), in
    which case the engine probes the model."""
    declared = metadata.get("scale")
    if declared is None:
        return None
    try:
        scale = int(declared)
    except ValueError:
        scale = 0
    if scale >= 1:
        return scale
    logger.warning("model %s has an invalid scale %r; probing", path, declared)
    return None


def _check_contract(session: ort.InferenceSession, path: Path) -> tuple[str, str]:
    """The input and output names, once the model is known to take one NHWC RGB tensor."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(
            f"model {path} must have exactly one input and one output, "
            f"has {len(inputs)} and {len(outputs)}"
        )
    model_input, model_output = inputs[0], outputs[0]
    if model_input.type != "tensor(float)" or len(model_input.shape) != 4:
        raise ModelLoadError(
            f"model {path} input must be a rank-4 float32 NHWC tensor, "
            f"got {model_input.type} with shape {model_input.shape}"
        )
    channels = model_input.shape[3]
    if isinstance(channels, int) and channels != 3:
        raise ModelLoadError(
            f"model {path} input must have 3 channels (NHWC), got shape {model_input.shape}"
        )
    names = (model_input.name, model_output.name)
    if names != CONTRACT_NAMES:
        logger.warning(
            "model %s names its input/output %r/%r instead of %r/%r; using them anyway",
            path,
            *names,
            *CONTRACT_NAMES,
        )
    return names


def _fallback_reason(plan: ProviderPlan, providers: tuple[str, ...]) -> str | None:
    """Why the session runs on another provider than the first one it was given, if it does.

    That is onnxruntime's silent fallback (typically CUDA libraries missing), or none of the
    requested providers being usable so that the CPU provider was substituted.
    """
    first = plan.attempted[0]
    if first not in plan.requested:
        skipped = "; ".join(f"{name}: {why}" for name, why in plan.skipped.items())
        return f"no requested provider is usable ({skipped})"
    if providers[0] == first:
        return None
    return (
        f"onnxruntime could not initialise {first} (its libraries, such as CUDA/cuDNN, are "
        "missing or incompatible; see the onnxruntime error logged above) and fell back to "
        f"{providers[0]}"
    )


class OnnxEngine:
    """One loaded super-resolution model and the providers it really runs on.

    Args:
        settings: The service settings: model path, providers, session options, precision and
            the tile shape (validated there, once).

    Raises:
        ModelLoadError: If the file is missing or unreadable, is not a loadable ONNX model, does
            not follow the contract (input `lr`, output `sr`, NHWC float32 in 0-255), a provider
            name is unknown, or the tile shape is too large for cuDNN. The message names the path.
    """

    def __init__(self, settings: Settings) -> None:
        base_path = Path(settings.model_path)
        try:
            plan = resolve_providers(settings.providers)
            options = session_options(
                intra_op_threads=settings.intra_op_threads,
                inter_op_threads=settings.inter_op_threads,
                graph_optimization=settings.graph_optimization,
                cpu_mem_arena=settings.cpu_mem_arena,
            )
        except ValueError as exc:
            raise ModelLoadError(f"cannot run model {base_path}: {exc}") from exc
        if plan.gpu_attempted:
            _preload_nvidia_wheel_libraries()
        self._plan, self._options = plan, options
        precision_setting, precision_reason = settings.precision, None
        if precision_setting == "bf16":
            # onnxruntime's CPU and CUDA providers have no bfloat16 convolutions.
            precision_setting = "fp32"
            precision_reason = "onnxruntime has no bfloat16 kernels for this model; running fp32"
            logger.warning("precision bf16: %s", precision_reason)
        path, self._session = self._load(base_path, precision_setting)
        self._input, self._output = _check_contract(self._session, path)
        providers = tuple(self._session.get_providers())
        metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.info = ModelInfo(
            path=path,
            scale=self._read_scale(path, metadata, settings.tile_size),
            input_name=self._input,
            output_name=self._output,
            metadata=metadata,
            providers=providers,
            requested_providers=plan.requested,
            skipped_providers=dict(plan.skipped),
            fallback_reason=_fallback_reason(plan, providers),
            precision="fp32" if path == base_path else "fp16",
            precision_setting=settings.precision,
            tile_size=settings.tile_size,
            batch_size=settings.tile_batch_size,
            tile_mode=resolve_tile_mode(settings.tile_mode, providers[0]),
            engine="onnxruntime",
            device="GPU" if providers[0] in GPU_PROVIDERS else "CPU",
            requested_engine=settings.engine,
            precision_reason=precision_reason,
        )
        self._check_activation_size()
        self._report()

    def _create_session(self, path: Path) -> ort.InferenceSession:
        _check_model_file(path)
        try:
            return ort.InferenceSession(
                str(path), sess_options=self._options, providers=provider_entries(self._plan)
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for bad models
            raise ModelLoadError(f"cannot load model {path}: {exc}") from exc

    def _load(self, base_path: Path, precision: str) -> tuple[Path, ort.InferenceSession]:
        """Opens the fp32 or fp16 file, as `precision` and the provider really in use decide."""
        fp16_path = fp16_path_for(base_path)
        if precision == "fp16":
            if not fp16_path.exists():
                raise ModelLoadError(
                    f"precision fp16 needs the fp16 export {fp16_path} (written by "
                    "`python -m training export ... --fp16`), which is missing"
                )
            return fp16_path, self._create_session(fp16_path)
        if precision == "fp32" or not self._plan.gpu_attempted:
            return base_path, self._create_session(base_path)
        # auto with a GPU provider requested: fp16 pays only if CUDA really runs, which is known
        # only once a session exists, so fp16 is tried first and dropped on a CPU fallback.
        _check_model_file(base_path)  # the fp32 model is required either way
        if not fp16_path.exists():
            logger.info("no fp16 export at %s; running the fp32 model", fp16_path)
            return base_path, self._create_session(base_path)
        session = self._create_session(fp16_path)
        cuda_active = CUDA_PROVIDER in session.get_providers()
        if choose_precision("auto", cuda_active=cuda_active, fp16_available=True) == "fp16":
            return fp16_path, session
        logger.warning(
            "the CUDA provider is not in use; loading the fp32 model %s instead of %s",
            base_path,
            fp16_path,
        )
        return base_path, self._create_session(base_path)

    def _read_scale(self, path: Path, metadata: Mapping[str, str], tile_size: int) -> int:
        declared = scale_from_metadata(metadata, path)
        if declared is not None:
            return declared
        # Older exports may lack the metadata; one run on a small input tells the factor just as
        # well (small, because the tile shape itself is checked against cuDNN's limits only once
        # the scale is known).
        side = min(tile_size, SCALE_PROBE_SIDE)
        try:
            height = self.run(np.zeros((1, side, side, 3), dtype=np.float32)).shape[1]
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelLoadError(f"model {path} failed a probe run: {exc}") from exc
        if height % side:
            raise ModelLoadError(
                f"model {path} maps {side} pixels to {height}, which is not an integer scale"
            )
        return height // side

    def _check_activation_size(self) -> None:
        """Refuses, at start, tile shapes that cuDNN would fail on every request."""
        info = self.info
        if info.provider not in GPU_PROVIDERS:
            return
        filters = declared_filters(info.metadata)
        problem = cudnn_tile_problem(info.batch_size, info.tile_size, info.scale, filters)
        if problem:
            raise ModelLoadError(
                f"{problem} (settings UPSCALER_TILE_BATCH_SIZE and UPSCALER_TILE_SIZE; "
                f"provider {info.provider})"
            )

    def _report(self) -> None:
        info = self.info
        logger.info(
            "model %s loaded: scale x%d, %s, requested providers %s, running on %s",
            info.path,
            info.scale,
            info.precision,
            list(info.requested_providers),
            list(info.providers),
        )
        for name, reason in info.skipped_providers.items():
            logger.info("execution provider %s skipped: %s", name, reason)
        if info.fallback:
            logger.warning(
                "execution provider fallback: requested %s but onnxruntime runs %s (%s)",
                list(info.requested_providers),
                list(info.providers),
                info.fallback_reason,
            )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Runs the model on an NHWC float32 batch (N, H, W, 3) with values in 0-255.

        Returns:
            The model output, float32 of shape (N, H * scale, W * scale, 3), not clipped.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._session.run([self._output], {self._input: batch})[0]

    def warm_up(self) -> float:
        """Runs one batch of the serving tile shape so no request pays for first-run costs.

        The first run allocates memory and, on GPUs, searches cuDNN algorithms or builds the
        TensorRT engine for that shape. Records the duration in `info.warmup_seconds`.

        Returns:
            The warm-up duration in seconds.

        Raises:
            ModelLoadError: If the output shape does not match the model's scale.
        """
        return warm_up_engine(self)


def warm_up_engine(engine: Engine) -> float:
    """Runs one batch of the engine's serving tile shape and records the duration in its info.

    Raises:
        ModelLoadError: If the output shape does not match the model's scale.
    """
    info = engine.info
    side = info.tile_size
    started = time.perf_counter()
    output = engine.run(np.zeros((info.batch_size, side, side, 3), dtype=np.float32))
    elapsed = time.perf_counter() - started
    expected = (info.batch_size, side * info.scale, side * info.scale, 3)
    if output.shape != expected:
        raise ModelLoadError(
            f"model {info.path} returned shape {output.shape} for a {side}-pixel tile; "
            f"expected {expected}"
        )
    engine.info = dataclasses.replace(info, warmup_seconds=elapsed)
    logger.info(
        "warm-up with %d tile(s) of %dx%d on %s (%s, %s) took %.3f s",
        info.batch_size,
        side,
        side,
        info.provider,
        info.engine,
        info.precision,
        elapsed,
    )
    return elapsed


def _with_fallback(engine: Engine, requested: str, reason: str) -> Engine:
    """The engine, its info saying that it stands in for `requested`, and why."""
    engine.info = dataclasses.replace(
        engine.info, requested_engine=requested, fallback_reason=reason
    )
    logger.warning(
        "engine fallback: requested %s, running %s on %s (%s)",
        requested,
        engine.info.engine,
        engine.info.device,
        reason,
    )
    return engine


def create_engine(settings: Settings) -> Engine:
    """Loads the model on the engine `settings.engine` asks for: the service's engine factory.

    * `onnxruntime`: `OnnxEngine` with `settings.providers`.
    * `openvino`: `OpenVinoEngine` on the CPU; if OpenVINO is not installed or cannot compile
      the model, `OnnxEngine` runs instead and its info reports the fallback with the reason.
    * `auto`: onnxruntime when a GPU provider really runs (the CUDA driver is present and the
      session did not fall back to the CPU), else OpenVINO when installed, else onnxruntime's
      CPU provider (see `service.ortconfig.auto_engine`).

    Raises:
        ModelLoadError: If the model cannot be loaded on any engine (missing file, broken
            contract...), as from the engines themselves.
    """
    if settings.engine == "onnxruntime":
        return OnnxEngine(settings)
    if settings.engine == "openvino":
        return _openvino_or_fallback(settings, requested="openvino")
    gpu_engine: OnnxEngine | None = None
    if _gpu_provider_configured(settings) and cuda_usable():
        gpu_engine = OnnxEngine(settings)
    gpu_running = gpu_engine is not None and gpu_engine.info.device == "GPU"
    choice = auto_engine(gpu_running=gpu_running, openvino_available=openvino_installed())
    if choice == "onnxruntime":
        return gpu_engine or OnnxEngine(settings)
    engine = _openvino_or_fallback(settings, requested="auto")
    if gpu_engine is not None and gpu_engine.info.fallback and engine.info.engine == "openvino":
        # A GPU was configured and present but onnxruntime could not use it: still a fallback.
        return _with_fallback(
            engine, "auto", f"{gpu_engine.info.fallback_reason}; running OpenVINO on the CPU"
        )
    return engine


def _gpu_provider_configured(settings: Settings) -> bool:
    """Whether a GPU provider is among those onnxruntime would be handed.

    Raises:
        ModelLoadError: For a provider name onnxruntime does not know (a typo), whatever engine
            would run.
    """
    try:
        return resolve_providers(settings.providers).gpu_attempted
    except ValueError as exc:
        raise ModelLoadError(f"cannot run model {settings.model_path}: {exc}") from exc


def _openvino_or_fallback(settings: Settings, *, requested: str) -> Engine:
    from service.openvino_engine import EngineUnavailableError, OpenVinoEngine

    try:
        return OpenVinoEngine(settings)
    except EngineUnavailableError as exc:
        engine = OnnxEngine(settings)
        return _with_fallback(engine, requested, f"OpenVINO cannot run the model: {exc}")
