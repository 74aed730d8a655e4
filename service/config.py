"""Service settings, read once from `UPSCALER_*` environment variables.

This is the only place in the service that reads the environment: every other module receives
plain values (or this `Settings` object) from its caller, so tests can inject anything.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Execution providers in order of preference. The engine drops the ones this host cannot use
#: (see `service.core.engines.ortconfig.resolve_providers`), so the same default serves GPU
#: servers and laptops.
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

    # hide_input_in_errors: a malformed UPSCALER_API_KEYS must not print the keys.
    model_config = SettingsConfigDict(
        env_prefix="UPSCALER_", extra="ignore", hide_input_in_errors=True
    )

    model_path: Path = Field(
        default=Path("models/edsr_x4.onnx"),
        description="One ONNX model to serve alone, named by its file stem and so the default. "
        "Setting it (or `python -m service --model`) makes the service ignore MODELS_DIR and "
        "DEFAULT_MODEL; left unset, every model in MODELS_DIR is served, and this default is "
        "only the file that single-model tools (`service.entry.client --local`) load.",
    )
    models_dir: Path = Field(
        default=Path("models"),
        description="Folder whose models are all loaded and warmed up at start-up, unless "
        "MODEL_PATH is set: every `NAME.onnx` (a `_fp16.onnx` copy is that model's fp16 "
        "export, see PRECISION, not a model of its own), with its card `NAME.json` beside it "
        "for GET /models. Requests pick one with `?model=NAME`; each costs its weights in "
        "memory and one warm-up.",
    )
    default_model: str = Field(
        default="edsr_x4",
        min_length=1,
        description="Model (file stem in MODELS_DIR) that `POST /upscale` uses without "
        "`?model=`; start-up fails if MODELS_DIR has no such model. Ignored when MODEL_PATH is "
        "set.",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The models of MODELS_DIR to serve, by name (comma-separated or a JSON "
        "list); empty: all of them. Each one served costs a warm-up at start-up and its "
        "engine's buffers for the tile shape, kept between requests: about 320 MB on OpenVINO "
        "and 440 MB on onnxruntime's CPU arena at 192-pixel tiles. Start-up fails for a name "
        "the folder lacks, or when DEFAULT_MODEL is not among them; the hot reload then adds "
        "no other model of the folder. Ignored when MODEL_PATH is set.",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PROVIDERS),
        description="onnxruntime execution providers in order of preference.",
    )
    # The defaults below come from the measurements in docs/benchmarks.md (tuning, memory and
    # GPU sections); the figures live there, not here.
    tile_size: int = Field(
        default=192,
        ge=8,
        description="Side of the square LR tile fed to the model (the largest tile with fitted "
        "tiles). Peak memory grows with its square: 192 keeps one request within a 2-4 GB "
        "container on CPUs; GPUs take 256-512. On CUDA, TILE_BATCH_SIZE x TILE_SIZE² must stay "
        "under cuDNN's tensor limit, which start-up checks.",
    )
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
        description="Tiles per model call. 1 on CPUs; on GPUs 1-2, since larger batches gain "
        "little and a short last batch is padded with zero tiles.",
    )
    max_upload_bytes: int = Field(default=20 * MIB, ge=1, description="Largest request body.")
    upload_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Longest time the whole upload may take to arrive before 408, so a client "
        "trickling its body cannot hold a connection and its buffer indefinitely.",
    )
    max_concurrent_uploads: int = Field(
        default=16,
        ge=1,
        description="Request bodies received at once; more get 503 with Retry-After before any "
        "byte is read. Bodies are read before a request queues, so with MAX_UPLOAD_BYTES this "
        "bounds the memory uploads can hold.",
    )
    max_input_pixels: int = Field(
        default=2048 * 2048,
        ge=1,
        description="Largest decoded input (width x height). The output has 16x as many, and "
        "with MAX_CONCURRENCY requests working at once they are the bulk of the memory.",
    )
    max_ensemble_input_pixels: int = Field(
        default=2048 * 2048 // 8,
        ge=1,
        description="Largest input (width x height) for `quality=max` (8 model runs); larger "
        "ones get 413. The default gives it the model work of the largest standard upscale.",
    )
    max_concurrency: int = Field(
        default=1,
        ge=1,
        description="Upscales running at once. One request already uses every CPU core through "
        "onnxruntime's intra-op threads, so more only adds memory and latency on CPU; 2-4 on "
        "GPUs lets decoding and encoding overlap with the model.",
    )
    max_queue: int = Field(
        default=8, ge=0, description="Requests allowed to wait for a slot before 503."
    )
    max_wait_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Longest estimated wait for a slot that POST /upscale accepts; beyond it "
        "503, with Retry-After saying when the wait would be short enough. The estimate is "
        "the model work left of the upscales running and queued (their pixels times the "
        "host's seconds per megapixel, timed at warm-up: `seconds_per_megapixel` in GET "
        "/models), so it holds on slow hosts, where MAX_QUEUE large images can mean half an "
        "hour.",
    )
    retry_after_seconds: int = Field(
        default=5, ge=1, description="Value of the Retry-After header on 503 responses."
    )
    png_compress_level: int = Field(
        default=1,
        ge=0,
        le=9,
        description="Compression level of the output PNG, 0-9 as in zlib; 1 is several times "
        "faster than 6 on large outputs, for files slightly bigger. With ISA-L (the `strips` "
        "writer), 1-3 map to its levels 1-3 and higher levels to 3.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime intra-op threads; 0 lets onnxruntime choose."
    )
    inter_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime inter-op threads; 0 lets onnxruntime choose."
    )
    graph_optimization: Literal["disable", "basic", "extended", "layout", "all"] = Field(
        default="all",
        description="onnxruntime graph optimisation level (`layout` needs onnxruntime >= 1.22); "
        "only `all` fuses the layout changes around the convolutions.",
    )
    cpu_mem_arena: bool = Field(
        default=True,
        description="Keep onnxruntime's CPU memory arena (reuses the buffers of the tile shape "
        "between calls).",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto",
        description="Model precision. `auto` runs the fp16 export (`<model>_fp16.onnx`, from "
        "`python -m training export --fp16`) when the CUDA provider is really in use and the "
        "file exists, else the fp32 model; `fp16` requires that file. On OpenVINO, `auto` "
        "computes in bfloat16 where the CPU has it (AMX / AVX512-BF16), else in fp32; `bf16` "
        "and `fp16` fall back to fp32, with the reason in /readyz, where the CPU lacks them "
        "(onnxruntime has no bf16 and runs fp32 for it).",
    )
    engine: Literal["auto", "onnxruntime", "openvino"] = Field(
        default="auto",
        description="Inference engine. `auto`: onnxruntime when one of PROVIDERS really runs "
        "on a GPU, else OpenVINO on the CPU when installed (faster there than onnxruntime's "
        "CPU provider, docs/benchmarks.md), else onnxruntime's CPU provider. A requested "
        "engine that cannot load falls back to onnxruntime, with the reason in /readyz.",
    )
    openvino_hint: Literal["latency", "throughput"] = Field(
        default="latency",
        description="OpenVINO PERFORMANCE_HINT. `latency`: one stream uses every core for one "
        "request; `throughput`: a stream per few cores runs parallel requests, which pays only "
        "with MAX_CONCURRENCY > 1 on CPUs with more cores than one image keeps busy (on 2 "
        "vCPUs it doubled one request's time for the same images per second).",
    )
    openvino_cache_dir: Path | None = Field(
        default=None,
        description="Folder where OpenVINO caches compiled models (CACHE_DIR), which makes "
        "later start-ups faster; unset: compile at every start.",
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
    reload_interval_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How often the models folder (or MODEL_PATH) is checked for changed, added "
        "or removed models, which are loaded and warmed up beside the serving ones and swapped "
        "in (SIGHUP checks at once); 0 turns polling off (SIGHUP still works). A check only "
        "stats a few files, so 10 s costs nothing and installs a model within seconds.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`text`: one readable line per event; `json`: one JSON object per line "
        "(time, level, logger, message, request_id, and the access fields of each request).",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; any key (here or in API_KEYS_FILE) turns on "
        "`Authorization: Bearer KEY` for POST /upscale and GET /models (401 without it). Keys "
        "are compared as SHA-256 digests in constant time and never logged.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File of accepted keys as SHA-256 hex digests, one a line (`#` comments), "
        "so the keys themselves need not be stored: `printf %s KEY | sha256sum`. Read at "
        "start-up; adds to API_KEYS.",
    )
    protect_metrics: bool = Field(
        default=False,
        description="Also require an API key for GET /metrics (when keys are set); /healthz "
        "and /readyz stay open for probes.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins (`https://app.example.com`, comma-separated or a JSON list) whose "
        "pages may call the API from a browser; empty: no CORS headers at all.",
    )
    drain_seconds: float = Field(
        default=25.0,
        gt=0,
        description="On SIGTERM, longest wait for requests in flight before exiting; meanwhile "
        "/readyz answers 503 `draining` and new uploads 503 with Retry-After. Keep it under "
        "the orchestrator's kill delay (Kubernetes: 30 s; compose sets stop_grace_period).",
    )
    jobs_dir: Path | None = Field(
        default=None,
        description="Folder of the asynchronous jobs (POST /jobs): their records (SQLite) and "
        "their input and result files, kept across restarts. Unset: the job routes answer 404 "
        "and the page uses POST /upscale.",
    )
    job_retention_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How long a finished job's result is kept; after it GET /jobs/ID/result "
        "answers 410, and a day later the job is forgotten (404).",
    )
    jobs_max_bytes: int = Field(
        default=2 * 1024 * MIB,
        ge=1,
        description="Size cap of JOBS_DIR: the results kept, and each unfinished job's input "
        "and room for its result (an upper bound, replaced by its size once written); a job "
        "that would pass it gets 507 with Retry-After.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs webhook deliveries as Standard Webhooks says "
        "(`whsec_` + base64, or any other text used as is). Unset: jobs with a `webhook` are "
        "refused (422).",
    )
    webhook_max_attempts: int = Field(
        default=6,
        ge=1,
        description="Tries of a job's terminal webhook (on 429, 5xx and network errors), "
        "waiting WEBHOOK_RETRY_SECONDS, then twice as long each time.",
    )
    webhook_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Wait before the first retry of a terminal webhook (doubling after).",
    )
    url_input: bool = Field(
        default=False,
        description='Accept `{"image_url": "https://..."}` JSON bodies on POST /upscale '
        "and POST /jobs: the service fetches the image (http(s) only, every address it "
        "connects to checked against URL_ALLOW_NETWORKS, MAX_UPLOAD_BYTES while streaming).",
    )
    url_allow_networks: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR, comma-separated) that fetched images and webhooks may "
        "reach although they are loopback, private, link-local, unspecified, multicast or "
        "reserved (refused by default).",
    )
    url_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest time to fetch an `image_url` (all redirects) or to deliver one "
        "webhook; connecting gets at most 5 s of it.",
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

    @field_validator("api_keys", "cors_origins", "url_allow_networks", "models", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        """Accepts a JSON list, a comma-separated string or a list; drops empty items."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, list | tuple):
            items = [item.strip() if isinstance(item, str) else item for item in value]
            return [item for item in items if item != ""]
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
