"""How the onnxruntime session is configured: session options, CUDA provider options, precision.

Pure functions of the settings, so every choice is unit-tested on any machine, including the
CUDA options on hosts without a GPU. The measurements behind the defaults are in
docs/benchmarks.md.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import onnxruntime as ort

Precision = Literal["auto", "fp32", "fp16"]
GraphOptimization = Literal["disable", "basic", "extended", "layout", "all"]

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
    if "CUDAExecutionProvider" not in ort.get_available_providers():
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


def choose_precision(setting: str, *, cuda_active: bool, fp16_available: bool) -> str:
    """Decides which model file to run: `fp32` or `fp16`.

    `auto` picks fp16 only where it pays and is safe: on the CUDA provider (tensor cores run
    fp16 about 1.6x faster than fp32 here, for outputs 60 dB apart, see docs/benchmarks.md) and
    when the fp16 export exists. On CPUs onnxruntime has few fp16 kernels and converts back and
    forth, so fp32 stays. An explicit `fp16` or `fp32` is obeyed.

    Args:
        setting: `auto`, `fp32` or `fp16`.
        cuda_active: Whether the session really runs on the CUDA provider (or TensorRT on CUDA).
        fp16_available: Whether the fp16 file exists.

    Returns:
        `fp32` or `fp16`.
    """
    if setting not in ("auto", "fp32", "fp16"):
        raise ValueError(f"precision must be auto, fp32 or fp16, got {setting!r}")
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
    """Builds the onnxruntime session options.

    Args:
        intra_op_threads: Threads inside one operator (0: one per physical core).
        inter_op_threads: Threads running independent operators (0: default; EDSR is one chain
            of operators, so this rarely matters).
        graph_optimization: `disable`, `basic`, `extended`, `layout` (recent onnxruntime only) or
            `all`.
        cpu_mem_arena: Keep freed CPU buffers in onnxruntime's arena for reuse.

    Returns:
        The options.
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
      want NHWC, so this drops the layout transposes around every convolution; measured on an
      H100 at 244 against 183 output MP/s in fp32 (docs/benchmarks.md, ../shared/GPU.md).
    * `cudnn_conv_algo_search=EXHAUSTIVE`: try every cuDNN algorithm once per input shape and
      keep the fastest. It costs up to a second per shape, and the tiler feeds one fixed shape
      that the warm-up runs before the service reports ready, so requests only get the gain.
    * `cudnn_conv_use_max_workspace=1`: let those algorithms use the workspace they need.
    * `arena_extend_strategy=kSameAsRequested`: with one fixed shape every allocation repeats
      exactly, so growing the arena by powers of two would only strand GPU memory.
    * `do_copy_in_default_stream=1`: copies and kernels on one stream (onnxruntime's safe
      default, stated so that nobody "optimises" it into a data race).

    Args:
        device_id: CUDA device index.
        conv_algo_search: cuDNN algorithm search mode.
        prefer_nhwc: Use NHWC kernels where onnxruntime has them.

    Returns:
        The provider options.
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
    elements or more fails on every call with CUDNN_STATUS_NOT_SUPPORTED. Measured on an H100
    with the EDSR x4 model (docs/benchmarks.md, GPU): 1 x 1448² and 7 x 512² tiles run,
    1 x 1449² and 8 x 512² fail. EDSR's largest tensors, around its last pixel shuffle, hold
    batch x tile² x scale² x filters elements.

    Args:
        batch: Tiles per model call.
        tile: LR tile side in pixels.
        scale: The model's upscaling factor.
        filters: The model's feature channels.

    Returns:
        A message naming the fix, or None when the shape fits.
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
