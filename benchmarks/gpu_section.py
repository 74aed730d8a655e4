"""GPU section: the CUDA provider's options, fp16, I/O binding, batching, quality, and HTTP.

Runs only where onnxruntime really gets the CUDA provider (`cuda_usable`); the report says so
otherwise. Measured:

* provider variants on one tile (256 and 512 pixels): defaults; the service's options
  (`service.core.engines.ortconfig.cuda_provider_options`: NHWC, exhaustive cuDNN search); plus
  I/O binding (this section's own bound runner: the service does not bind); fp16 with and
  without binding;
  output megapixels per second each;
* batches of 512-pixel tiles in fp16, 1 to 8 per call, through the service's call and with
  input and output left on the GPU (the compute alone); sizes past cuDNN's 2**31-element
  tensor limit are reported as skipped;
* fp16 against fp32 on Set5 by the standard protocol (Y PSNR, 4-pixel border shaved);
* the HTTP section again with GPU settings, whose decode/model/encode split tells whether the
  encoder keeps up.

`providers` can name the CPU provider so the test suite exercises every code path on machines
without a GPU; the figures then mean nothing and the report marks them `cpu-smoke`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks import http_section
from benchmarks.context import BenchContext
from benchmarks.images import benchmark_set
from benchmarks.measure import megapixels_per_second, time_call
from service.core.engines import OnnxEngine
from service.core.engines.ortconfig import (
    cuda_provider_options,
    cuda_usable,
    cudnn_tile_problem,
    declared_filters,
    fp16_path_for,
)
from service.core.tiling import upscale_tiled
from training.protocol import psnr_y

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
SCALE = 4

#: Settings of the HTTP run on the GPU: big fixed tiles, several per call, requests overlapping
#: so that decoding and encoding on the CPU run while the GPU works on other tiles.
GPU_HTTP_SETTINGS: dict[str, Any] = {
    "providers": [CUDA, CPU],
    "tile_size": 256,
    "tile_batch_size": 8,
    "tile_mode": "fixed",
    "max_concurrency": 4,
    "max_queue": 16,
    "precision": "auto",
}


def _provider_entries(provider: str, tuned: bool) -> list[Any]:
    if provider != CUDA:
        return [CPU]
    return [(CUDA, cuda_provider_options()) if tuned else CUDA, CPU]


def _session(path: Path, provider: str, tuned: bool) -> ort.InferenceSession:
    session = ort.InferenceSession(str(path), providers=_provider_entries(provider, tuned))
    if provider == CUDA and CUDA not in session.get_providers():
        raise RuntimeError("onnxruntime fell back from CUDA to the CPU")
    return session


def _bound_runner(session: ort.InferenceSession, provider: str, shape: tuple[int, ...]) -> Any:
    """Runs one input shape through preallocated device buffers, output copied to the host."""
    batch, height, width, channels = shape
    device = "cuda" if provider == CUDA else "cpu"
    allocate = ort.OrtValue.ortvalue_from_shape_and_type
    inputs = allocate(shape, np.float32, device, 0)
    outputs = allocate((batch, height * SCALE, width * SCALE, channels), np.float32, device, 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input("lr", inputs)
    binding.bind_ortvalue_output("sr", outputs)

    def run(tiles: np.ndarray) -> np.ndarray:
        inputs.update_inplace(np.ascontiguousarray(tiles, dtype=np.float32))
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outputs.numpy().copy()  # a CPU buffer's numpy() is a view the next call reuses

    return run


def _runner(path: Path, provider: str, tuned: bool, bound: bool, shape: tuple[int, ...]) -> Any:
    session = _session(path, provider, tuned)
    if bound:
        return _bound_runner(session, provider, shape)
    return lambda batch: session.run(["sr"], {"lr": batch})[0]


def _measure(runner: Any, batch: np.ndarray, repeats: int) -> dict[str, Any]:
    timing, output = time_call(lambda: runner(batch), repeats, warmup=2)
    shape = output.shape() if isinstance(output, ort.OrtValue) else output.shape
    pixels = int(np.prod(shape[:3]))
    return {
        "time_ms": timing.as_dict(),
        "output_mp_per_s": round(megapixels_per_second(pixels, timing.median), 1),
    }


def provider_variants(
    ctx: BenchContext, provider: str, tiles: tuple[int, ...], repeats: int
) -> list[dict[str, Any]]:
    """Output MP/s of one tile per call for each provider configuration."""
    fp16 = fp16_path_for(ctx.model_path)
    variants = [
        ("fp32, provider defaults", ctx.model_path, False, False),
        ("fp32, service options", ctx.model_path, True, False),
        ("fp32, service options, I/O bound", ctx.model_path, True, True),
        ("fp16, service options", fp16, True, False),
        ("fp16, service options, I/O bound", fp16, True, True),
    ]
    rows = []
    for tile in tiles:
        batch = ctx.image(tile, seed=6)[np.newaxis].astype(np.float32)
        for label, path, tuned, bound in variants:
            row: dict[str, Any] = {"tile": tile, "variant": label}
            if not path.exists():
                row["skipped"] = f"{path.name} missing (export with --fp16)"
            else:
                runner = _runner(path, provider, tuned, bound, batch.shape)
                row.update(_measure(runner, batch, repeats))
            rows.append(row)
            ctx.log(f"gpu: {tile} {label}: {row.get('output_mp_per_s', row.get('skipped'))}")
    return rows


def _on_device_runner(path: Path, provider: str, batch: np.ndarray) -> Any:
    """A call with input and output left on the device: the model's compute alone."""
    session = _session(path, provider, True)
    device = "cuda" if provider == CUDA else "cpu"
    count, height, width, channels = batch.shape
    inputs = ort.OrtValue.ortvalue_from_numpy(batch, device, 0)  # copied once, reused
    outputs = ort.OrtValue.ortvalue_from_shape_and_type(
        (count, height * SCALE, width * SCALE, channels), np.float32, device, 0
    )
    binding = session.io_binding()
    binding.bind_ortvalue_input("lr", inputs)
    binding.bind_ortvalue_output("sr", outputs)

    def run(_: np.ndarray) -> ort.OrtValue:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outputs

    return run


def batched(
    ctx: BenchContext,
    provider: str,
    tile: int,
    sizes: tuple[int, ...],
    repeats: int,
    cudnn_limit: bool | None = None,
) -> list[dict[str, Any]]:
    """Output MP/s of fp16 calls on batches of `tile`-pixel tiles.

    Two rows per batch size: `service` is the service's call (`InferenceSession.run`, numpy in
    and out, so both host copies included); `on device` leaves input and output on the GPU, the
    model's compute alone, the ceiling that no host-side change can pass. Sizes whose largest
    activation cuDNN cannot describe are reported as skipped, with the reason, without running.

    Args:
        cudnn_limit: Apply cuDNN's tensor-size limit (default: on the CUDA provider only).
    """
    path = fp16_path_for(ctx.model_path)
    if not path.exists():
        path = ctx.model_path
    if cudnn_limit is None:
        cudnn_limit = provider == CUDA
    metadata = ort.InferenceSession(str(path), providers=[CPU]).get_modelmeta()
    filters = declared_filters(metadata.custom_metadata_map)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        problem = cudnn_tile_problem(size, tile, SCALE, filters) if cudnn_limit else None
        batch = None if problem else _tile_batch(ctx, tile, size)
        for label in ("service", "on device"):
            row: dict[str, Any] = {"tile": tile, "batch": size, "path": label, "model": path.name}
            if batch is None:
                row["skipped"] = problem
            elif label == "service":
                runner = _runner(path, provider, True, False, batch.shape)
                row.update(_measure(runner, batch, repeats))
            else:
                row.update(_measure(_on_device_runner(path, provider, batch), batch, repeats))
            rows.append(row)
            ctx.log(f"gpu: batch {size}x{tile}² {label}: {row.get('output_mp_per_s', 'skipped')}")
    return rows


def _tile_batch(ctx: BenchContext, tile: int, size: int) -> np.ndarray:
    return np.stack([ctx.image(tile, seed=seed) for seed in range(size)]).astype(np.float32)


def fp16_quality(ctx: BenchContext, provider: str) -> dict[str, Any]:
    """Set5 Y-PSNR of the fp32 and fp16 models through the service's tiler."""
    images = benchmark_set("Set5")
    if not images:
        return {"skipped": "Set5 not found under ../shared/data/bench"}
    if not fp16_path_for(ctx.model_path).exists():
        return {"skipped": "fp16 model missing (export with --fp16)"}
    from PIL import Image

    scores: dict[str, list[float]] = {}
    for precision in ("fp32", "fp16"):
        engine = OnnxEngine(
            ctx.settings.model_copy(
                update={
                    "model_path": ctx.model_path,
                    "providers": [provider, CPU] if provider == CUDA else [CPU],
                    "precision": precision,
                    "tile_size": 256,
                    "tile_batch_size": 1,
                }
            )
        )
        for _, hr in images:
            hr = hr[: hr.shape[0] // SCALE * SCALE, : hr.shape[1] // SCALE * SCALE]
            lr = np.asarray(
                Image.fromarray(hr).resize(
                    (hr.shape[1] // SCALE, hr.shape[0] // SCALE), Image.Resampling.BICUBIC
                )
            )
            sr = upscale_tiled(lr, engine.run, scale=SCALE, tile_size=256, overlap=16)
            scores.setdefault(precision, []).append(psnr_y(sr, hr, border=SCALE))
    fp32, fp16 = float(np.mean(scores["fp32"])), float(np.mean(scores["fp16"]))
    return {
        "set5_psnr_y_fp32": round(fp32, 4),
        "set5_psnr_y_fp16": round(fp16, 4),
        "delta_db": round(fp16 - fp32, 4),
    }


def run(ctx: BenchContext, provider: str | None = None) -> dict[str, Any]:
    """Runs the GPU measurements on CUDA (or, for tests, on the provider given)."""
    if provider is None:
        if not cuda_usable():
            return {"skipped": "the CUDA provider is not usable on this machine"}
        provider = CUDA
    smoke = provider != CUDA
    repeats = max(3, ctx.preset.repeats) if not smoke else 1
    tiles = (256, 512) if not smoke else (ctx.preset.model_input,)
    batch_tile = 512 if not smoke else ctx.preset.model_input
    result: dict[str, Any] = {"provider": provider, "cpu_smoke": smoke}
    result["variants"] = provider_variants(ctx, provider, tiles, repeats)
    result["batched"] = batched(ctx, provider, batch_tile, (1, 2, 4, 8), repeats)
    result["fp16_quality"] = fp16_quality(ctx, provider) if not smoke else {"skipped": "smoke"}
    http_settings = ctx.settings.model_copy(
        update=GPU_HTTP_SETTINGS if not smoke else {"tile_batch_size": 2, "tile_mode": "fixed"}
    )
    result["http"] = http_section.run(ctx.with_settings(http_settings))
    return result
