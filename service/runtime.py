"""The model runtime: one onnxruntime `InferenceSession` shared by all requests.

The session is built with the configured execution providers, then asked which providers it
really got. onnxruntime does not fail when CUDA or cuDNN libraries are missing: it logs an error
and quietly runs on the CPU instead, which on a GPU server turns a 50 ms request into a minute.
This module therefore reports the providers actually in use, flags a fallback and logs a warning
naming what was requested and what runs.

`InferenceSession.run` is thread-safe, so request threads call `UpscalerRuntime.run` concurrently
without a lock.

How the session is set up (graph optimisation, arena, threads, the CUDA provider's options and
the fp32/fp16 choice) is decided by the pure functions of `service.ortconfig`; bound buffers
(`service.iobinding`) are opt-in, since with the output read back to the host they measured
slower than a plain `run` on an H100.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import onnxruntime as ort

from service.config import DEFAULT_PROVIDERS
from service.exceptions import ModelLoadError
from service.iobinding import BoundRunner
from service.ortconfig import (
    choose_precision,
    cuda_provider_options,
    cudnn_tile_problem,
    declared_filters,
    fp16_path_for,
    session_options,
)

if TYPE_CHECKING:
    from service.config import Settings

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
#: Side of the input that finds the scale of a model without `scale` metadata.
SCALE_PROBE_SIDE = 16

#: The TensorRT 10 core library, whose presence decides whether TensorRT is worth trying.
TENSORRT_LIBRARY_NAMES = ("libnvinfer.so.10", "nvinfer_10.dll")

#: Input and output names fixed by the export contract of the training package.
CONTRACT_INPUT_NAME = "lr"
CONTRACT_OUTPUT_NAME = "sr"


@dataclass(frozen=True)
class ProviderPlan:
    """The execution providers to hand to onnxruntime, decided before the session exists.

    Attributes:
        requested: Providers as configured, in order of preference.
        attempted: The subset this host can plausibly use, passed to onnxruntime.
        skipped: Requested providers left out of `attempted`, each with the reason.
    """

    requested: tuple[str, ...]
    attempted: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)


def tensorrt_libraries_loadable() -> bool:
    """Tells whether TensorRT's core library can be loaded on this host.

    TensorRT ships separately from CUDA and is missing on most hosts, including most GPU
    servers. Handing onnxruntime the TensorRT provider without it makes session creation print a
    long error and retry without it, so the runtime only tries TensorRT when this check passes.
    The library is looked up on the default loader path and in the `tensorrt_libs` pip wheel.
    """
    candidates: list[str] = list(TENSORRT_LIBRARY_NAMES)
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is not None and spec.submodule_search_locations:
        for directory in spec.submodule_search_locations:
            candidates.extend(str(Path(directory) / name) for name in TENSORRT_LIBRARY_NAMES)
    for candidate in candidates:
        try:
            # RTLD_GLOBAL so that onnxruntime's TensorRT provider library later resolves its
            # dependency on libnvinfer against this already-loaded copy.
            ctypes.CDLL(candidate, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        except OSError:
            continue
        return True
    return False


@functools.cache
def _preload_nvidia_wheel_libraries() -> None:
    """Loads CUDA and cuDNN from NVIDIA's pip wheels, when those are installed.

    The `gpu` extra installs CUDA and cuDNN as pip wheels, which live in site-packages where the
    dynamic loader does not look; `onnxruntime.preload_dlls` loads them so the CUDA provider can
    find them. Hosts with a system CUDA have no `nvidia` package and skip this. The function
    prints to stdout, so its output is captured and logged instead.
    """
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


def resolve_providers(requested: Sequence[str]) -> ProviderPlan:
    """Decides which of the requested execution providers to hand to onnxruntime.

    A provider is left out when this onnxruntime build lacks it, or when it is TensorRT and
    TensorRT's library cannot be loaded. If nothing is left, the CPU provider is used.

    Args:
        requested: Provider names in order of preference.

    Returns:
        The plan, including why each left-out provider was skipped.

    Raises:
        ValueError: If a name is not an onnxruntime execution provider at all (a typo).
    """
    known = set(ort.get_all_providers())
    available = set(ort.get_available_providers())
    attempted: list[str] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(requested):
        if name not in known:
            raise ValueError(
                f"unknown execution provider {name!r}; known providers: {sorted(known)}"
            )
        if name not in available:
            skipped[name] = "not included in this onnxruntime build"
        elif name == TENSORRT_PROVIDER and not tensorrt_libraries_loadable():
            skipped[name] = f"TensorRT library ({' / '.join(TENSORRT_LIBRARY_NAMES)}) not found"
        else:
            attempted.append(name)
    if not attempted:
        attempted.append(CPU_PROVIDER)
    return ProviderPlan(requested=tuple(requested), attempted=tuple(attempted), skipped=skipped)


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model file is not readable: {path}")


class UpscalerRuntime:
    """One loaded super-resolution model and the providers it really runs on.

    Args:
        model_path: ONNX file following the export contract (input `lr`, output `sr`, NHWC
            float32 in 0-255).
        providers: Execution providers in order of preference.
        intra_op_threads: onnxruntime intra-op threads (0: onnxruntime's default).
        inter_op_threads: onnxruntime inter-op threads (0: onnxruntime's default).
        tile_size: Side of the tiles that will be fed to `run`; used by `warm_up`.
        batch_size: Tiles per `run` call; used by `warm_up`.
        precision: `auto` (the fp16 export beside the model when the CUDA provider is really in
            use and that file exists, else fp32), `fp32` or `fp16` (see
            `service.ortconfig.choose_precision`).
        graph_optimization: onnxruntime graph optimisation level (`service.ortconfig`).
        cpu_mem_arena: Keep onnxruntime's CPU memory arena.
        io_binding: Run the tile shape through preallocated bound buffers (`service.iobinding`).
            Off by default: on an H100 a bound call that copies its output back to the host
            took twice as long as a plain `run` for 512-pixel tiles (docs/benchmarks.md, GPU).

    Raises:
        ModelLoadError: If the file is missing or unreadable, is not a loadable ONNX model, does
            not follow the contract, or a provider name is unknown. The message names the path.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        tile_size: int = 128,
        batch_size: int = 1,
        precision: str = "auto",
        graph_optimization: str = "all",
        cpu_mem_arena: bool = True,
        io_binding: bool = False,
    ) -> None:
        self._base_path = Path(model_path)
        self._tile_size = tile_size
        self._batch_size = batch_size
        self._precision_setting = precision
        try:
            self._plan = resolve_providers(providers)
            self._options = session_options(
                intra_op_threads=intra_op_threads,
                inter_op_threads=inter_op_threads,
                graph_optimization=graph_optimization,
                cpu_mem_arena=cpu_mem_arena,
            )
            choose_precision(precision, cuda_active=False, fp16_available=False)  # validates
        except ValueError as exc:
            raise ModelLoadError(f"cannot run model {self._base_path}: {exc}") from exc
        if self._gpu_attempted:
            _preload_nvidia_wheel_libraries()
        self._model_path, self._session = self._load()
        self._providers = tuple(self._session.get_providers())
        self._input_name, self._output_name = self._check_contract()
        self._metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self._bound: BoundRunner | None = None  # set once the scale (the output shape) is known
        self._scale = self._read_scale()
        self._warmup_seconds: float | None = None
        self._check_activation_size()
        self._bound = self._bound_runner(io_binding)
        self._report_providers()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Builds the runtime described by the service settings."""
        return cls(
            settings.model_path,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            tile_size=settings.tile_size,
            batch_size=settings.tile_batch_size,
            precision=settings.precision,
            graph_optimization=settings.graph_optimization,
            cpu_mem_arena=settings.cpu_mem_arena,
        )

    @property
    def _on_gpu(self) -> bool:
        """Whether a GPU provider really runs the model (not merely requested)."""
        return self.primary_provider in (CUDA_PROVIDER, TENSORRT_PROVIDER)

    @property
    def _gpu_attempted(self) -> bool:
        return CUDA_PROVIDER in self._plan.attempted or TENSORRT_PROVIDER in self._plan.attempted

    def _provider_entries(self) -> list[str | tuple[str, dict[str, Any]]]:
        # The one place that attaches per-provider options; the others run with defaults.
        return [
            (name, cuda_provider_options()) if name == CUDA_PROVIDER else name
            for name in self._plan.attempted
        ]

    def _create_session(self, path: Path) -> ort.InferenceSession:
        _check_model_file(path)
        try:
            return ort.InferenceSession(
                str(path), sess_options=self._options, providers=self._provider_entries()
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for bad models
            raise ModelLoadError(f"cannot load model {path}: {exc}") from exc

    def _load(self) -> tuple[Path, ort.InferenceSession]:
        """Opens the fp32 or fp16 file, as `precision` and the provider really in use decide."""
        fp16_path = fp16_path_for(self._base_path)
        if self._precision_setting == "fp16":
            if not fp16_path.exists():
                raise ModelLoadError(
                    f"precision fp16 needs the fp16 export {fp16_path} (written by "
                    "`python -m training export ... --fp16`), which is missing"
                )
            return fp16_path, self._create_session(fp16_path)
        if self._precision_setting == "fp32" or not self._gpu_attempted:
            return self._base_path, self._create_session(self._base_path)
        # auto with a GPU provider requested: fp16 pays only if CUDA really runs, which is known
        # only once a session exists, so fp16 is tried first and dropped on a CPU fallback.
        _check_model_file(self._base_path)  # the fp32 model is required either way
        if not fp16_path.exists():
            logger.info("no fp16 export at %s; running the fp32 model", fp16_path)
            return self._base_path, self._create_session(self._base_path)
        session = self._create_session(fp16_path)
        cuda_active = CUDA_PROVIDER in session.get_providers()
        if choose_precision("auto", cuda_active=cuda_active, fp16_available=True) == "fp16":
            return fp16_path, session
        logger.warning(
            "the CUDA provider is not in use; loading the fp32 model %s instead of %s",
            self._base_path,
            fp16_path,
        )
        return self._base_path, self._create_session(self._base_path)

    def _check_activation_size(self) -> None:
        """Refuses, at start, tile shapes that cuDNN would fail on every request."""
        if not self._on_gpu:
            return
        filters = declared_filters(self._metadata)
        problem = cudnn_tile_problem(self._batch_size, self._tile_size, self._scale, filters)
        if problem:
            raise ModelLoadError(
                f"{problem} (settings UPSCALER_TILE_BATCH_SIZE and UPSCALER_TILE_SIZE; "
                f"provider {self.primary_provider})"
            )

    def _bound_runner(self, io_binding: bool) -> BoundRunner | None:
        if not io_binding:
            return None
        side = self._tile_size * self._scale
        return BoundRunner(
            self._session,
            input_name=self._input_name,
            output_name=self._output_name,
            input_shape=(self._batch_size, self._tile_size, self._tile_size, 3),
            output_shape=(self._batch_size, side, side, 3),
            device="cuda" if self._on_gpu else "cpu",
        )

    def _check_contract(self) -> tuple[str, str]:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(
                f"model {self._model_path} must have exactly one input and one output, "
                f"has {len(inputs)} and {len(outputs)}"
            )
        model_input, model_output = inputs[0], outputs[0]
        if model_input.type != "tensor(float)" or len(model_input.shape) != 4:
            raise ModelLoadError(
                f"model {self._model_path} input must be a rank-4 float32 NHWC tensor, "
                f"got {model_input.type} with shape {model_input.shape}"
            )
        channels = model_input.shape[3]
        if isinstance(channels, int) and channels != 3:
            raise ModelLoadError(
                f"model {self._model_path} input must have 3 channels (NHWC), "
                f"got shape {model_input.shape}"
            )
        if (model_input.name, model_output.name) != (CONTRACT_INPUT_NAME, CONTRACT_OUTPUT_NAME):
            logger.warning(
                "model %s names its input/output %r/%r instead of %r/%r; using them anyway",
                self._model_path,
                model_input.name,
                model_output.name,
                CONTRACT_INPUT_NAME,
                CONTRACT_OUTPUT_NAME,
            )
        return model_input.name, model_output.name

    def _read_scale(self) -> int:
        declared = self._metadata.get("scale")
        if declared is not None:
            try:
                scale = int(declared)
            except ValueError:
                scale = 0
            if scale >= 1:
                return scale
            logger.warning("model %s has an invalid scale %r; probing", self._model_path, declared)
        # Older exports may lack the metadata; one run on a small input tells the factor just as
        # well (small, because the tile shape itself is checked against the provider's limits
        # only once the scale is known).
        side = min(self._tile_size, SCALE_PROBE_SIDE)
        try:
            height = self.run(np.zeros((1, side, side, 3), dtype=np.float32)).shape[1]
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelLoadError(f"model {self._model_path} failed a probe run: {exc}") from exc
        if height % side:
            raise ModelLoadError(
                f"model {self._model_path} maps {side} pixels to {height}, "
                "which is not an integer scale"
            )
        return height // side

    def _report_providers(self) -> None:
        logger.info(
            "model %s loaded: scale x%d, %s, requested providers %s, running on %s%s",
            self._model_path,
            self._scale,
            self.precision,
            list(self._plan.requested),
            list(self._providers),
            ", I/O bound" if self._bound is not None else "",
        )
        for name, reason in self._plan.skipped.items():
            logger.info("execution provider %s skipped: %s", name, reason)
        if self.fallback:
            logger.warning(
                "execution provider fallback: requested %s but onnxruntime runs %s (%s)",
                list(self._plan.requested),
                list(self._providers),
                self.fallback_reason,
            )

    def _zero_batch(self) -> np.ndarray:
        return np.zeros((self._batch_size, self._tile_size, self._tile_size, 3), dtype=np.float32)

    @property
    def model_path(self) -> Path:
        """Path of the loaded ONNX file (the fp16 export when that was chosen)."""
        return self._model_path

    @property
    def precision(self) -> str:
        """`fp16` when the fp16 export runs, else `fp32`."""
        return "fp16" if self._model_path != self._base_path else "fp32"

    @property
    def precision_setting(self) -> str:
        """The precision as configured (`auto`, `fp32` or `fp16`)."""
        return self._precision_setting

    @property
    def io_binding(self) -> bool:
        """Whether the tile shape runs through bound, preallocated buffers."""
        return self._bound is not None

    @property
    def providers(self) -> tuple[str, ...]:
        """Providers the session really uses, most preferred first (`get_providers()`)."""
        return self._providers

    @property
    def primary_provider(self) -> str:
        """The provider that runs the model's nodes (the first one in use)."""
        return self._providers[0]

    @property
    def requested_providers(self) -> tuple[str, ...]:
        """Providers as configured."""
        return self._plan.requested

    @property
    def skipped_providers(self) -> dict[str, str]:
        """Requested providers not tried on this host, with the reason for each."""
        return dict(self._plan.skipped)

    @property
    def fallback(self) -> bool:
        """True when the session does not run on the first provider it was given.

        That is onnxruntime's silent fallback (typically CUDA libraries missing), or none of the
        requested providers being usable so that the CPU provider was substituted.
        """
        return self.primary_provider != self._plan.attempted[0] or (
            self.primary_provider not in self._plan.requested
        )

    @property
    def fallback_reason(self) -> str | None:
        """Why the session runs on another provider than requested, or None without fallback."""
        if not self.fallback:
            return None
        if self._plan.attempted[0] not in self._plan.requested:
            skipped = "; ".join(f"{name}: {why}" for name, why in self._plan.skipped.items())
            return f"no requested provider is usable ({skipped})"
        return (
            f"onnxruntime could not initialise {self._plan.attempted[0]} "
            "(its libraries, such as CUDA/cuDNN, are missing or incompatible; see the "
            "onnxruntime error logged above) and fell back to "
            f"{self.primary_provider}"
        )

    @property
    def scale(self) -> int:
        """Upscaling factor (from the `scale` metadata, or probed)."""
        return self._scale

    @property
    def metadata(self) -> dict[str, str]:
        """The model's `metadata_props` (scale, filters, blocks, training details...)."""
        return dict(self._metadata)

    @property
    def input_name(self) -> str:
        """Name of the model input (`lr` by contract)."""
        return self._input_name

    @property
    def output_name(self) -> str:
        """Name of the model output (`sr` by contract)."""
        return self._output_name

    @property
    def tile_size(self) -> int:
        """Side of the tiles this runtime was warmed up for."""
        return self._tile_size

    @property
    def batch_size(self) -> int:
        """Tiles per `run` call this runtime was warmed up for."""
        return self._batch_size

    @property
    def warmup_seconds(self) -> float | None:
        """Duration of the warm-up run, or None before `warm_up`."""
        return self._warmup_seconds

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Runs the model on an NHWC float32 batch with values in 0-255.

        Args:
            batch: Array of shape (N, H, W, 3).

        Returns:
            The model output, float32 of shape (N, H * scale, W * scale, 3), not clipped.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._bound is not None and batch.shape == self._bound.input_shape:
            return self._bound.run(batch)
        return self._session.run([self._output_name], {self._input_name: batch})[0]

    def warm_up(self) -> float:
        """Runs one batch of the serving tile shape so no request pays for first-run costs.

        The first run allocates memory and, on GPUs, searches cuDNN algorithms or builds the
        TensorRT engine for that shape; the tiler only ever sends this one shape afterwards.

        Returns:
            The warm-up duration in seconds.

        Raises:
            ModelLoadError: If the output shape does not match the model's scale.
        """
        started = time.perf_counter()
        output = self.run(self._zero_batch())
        elapsed = time.perf_counter() - started
        side = self._tile_size * self._scale
        expected = (self._batch_size, side, side, 3)
        if output.shape != expected:
            raise ModelLoadError(
                f"model {self._model_path} returned shape {output.shape} for a "
                f"{self._tile_size}-pixel tile; expected {expected}"
            )
        self._warmup_seconds = elapsed
        logger.info(
            "warm-up with %d tile(s) of %dx%d on %s took %.3f s",
            self._batch_size,
            self._tile_size,
            self._tile_size,
            self.primary_provider,
            elapsed,
        )
        return elapsed
