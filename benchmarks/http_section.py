"""HTTP section: the real service under uvicorn, against the bare model plus encode.

For each input size the bare work (tiled upscale plus PNG encode, in this process, with the
service's settings) is timed first; then the service answers the same image at each client
concurrency. Reported per cell: p50/p95 latency, output megapixels per second, status counts
and the service's own decode/model/encode split (its Server-Timing header). Cells expected to
take longer than the preset's budget are skipped, with the estimate recorded.

The engine is a dimension: one service per installed engine (onnxruntime, OpenVINO) runs at the
same time, and every cell is measured on each in turn, so their ratios come from one run. The
top-level figures are onnxruntime's; `engines` holds every engine's.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from benchmarks.context import BenchContext
from benchmarks.images import png_file
from benchmarks.measure import megapixels_per_second, percentile, ratio, time_call
from benchmarks.server import Reply, drive, running_service, status_counts
from service.config import Settings
from service.core.engines import Engine
from service.core.tiling import upscale_tiled
from service.imaging.encode import EncodeOptions, OutputFormat, encode_output


def requests_for(concurrency: int, minimum: int) -> int:
    """Requests sent in one cell: enough for every client to send twice, up to 4 clients."""
    return max(minimum, concurrency if concurrency > 4 else 2 * concurrency)


def estimated_seconds(
    requests: int, concurrency: int, per_request_s: float, settings: Settings
) -> float:
    """How long a cell should take: admitted requests run `max_concurrency` at a time."""
    admitted = min(requests, settings.max_concurrency + settings.max_queue)
    parallel = max(1, min(concurrency, settings.max_concurrency))
    return admitted * per_request_s / parallel


def plan_cell(
    concurrency: int, per_request_s: float, settings: Settings, minimum: int, budget_s: float
) -> tuple[int, float]:
    """Requests to send in a cell and its estimated duration.

    A sequential cell too long for the budget is cut down to a single request (a latency figure
    is still worth having); other cells keep their count and are skipped when over budget.
    """
    count = requests_for(concurrency, minimum)
    estimate = estimated_seconds(count, concurrency, per_request_s, settings)
    if estimate > budget_s and concurrency == 1:
        count = 1
        estimate = estimated_seconds(count, concurrency, per_request_s, settings)
    return count, estimate


def bare_model_and_encode(
    ctx: BenchContext, image: np.ndarray, engine: Engine | None = None
) -> dict[str, Any]:
    """Times the tiled upscale and the PNG encode of `image` in this process."""
    engine, settings = engine or ctx.engine, ctx.settings
    # Large inputs take seconds per run: one untimed warm-up and repeats would triple the cost
    # of the section for no better figure.
    large = image.shape[0] * image.shape[1] > 256 * 256
    repeats, warmup = (1, 0) if large else (ctx.preset.repeats, 1)
    model_timing, upscaled = time_call(
        lambda: upscale_tiled(
            image,
            engine.run,
            scale=engine.info.scale,
            tile_size=settings.tile_size,
            overlap=settings.tile_overlap,
            batch_size=engine.info.batch_size,
            fit=engine.info.tile_mode == "fit",
        ),
        repeats,
        warmup,
    )
    options = EncodeOptions.from_settings(settings)
    encode_timing, _ = time_call(
        lambda: encode_output(upscaled, OutputFormat.PNG, options), ctx.preset.repeats
    )
    return {
        "model_ms": model_timing.as_dict(),
        "encode_ms": encode_timing.as_dict(),
        "total_ms": round((model_timing.median + encode_timing.median) * 1000, 3),
        "output_pixels": int(upscaled.shape[0] * upscaled.shape[1]),
    }


def summarise(replies: list[Reply], wall_s: float) -> dict[str, Any]:
    """Latency percentiles, throughput, statuses and the mean server-side split of a cell."""
    ok = [reply for reply in replies if reply.status == 200]
    latencies = [reply.seconds for reply in ok]
    split = (
        {
            name: round(float(np.mean([reply.timings.get(name, 0.0) for reply in ok])), 1)
            for name in ("decode", "model", "encode")
        }
        if ok
        else {}
    )
    return {
        "requests": len(replies),
        "statuses": status_counts(replies),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1) if ok else None,
        "p95_ms": round(percentile(latencies, 95) * 1000, 1) if ok else None,
        "wall_s": round(wall_s, 3),
        "output_mp_per_s": round(
            megapixels_per_second(sum(reply.output_pixels for reply in ok), wall_s), 3
        ),
        "server_split_ms": split,
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    """Measures every (size, concurrency) cell of the preset against the running service.

    The service and the bare measurement both use `ctx.settings`.
    """
    preset = ctx.preset
    names = ctx.engine_names
    settings_of = {name: ctx.settings.model_copy(update={"engine": name}) for name in names}
    settings = settings_of["onnxruntime"]
    bare_of: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in names}
    for name in names:
        engine = ctx.engine if name == "onnxruntime" else ctx.make_named_engine(name)
        for side in preset.http_sizes:
            bare_of[name][side] = bare_model_and_encode(ctx, ctx.image(side, seed=5), engine)
            total = bare_of[name][side]["total_ms"]
            ctx.log(f"http: {name} bare model+encode {side}² {total:.0f} ms")

    cells_of: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(running_service(settings_of[name])) for name in names}
        ctx.log(f"http: services ready at {urls}")
        for side in preset.http_sizes:
            body = png_file(ctx.image(side, seed=5))
            for concurrency, name in [(c, n) for c in preset.http_concurrency for n in names]:
                url, cells, bare = urls[name], cells_of[name], bare_of[name]
                per_request_s = bare[side]["total_ms"] / 1000 * 1.2 + 0.01
                count, estimate = plan_cell(
                    concurrency,
                    per_request_s,
                    settings,
                    preset.http_min_requests,
                    preset.http_cell_budget_s,
                )
                cell: dict[str, Any] = {"input": side, "concurrency": concurrency}
                if estimate > preset.http_cell_budget_s:
                    cell["skipped"] = (
                        f"estimated {estimate:.0f} s > budget {preset.http_cell_budget_s:.0f} s"
                    )
                    cells.append(cell)
                    ctx.log(f"http: {name} {side}² c={concurrency} skipped ({cell['skipped']})")
                    continue
                replies, wall = drive(url, body, concurrency=concurrency, requests=count)
                cell.update(summarise(replies, wall))
                cells.append(cell)
                ctx.log(
                    f"http: {name} {side}² c={concurrency} p50 {cell['p50_ms']} ms, "
                    f"{cell['output_mp_per_s']} MP/s, {cell['statuses']}"
                )
    by_engine = {}
    for name in names:
        bare = bare_of[name]
        for cell in cells_of[name]:
            if "skipped" not in cell and cell.get("p50_ms") is not None:
                over = ratio(cell["p50_ms"], bare[cell["input"]]["total_ms"])
                cell["p50_over_bare"] = round(over, 3)
        by_engine[name] = {
            "bare_model_plus_encode": {str(side): value for side, value in bare.items()},
            "cells": cells_of[name],
        }
    return {
        "max_concurrency": settings.max_concurrency,
        "max_queue": settings.max_queue,
        **by_engine["onnxruntime"],
        "engines": by_engine,
    }
