"""`OnnxEngine`: one onnxruntime `InferenceSession`, loaded once and shared by all requests.

The session is built with the configured execution providers, then asked which providers it
really got. onnxruntime does not fail when CUDA or cuDNN libraries are missing: it logs an error
and quietly runs on the CPU instead, which on a GPU server turns a 50 ms request into a minute.
So the engine describes what really runs (`ModelInfo`), flags a fallback and logs a warning
naming what was requested and what runs.

`InferenceSession.run` is thread-safe, so request threads call `OnnxEngine.run` concurrently
without a lock. The choices made before the session exists (providers, options, precision) are
the pure functions of `service.core.engines.ortconfig`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.config import Settings
from service.core.engines.base import (
    SCALE_PROBE_SIDE,
    ModelInfo,
    TensorSpec,
    check_contract,
    check_model_file,
    scale_from_metadata,
    warm_up_engine,
)
from service.core.engines.ortconfig import (
    CUDA_PROVIDER,
    GPU_PROVIDERS,
    ProviderPlan,
    choose_precision,
    cudnn_tile_problem,
    declared_filters,
    fp16_path_for,
    provider_entries,
    resolve_providers,
    session_options,
)
from service.exceptions import ModelLoadError

logger = logging.getLogger(__name__)


def _specs(arguments: list[ort.NodeArg]) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=argument.name,
            float32=argument.type == "tensor(float)",
            shape=tuple(d if isinstance(d, int) else None for d in argument.shape),
        )
        for argument in arguments
    ]


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
        self._input, self._output = check_contract(
            _specs(self._session.get_inputs()), _specs(self._session.get_outputs()), path
        )
        providers = tuple(self._session.get_providers())
        metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.info = ModelInfo.build(
            settings,
            path=path,
            scale=self._read_scale(path, metadata, settings.tile_size),
            names=(self._input, self._output),
            metadata=metadata,
            providers=providers,
            precision="fp32" if path == base_path else "fp16",
            engine="onnxruntime",
            requested_providers=plan.requested,
            skipped_providers=dict(plan.skipped),
            fallback_reason=_fallback_reason(plan, providers),
            precision_reason=precision_reason,
        )
        self._check_activation_size()
        self._report()

    def _create_session(self, path: Path) -> ort.InferenceSession:
        check_model_file(path)
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
        check_model_file(base_path)  # the fp32 model is required either way
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
