"""What every section of one harness run shares: the model, the settings, the preset, a log."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.images import bench_image
from benchmarks.presets import Preset
from service.config import Settings
from service.core.engines import Engine, OnnxEngine, create_engine
from service.core.engines.ortconfig import openvino_installed

CPU_ONLY = ["CPUExecutionProvider"]


@dataclass
class BenchContext:
    """One harness run.

    Attributes:
        model_path: The fp32 ONNX model (its `_fp16` sibling is used where a section needs it).
        preset: How much to measure.
        settings: The service settings under test (the service's defaults unless `UPSCALER_*`
            variables say otherwise), with the model path and providers set.
        checkpoint: The `.keras` checkpoint of the same weights, for the Keras baseline.
        verbose: Print progress to stderr.
    """

    model_path: Path
    preset: Preset
    settings: Settings
    checkpoint: Path | None = None
    verbose: bool = True
    started: float = field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        """Progress line on stderr, with the seconds since the run started."""
        if self.verbose:
            print(f"[{time.perf_counter() - self.started:6.1f}s] {message}", file=sys.stderr)

    def make_engine(self, **overrides: Any) -> OnnxEngine:
        """An engine built as the service builds it, with some settings overridden."""
        return OnnxEngine(
            self.settings.model_copy(update={"model_path": self.model_path, **overrides})
        )

    def make_named_engine(self, engine: str, **overrides: Any) -> Engine:
        """An engine of `create_engine` (`onnxruntime` or `openvino`), some settings overridden."""
        return create_engine(
            self.settings.model_copy(
                update={"model_path": self.model_path, "engine": engine, **overrides}
            )
        )

    @property
    def engine_names(self) -> list[str]:
        """The service engines installed here: onnxruntime, and OpenVINO when importable."""
        return ["onnxruntime"] + (["openvino"] if openvino_installed() else [])

    @cached_property
    def engine(self) -> OnnxEngine:
        """The engine with the settings under test (built once)."""
        return self.make_engine()

    @property
    def fit_tiles(self) -> bool:
        """Whether the service fits tiles to images with these settings."""
        return self.engine.info.tile_mode == "fit"

    def with_settings(self, settings: Settings) -> BenchContext:
        """The same run with other service settings (and its own engine)."""
        return replace(self, settings=settings)

    def image(self, side: int, seed: int = 0) -> np.ndarray:
        """A square benchmark input (see `benchmarks.images.bench_image`)."""
        return bench_image(side, seed)[0]

    def image_source(self) -> str:
        """Where the benchmark inputs come from."""
        return bench_image(8)[1]


def service_settings(model_path: Path, providers: list[str], **overrides: Any) -> Settings:
    """The service's settings (defaults and `UPSCALER_*` variables) for this model and providers."""
    return Settings(model_path=model_path, providers=providers, **overrides)
