"""The model engines and the one place that picks them: `create_engine(settings)`.

Two engines implement the `Engine` protocol of `base` (`run`, `warm_up`, `info`): `OnnxEngine`
(onnxruntime, its GPU providers or its CPU provider) and `OpenVinoEngine` (the faster CPU
engine). `create_engine` decides which one runs before it builds any (`choose_engine`), from
`UPSCALER_ENGINE` and what the host offers; everything above the engine (tiling, ensemble,
admission) only sees the protocol.

Imports: `base` and `ortconfig` import no engine; each engine imports `base` only; this module
imports both engines.
"""

from __future__ import annotations

import dataclasses
import logging

from service.config import Settings
from service.core.engines.base import Engine, ModelInfo, warm_up_engine
from service.core.engines.onnxruntime_engine import OnnxEngine
from service.core.engines.openvino_engine import EngineUnavailableError, OpenVinoEngine
from service.core.engines.ortconfig import (
    auto_engine,
    cuda_usable,
    openvino_installed,
    resolve_providers,
)
from service.exceptions import ModelLoadError

__all__ = [
    "Engine",
    "ModelInfo",
    "OnnxEngine",
    "OpenVinoEngine",
    "choose_engine",
    "create_engine",
    "warm_up_engine",
]

logger = logging.getLogger(__name__)


def choose_engine(settings: Settings) -> str:
    """The engine to build, decided before any is built: `settings.engine` unless `auto`.

    `auto`: onnxruntime when a GPU provider is configured and the CUDA driver is present, else
    OpenVINO when installed, else onnxruntime's CPU provider (`ortconfig.auto_engine`). A host
    whose driver loads but whose CUDA libraries do not then runs onnxruntime on the CPU, with the
    fallback and its reason in `ModelInfo` (logged as a warning), rather than building a second
    engine.

    Raises:
        ModelLoadError: For a provider name onnxruntime does not know (a typo), whatever engine
            would run.
    """
    if settings.engine != "auto":
        return settings.engine
    try:
        gpu_configured = resolve_providers(settings.providers).gpu_attempted
    except ValueError as exc:
        raise ModelLoadError(f"cannot run model {settings.model_path}: {exc}") from exc
    gpu = gpu_configured and cuda_usable()
    return auto_engine(gpu_running=gpu, openvino_available=openvino_installed())


def create_engine(settings: Settings) -> Engine:
    """Loads the model on the engine `choose_engine` picks: the service's engine factory.

    When OpenVINO is chosen but is not installed or cannot compile the model, `OnnxEngine` runs
    instead and its info reports the fallback with the reason.

    Raises:
        ModelLoadError: If the model cannot be loaded on any engine (missing file, broken
            contract...), as from the engines themselves.
    """
    if choose_engine(settings) == "onnxruntime":
        return OnnxEngine(settings)
    try:
        return OpenVinoEngine(settings)
    except EngineUnavailableError as exc:
        engine = OnnxEngine(settings)
        reason = f"OpenVINO cannot run the model: {exc}"
        engine.info = dataclasses.replace(
            engine.info, requested_engine=settings.engine, fallback_reason=reason
        )
        logger.warning(
            "engine fallback: requested %s, running %s on %s (%s)",
            settings.engine,
            engine.info.engine,
            engine.info.device,
            reason,
        )
        return engine
