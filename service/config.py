"""Service settings, read once from `UPSCALER_*` environment variables.

This is the only place in the service that reads the environment: every other module receives
plain values (or this `Settings` object) from its caller, so tests can inject anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self

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
    # Measured on 2 CPU cores with fitted tiles (docs/benchmarks.md, tuning section): a 512x512
    # input took 7.1 s with 128-pixel tiles, 6.0 s with 192, 5.7 s with 256, 4.9 s with 384 and
    # 5.7 s whole; a 256x256 input 1.8 s, 1.45 s, 1.3 s, 1.3 s. Peak memory of one call grows with
    # the square of the tile: 0.75 GB at 192, 1.85 GB at 256, 3.4 GB at 384 (max RSS). 192 keeps a
    # request within the 2-4 GB a container is sized for (see max_input_pixels) for 4-10 % more
    # time than 256; hosts with memory to spare can set 256 or 384.
    tile_size: int = Field(
        default=192,
        ge=8,
        description="Side of the square LR tile fed to the model (the largest tile with fitted "
        "tiles). 192 suits CPUs (0.75 GB per call); on GPUs 256-512 run within 12 % of each "
        "other per pixel, and TILE_BATCH_SIZE x TILE_SIZE² must stay under 2**21 for cuDNN "
        "(at x4 with 64 filters: at most 7 tiles of 512, 31 of 256), which start-up checks.",
    )
    # Measured with the shipped model on 300x300 crops of four Set14 photos, fitted 96-pixel tiles
    # against one whole-image call (uint8 outputs): overlap 4 differs by up to 7 grey levels;
    # from 8 on, the largest difference is 1 grey level (a rounding flip), on 0.09-0.14 % of the
    # pixels at 8 (77-79 dB PSNR against whole-image inference) and 0.0004 % at 16 (102-105 dB).
    # 8 keeps the seams invisible and does 11 % less pixel work than 16 on a 512x512 input (three
    # 192-pixel tiles per side: 1.13x the image's pixels against 1.27x).
    tile_overlap: int = Field(
        default=8,
        ge=0,
        description="LR pixels of context kept on each inner side of a tile and cropped away "
        "after upscaling, so that tiles join without seams (from 8 on, tiled output is within 1 "
        "grey level of whole-image inference).",
    )
    tile_mode: Literal["auto", "fixed", "fit"] = Field(
        default="auto",
        description="`fixed`: every tile is TILE_SIZE square (GPUs tune kernels per shape); "
        "`fit`: as many tiles as TILE_SIZE needs, shrunk to fit the image, so less overlap and "
        "padding work (CPUs run any shape at no extra cost); `auto`: fit on the CPU provider, "
        "fixed on GPUs.",
    )
    tile_batch_size: int = Field(
        default=1,
        ge=1,
        description="Tiles per model call. 1 is best on CPU. On an H100 (fp16) a batch of 8 "
        "tiles of 256 ran only 11 % more pixels a second than one tile, and with fixed tiles "
        "a lone tile pays for the whole batch: 1-2 for interactive traffic, more only where "
        "many requests overlap.",
    )
    max_upload_bytes: int = Field(default=20 * MIB, ge=1, description="Largest request body.")
    # A client that trickles its upload would otherwise keep a connection and up to
    # MAX_UPLOAD_BYTES of buffer alive indefinitely; many of them would exhaust memory.
    upload_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Longest time the whole upload may take to arrive before 408.",
    )
    # Request bodies are read before a request queues for a slot (so uploads overlap with the
    # running upscale), and a raw body is held in memory while it arrives: without this bound,
    # clients that send ~20 MiB and then stall grew the process by 20 MiB each (measured: 100
    # such connections, +1.6 GB). 16 x 20 MiB caps upload buffers at ~320 MB.
    max_concurrent_uploads: int = Field(
        default=16,
        ge=1,
        description="Request bodies received at once; more get 503 with Retry-After before any "
        "byte is read. With MAX_UPLOAD_BYTES this bounds the memory uploads can hold.",
    )
    # 2048 x 2048 input pixels become an 8192 x 8192 output: 201 MB as RGB uint8 (268 MB with
    # alpha) plus the file being encoded. With MAX_CONCURRENCY requests working at once that is
    # the bulk of the service's memory, so this cap is what keeps a 2-4 GB container alive.
    # Measured at this limit (`python -m benchmarks --sections memory`, docs/benchmarks.md),
    # one request's pipeline adds 0.3-0.35 GB for RGB to PNG, 0.9 GB for RGBA to PNG, 0.8 GB for
    # RGBA to JPEG and 1.9-2.0 GB for RGBA to lossless WebP (libwebp's own buffers), on top of
    # the 0.75 GB peak of a process running one 192-pixel tile.
    max_input_pixels: int = Field(
        default=2048 * 2048,
        ge=1,
        description="Largest decoded input (width x height). The output has 16x as many.",
    )
    # quality=max runs the model 8 times. Bounding its input to 1/8 of the largest standard
    # input keeps its worst case to the same model work as the largest standard upscale (on 2 CPU
    # cores a 1024 x 1024 input took 22 s, so 2048 x 2048 about 1.5 minutes), not 8 times that.
    max_ensemble_input_pixels: int = Field(
        default=2048 * 2048 // 8,
        ge=1,
        description="Largest input (width x height) for `quality=max` (8 model runs); larger "
        "ones get 413. The default gives it the model work of the largest standard upscale.",
    )
    # Measured on 2 cores: four images upscaled one at a time took 2.34 s, two at a time 2.60 s
    # (both sharing onnxruntime's intra-op threads): concurrency lowers CPU throughput.
    max_concurrency: int = Field(
        default=1,
        ge=1,
        description="Upscales running at once. One request already uses every CPU core through "
        "onnxruntime's intra-op threads, so more only adds memory and latency on CPU "
        "(measured 10 % less throughput with 2 on 2 cores); 2-4 on GPUs lets decoding and "
        "encoding overlap with the model.",
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
        description="Compression level of the output PNG, 0-9 as in zlib. 1 is several times "
        "faster than 6 on the large outputs this service makes, for files only slightly bigger. "
        "With ISA-L (the `strips` writer), 1-3 map to its levels 1-3 and higher levels to 3.",
    )
    # Session options measured on a 160x160 input, 2 cores (docs/benchmarks.md, tuning section):
    # intra-op 1 thread 760 ms, 2 threads 439 ms, 0 (one per physical core, here 2) 417 ms;
    # inter-op 2 threads 434 ms (EDSR is one chain of operators, nothing runs beside it); graph
    # optimisation disable/basic/extended/all 582/570/567/431 ms (only `all` fuses the layout
    # changes around the convolutions); CPU arena off 552 ms, on 421 ms.
    intra_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime intra-op threads; 0 lets onnxruntime choose."
    )
    inter_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime inter-op threads; 0 lets onnxruntime choose."
    )
    graph_optimization: Literal["disable", "basic", "extended", "layout", "all"] = Field(
        default="all",
        description="onnxruntime graph optimisation level (`layout` needs onnxruntime >= 1.22); "
        "`all` measured 25 % faster than the others on CPU.",
    )
    cpu_mem_arena: bool = Field(
        default=True,
        description="Keep onnxruntime's CPU memory arena (reuses the buffers of the fixed tile "
        "shape between calls).",
    )
    precision: Literal["auto", "fp32", "fp16"] = Field(
        default="auto",
        description="Model precision. `auto` runs the fp16 export (`<model>_fp16.onnx`, from "
        "`python -m training export --fp16`) when the CUDA provider is really in use and the "
        "file exists, else the fp32 model; `fp16` requires that file.",
    )
    batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="Longest a partly filled tile batch waits for tiles of other concurrent "
        "requests before it runs (only with TILE_BATCH_SIZE > 1 and several requests "
        "upscaling; a lone request never waits).",
    )
    png_encoder: Literal["strips", "pillow"] = Field(
        default="strips",
        description="PNG writer: `strips` compresses strips of rows in parallel threads (with "
        "ISA-L when the `isal` package is installed), `pillow` uses Pillow's encoder.",
    )
    encode_threads: int = Field(
        default=0,
        ge=0,
        description="Threads of the `strips` PNG writer; 0 means one per available CPU.",
    )
    jpeg_quality: int = Field(
        default=92,
        ge=1,
        le=100,
        description="Quality of JPEG output (answers to `Accept: image/jpeg`).",
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
