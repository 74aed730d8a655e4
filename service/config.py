"""Service settings, read once from `UPSCALER_*` environment variables.

This is the only place in the service that reads the environment: every other module receives
plain values (or this `Settings` object) from its caller, so tests can inject anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Execution providers in order of preference. The runtime drops the ones this host cannot use
#: (see `service.runtime.resolve_providers`), so the same default serves GPU servers and laptops.
DEFAULT_PROVIDERS: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)

#: Short names accepted in `UPSCALER_PROVIDERS` so operators need not spell onnxruntime's names.
PROVIDER_ALIASES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

MIB = 1024 * 1024


class Settings(BaseSettings):
    """All tunables of the upscaling service.

    Every field can be set with an environment variable named `UPSCALER_<FIELD NAME>`, for
    example `UPSCALER_TILE_SIZE=256`. Lists (`UPSCALER_PROVIDERS`) accept a JSON list or a
    comma-separated string.
    """

    model_config = SettingsConfigDict(env_prefix="UPSCALER_", extra="ignore")

    model_path: Path = Field(
        default=Path("models/edsr_x4.onnx"),
        description="ONNX model exported by the training package.",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PROVIDERS),
        description="onnxruntime execution providers in order of preference.",
    )
    tile_size: int = Field(
        default=128,
        ge=8,
        description="Side of the square LR tile fed to the model. 128 suits CPUs; GPUs can "
        "take 256-512, which means fewer tiles and less overlap work.",
    )
    tile_overlap: int = Field(
        default=16,
        ge=0,
        description="LR pixels of context kept on each inner side of a tile and cropped away "
        "after upscaling, so that tiles join without seams.",
    )
    tile_batch_size: int = Field(
        default=1,
        ge=1,
        description="Tiles per model call. 1 is best on CPU; GPUs gain from 4-16.",
    )
    max_upload_bytes: int = Field(default=20 * MIB, ge=1, description="Largest request body.")
    # 2048 x 2048 input pixels become an 8192 x 8192 output: 201 MB as RGB uint8 (268 MB with
    # alpha) plus the PNG being encoded. With MAX_CONCURRENCY requests working at once that is the
    # bulk of the service's memory, so this cap is what keeps a 2-4 GB container alive.
    max_input_pixels: int = Field(
        default=2048 * 2048,
        ge=1,
        description="Largest decoded input (width x height). The output has 16x as many.",
    )
    max_concurrency: int = Field(
        default=1,
        ge=1,
        description="Upscales running at once. One request already uses every CPU core through "
        "onnxruntime's intra-op threads, so more only adds memory and latency on CPU.",
    )
    max_queue: int = Field(
        default=8, ge=0, description="Requests allowed to wait for a slot before 503."
    )
    retry_after_seconds: int = Field(
        default=5, ge=1, description="Value of the Retry-After header on 503 responses."
    )
    png_compress_level: int = Field(
        default=1,
        ge=0,
        le=9,
        description="zlib level of the output PNG. 1 is several times faster than 6 on the "
        "large outputs this service makes, for files only slightly bigger.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime intra-op threads; 0 lets onnxruntime choose."
    )
    inter_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime inter-op threads; 0 lets onnxruntime choose."
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: Any) -> Any:
        """Accepts a JSON list, a comma-separated string or a list, and expands short aliases."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, list | tuple):
            names = [str(name).strip() for name in value if str(name).strip()]
            return [PROVIDER_ALIASES.get(name.lower(), name) for name in names]
        return value

    @field_validator("providers")
    @classmethod
    def _require_providers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one execution provider is required")
        return value

    @model_validator(mode="after")
    def _check_tile_geometry(self) -> Self:
        # A tile must keep some pixels after both overlap margins are cropped away, otherwise
        # the tiler would never advance across the image.
        if self.tile_size <= 2 * self.tile_overlap:
            raise ValueError(
                f"tile_size ({self.tile_size}) must be greater than twice "
                f"tile_overlap ({self.tile_overlap})"
            )
        return self
