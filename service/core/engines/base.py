"""The engine seam: what every engine provides (`Engine`), what it reports (`ModelInfo`), and
the checks every engine makes of a model file, written once.

An engine is one loaded model that runs NHWC float32 batches (`run`, thread-safe) and warms up
its serving tile shape (`warm_up`). The engines (`onnxruntime_engine`, `openvino_engine`) import
this module and nothing of each other; `service.core.engines.create_engine` chooses between
them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from service.config import Settings
from service.core.engines.ortconfig import GPU_PROVIDERS
from service.core.tiling import model_pixels
from service.exceptions import ModelLoadError

logger = logging.getLogger(__name__)

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
        tile_overlap: Pixels of context kept around each inner seam between tiles.
        batch_size: Tiles per model call.
        tile_mode: `fit` (tiles fitted to each image) or `fixed`, resolved from `auto`.
        warmup_seconds: Duration of the warm-up run, None before it.
        seconds_per_megapixel: Model time per megapixel of tiles, timed on a run of the serving
            tile right after the warm-up run (which pays one-time costs); None before it. What
            the service's time estimates are made of (`service.core.registry.ServedModel`).
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
    precision: str
    precision_setting: str
    tile_size: int
    tile_overlap: int
    batch_size: int
    tile_mode: Literal["fit", "fixed"]
    engine: str
    device: str
    requested_engine: str
    requested_providers: tuple[str, ...] = ()
    skipped_providers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    fallback_reason: str | None = None
    precision_reason: str | None = None
    engine_config: Mapping[str, str] = dataclasses.field(default_factory=dict)
    warmup_seconds: float | None = None
    seconds_per_megapixel: float | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        path: Path,
        scale: int,
        names: tuple[str, str],
        metadata: Mapping[str, str],
        providers: tuple[str, ...],
        precision: str,
        engine: str,
        **details: object,
    ) -> ModelInfo:
        """The info of a model an engine loaded with `settings`: the fields every engine fills
        alike (the settings' precision, tile shape and engine, and the tile mode resolved for
        the provider) are filled here; `details` are the engine's own (`requested_providers`,
        `fallback_reason`, `precision_reason`, `engine_config`...)."""
        return cls(
            path=path,
            scale=scale,
            input_name=names[0],
            output_name=names[1],
            metadata=metadata,
            providers=providers,
            precision=precision,
            precision_setting=settings.precision,
            tile_size=settings.tile_size,
            tile_overlap=settings.tile_overlap,
            batch_size=settings.tile_batch_size,
            tile_mode=resolve_tile_mode(settings.tile_mode, providers[0]),
            engine=engine,
            device="GPU" if providers[0] in GPU_PROVIDERS else "CPU",
            requested_engine=settings.engine,
            **details,  # type: ignore[arg-type]
        )

    @property
    def provider(self) -> str:
        """The provider that runs the model's nodes (the first one in use)."""
        return self.providers[0]

    @property
    def fallback(self) -> bool:
        """Whether the model does not run on the engine or provider it was asked for first."""
        return self.fallback_reason is not None

    def model_seconds(self, width: int, height: int) -> float | None:
        """Estimated model time of one pass over a `width` x `height` image: the pixels its
        tiles hand the model (overlap and padding included) at `seconds_per_megapixel`; None
        before the warm-up measured it."""
        if self.seconds_per_megapixel is None:
            return None
        fit = self.tile_mode == "fit"
        pixels = model_pixels(
            height, width, self.tile_size, self.tile_overlap, fit=fit, batch_size=self.batch_size
        )
        return pixels / 1e6 * self.seconds_per_megapixel


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


def check_model_file(path: Path) -> None:
    """Refuses a path that is missing, not a file or unreadable, naming it.

    Raises:
        ModelLoadError: Saying which.
    """
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model file is not readable: {path}")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as an engine reads it: name, element type and shape.

    Attributes:
        name: The tensor's name.
        float32: Whether its elements are float32.
        shape: Its dimensions, None where dynamic; None for an unknown rank.
    """

    name: str
    float32: bool
    shape: tuple[int | None, ...] | None


def check_contract(
    inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], path: Path
) -> tuple[str, str]:
    """The input and output names, once the model is known to take one NHWC RGB tensor (the
    export contract of the training package: input `lr`, output `sr`, float32 0-255).

    Raises:
        ModelLoadError: If the model has more tensors, or its input is not rank-4 float32 with
            3 channels.
    """
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(
            f"model {path} must have exactly one input and one output, "
            f"has {len(inputs)} and {len(outputs)}"
        )
    model_input, model_output = inputs[0], outputs[0]
    if not model_input.float32 or model_input.shape is None or len(model_input.shape) != 4:
        raise ModelLoadError(
            f"model {path} input must be a rank-4 float32 NHWC tensor, got shape "
            f"{model_input.shape} ({'float32' if model_input.float32 else 'not float32'})"
        )
    channels = model_input.shape[3]
    if channels is not None and channels != 3:
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


def warm_up_engine(engine: Engine) -> float:
    """Runs one batch of the engine's serving tile shape and records the duration in its info,
    then times a second run: this host's model time per megapixel, warm.

    Raises:
        ModelLoadError: If the output shape does not match the model's scale.
    """
    info = engine.info
    side = info.tile_size
    tiles = np.zeros((info.batch_size, side, side, 3), dtype=np.float32)
    started = time.perf_counter()
    output = engine.run(tiles)
    elapsed = time.perf_counter() - started
    expected = (info.batch_size, side * info.scale, side * info.scale, 3)
    if output.shape != expected:
        raise ModelLoadError(
            f"model {info.path} returned shape {output.shape} for a {side}-pixel tile; "
            f"expected {expected}"
        )
    started = time.perf_counter()
    engine.run(tiles)
    pace = (time.perf_counter() - started) / (tiles.size / 3 / 1e6)
    engine.info = dataclasses.replace(info, warmup_seconds=elapsed, seconds_per_megapixel=pace)
    logger.info(
        "warm-up with %d tile(s) of %dx%d on %s (%s, %s) took %.3f s; then %.2f s per megapixel",
        info.batch_size,
        side,
        side,
        info.provider,
        info.engine,
        info.precision,
        elapsed,
        pace,
    )
    return elapsed
