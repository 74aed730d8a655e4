"""How the onnxruntime session is configured: which providers to try, session options, CUDA
provider options, precision, and the tile shapes cuDNN can run.

Decided before (or without) a session, so every choice is unit-tested on any machine, including
the CUDA options on hosts without a GPU. The measurements behind the defaults are in
docs/benchmarks.md.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import onnxruntime as ort

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
#: Providers that run on the GPU, tune kernels for each input shape and so want one tile shape.
GPU_PROVIDERS = frozenset({CUDA_PROVIDER, TENSORRT_PROVIDER})
#: The TensorRT 10 core library, whose presence decides whether TensorRT is worth trying.
TENSORRT_LIBRARY_NAMES = ("libnvinfer.so.10", "nvinfer_10.dll")

#: Suffix of the half-precision export written beside the fp32 model (`training export --fp16`).
FP16_SUFFIX = "_fp16"

GRAPH_OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# ORT_ENABLE_LAYOUT (between extended and all) only exists in recent onnxruntime releases.
if hasattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT"):
    GRAPH_OPTIMIZATION_LEVELS["layout"] = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT


def cuda_usable() -> bool:
    """Whether onnxruntime can really run the CUDA provider here.

    onnxruntime-gpu lists `CUDAExecutionProvider` as available on every host, GPU or not, and
    falls back to the CPU at session creation; the NVIDIA driver library is what tells them apart.
    """
    if CUDA_PROVIDER not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def fp16_path_for(model_path: str | Path) -> Path:
    """Where the fp16 export of `model_path` lives: `edsr_x4.onnx` -> `edsr_x4_fp16.onnx`."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}{FP16_SUFFIX}{path.suffix}")


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

    @property
    def gpu_attempted(self) -> bool:
        """Whether a GPU provider is among those handed to onnxruntime."""
        return not GPU_PROVIDERS.isdisjoint(self.attempted)


def tensorrt_libraries_loadable() -> bool:
    """Tells whether TensorRT's core library can be loaded on this host.

    TensorRT ships separately from CUDA and is missing on most hosts, including most GPU
    servers. Handing onnxruntime the TensorRT provider without it makes session creation print a
    long error and retry without it, so it is only tried when this check passes. The library is
    looked up on the default loader path and in the `tensorrt_libs` pip wheel.
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


def resolve_providers(requested: Sequence[str]) -> ProviderPlan:
    """Decides which of the requested execution providers to hand to onnxruntime.

    A provider is left out when this onnxruntime build lacks it, or when it is TensorRT and
    TensorRT's library cannot be loaded. If nothing is left, the CPU provider is used.

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


def provider_entries(plan: ProviderPlan) -> list[str | tuple[str, dict[str, str]]]:
    """The `providers` argument of a session: the CUDA provider with its options, others bare."""
    return [
        (name, cuda_provider_options()) if name == CUDA_PROVIDER else name
        for name in plan.attempted
    ]


def choose_precision(setting: str, *, cuda_active: bool, fp16_available: bool) -> str:
    """Decides which model file to run: `fp32` or `fp16`.

    `auto` picks fp16 only where it pays and is safe: on the CUDA provider (tensor cores, see
    docs/benchmarks.md) and when the fp16 export exists. On CPUs onnxruntime has few fp16
    kernels and converts back and forth, so fp32 stays. An explicit `fp16` or `fp32` is obeyed.

    Args:
        setting: `auto`, `fp32` or `fp16` (validated by `Settings`).
        cuda_active: Whether the session really runs on the CUDA provider (or TensorRT on CUDA).
        fp16_available: Whether the fp16 file exists.

    Returns:
        `fp32` or `fp16`.
    """
    if setting == "auto":
        return "fp16" if cuda_active and fp16_available else "fp32"
    return setting


def session_options(
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    graph_optimization: str = "all",
    cpu_mem_arena: bool = True,
) -> ort.SessionOptions:
    """Builds the onnxruntime session options from the settings of the same names.

    Raises:
        ValueError: For a graph optimisation level this onnxruntime lacks (`layout` is recent).
    """
    if graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
        raise ValueError(
            f"graph_optimization must be one of {sorted(GRAPH_OPTIMIZATION_LEVELS)}, "
            f"got {graph_optimization!r}"
        )
    options = ort.SessionOptions()
    # Bounded thread pools: several worker threads may call `run` at once, and unbounded
    # pools would make them fight over the same cores.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[graph_optimization]
    options.enable_cpu_mem_arena = cpu_mem_arena
    return options


def cuda_provider_options(
    *,
    device_id: int = 0,
    conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE",
    prefer_nhwc: bool = True,
) -> dict[str, str]:
    """Options of onnxruntime's CUDA execution provider, as the strings it expects.

    * `prefer_nhwc=1`: the model's tensors are NHWC already and cuDNN's tensor-core kernels
      want NHWC, so this drops the layout transposes around every convolution
      (docs/benchmarks.md, GPU).
    * `cudnn_conv_algo_search=EXHAUSTIVE`: try every cuDNN algorithm once per input shape and
      keep the fastest. It costs up to a second per shape, and the tiler feeds one fixed shape
      that the warm-up runs before the service reports ready, so requests only get the gain.
    * `cudnn_conv_use_max_workspace=1`: let those algorithms use the workspace they need.
    * `arena_extend_strategy=kSameAsRequested`: with one fixed shape every allocation repeats
      exactly, so growing the arena by powers of two would only strand GPU memory.
    * `do_copy_in_default_stream=1`: copies and kernels on one stream (onnxruntime's safe
      default, stated so that nobody "optimises" it into a data race).
    """
    return {
        "device_id": str(device_id),
        "prefer_nhwc": "1" if prefer_nhwc else "0",
        "cudnn_conv_algo_search": conv_algo_search,
        "cudnn_conv_use_max_workspace": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }


#: cuDNN describes tensors with 32-bit element counts: 2**31 elements or more fail.
CUDNN_MAX_ELEMENTS = 2**31
#: Feature channels assumed for a model whose metadata does not name them (the EDSR baseline's).
DEFAULT_FILTERS = 64


def declared_filters(metadata: Mapping[str, str]) -> int:
    """The feature channels a model's metadata declares (`filters`), else the EDSR baseline's."""
    try:
        return int(metadata.get("filters", DEFAULT_FILTERS))
    except ValueError:
        return DEFAULT_FILTERS


def cudnn_tile_problem(batch: int, tile: int, scale: int, filters: int) -> str | None:
    """Why cuDNN cannot run batches of `batch` square tiles of side `tile`, or None if it can.

    cuDNN's tensor descriptors count elements in 32 bits: a convolution whose tensor holds 2**31
    elements or more fails on every call with CUDNN_STATUS_NOT_SUPPORTED (measured shapes in
    docs/benchmarks.md, GPU). EDSR's largest tensors, around its last pixel shuffle, hold
    batch x tile² x scale² x filters elements.
    The message names the fix (the largest batch, or tile, that fits).
    """
    per_tile = tile**2 * scale**2 * filters
    if batch * per_tile < CUDNN_MAX_ELEMENTS:
        return None
    largest = (CUDNN_MAX_ELEMENTS - 1) // per_tile
    if largest:
        hint = f"use a tile batch size of at most {largest}"
    else:
        widest = math.isqrt((CUDNN_MAX_ELEMENTS - 1) // (scale**2 * filters))
        hint = f"use tiles of at most {widest} pixels"
    return (
        f"tiles of {batch} x {tile}x{tile} pixels are too large for cuDNN: the model's largest "
        f"activation would hold {batch * per_tile:,} elements, and cuDNN refuses 2**31 or more; "
        f"{hint}"
    )


#: The inference engines `UPSCALER_ENGINE` names (besides `auto`).
ENGINES = ("onnxruntime", "openvino")


def openvino_installed() -> bool:
    """Whether the `openvino` package is importable here (without importing it: ~0.3 s)."""
    return importlib.util.find_spec("openvino") is not None


def auto_engine(*, gpu_running: bool, openvino_available: bool) -> str:
    """The engine `UPSCALER_ENGINE=auto` runs.

    onnxruntime where one of its GPU providers really runs (CUDA/TensorRT, tuned for this
    model); otherwise OpenVINO when installed, which runs this model faster than onnxruntime's
    CPU provider (docs/benchmarks.md, engines); otherwise onnxruntime's CPU provider.
    """
    if gpu_running or not openvino_available:
        return "onnxruntime"
    return "openvino"
