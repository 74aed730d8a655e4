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
from service.runtime import UpscalerRuntime
from service.upscaler import fits_tiles

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

    def make_runtime(self, **overrides: Any) -> UpscalerRuntime:
        """A runtime built like the service builds it, with some arguments overridden."""
        settings = self.settings
        options: dict[str, Any] = {
            "providers": settings.providers,
            "intra_op_threads": settings.intra_op_threads,
            "inter_op_threads": settings.inter_op_threads,
            "tile_size": settings.tile_size,
            "batch_size": settings.tile_batch_size,
            "precision": settings.precision,
            "graph_optimization": settings.graph_optimization,
            "cpu_mem_arena": settings.cpu_mem_arena,
        }
        options.update(overrides)
        return UpscalerRuntime(self.model_path, **options)

    @cached_property
    def runtime(self) -> UpscalerRuntime:
        """The runtime with the settings under test (built once)."""
        return self.make_runtime()

    @property
    def fit_tiles(self) -> bool:
        """Whether the service would fit tiles to images with these settings."""
        return fits_tiles(self.settings.tile_mode, self.runtime.primary_provider)

    def with_settings(self, settings: Settings) -> BenchContext:
        """The same run with other service settings (and its own runtime)."""
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
