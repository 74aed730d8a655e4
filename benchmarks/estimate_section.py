"""Estimate section: the service's own time estimate against the model time of real requests.

The service times its model once at warm-up and publishes the pace (`GET /models`:
`seconds_per_megapixel`), from which it refuses waits over `UPSCALER_MAX_WAIT_SECONDS` and the
page and the CLI tell a person how long an image will take. Here the real service (uvicorn in a
subprocess, the settings under test) upscales one image of each `http_sizes` side, and each
answer's model time (`X-Inference-Time-Ms`) and total time are set against the estimate: the
image's megapixels times that pace.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from benchmarks.context import BenchContext
from benchmarks.images import png_file
from benchmarks.server import running_service

#: Longest wait for one answer (the full preset's largest input on a slow CPU).
REQUEST_TIMEOUT_S = 600.0


def _one(url: str, body: bytes, pace: float, side: int) -> dict[str, Any]:
    started = time.perf_counter()
    answer = httpx.post(
        f"{url}/upscale",
        content=body,
        headers={"Content-Type": "image/png"},
        timeout=REQUEST_TIMEOUT_S,
    ).raise_for_status()
    total = time.perf_counter() - started
    model = float(answer.headers["x-inference-time-ms"]) / 1000
    estimate = pace * side * side / 1e6
    return {
        "input": f"{side}x{side}",
        "estimate_s": round(estimate, 3),
        "model_s": round(model, 3),
        "total_s": round(total, 3),
        "model_over_estimate": round(model / estimate, 3),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    """Starts the service, reads its pace, and upscales one image of each `http_sizes` side."""
    with running_service(ctx.settings) as url:
        listing = httpx.get(f"{url}/models", timeout=30).raise_for_status().json()
        model = listing["models"][0]
        engine = httpx.get(f"{url}/readyz", timeout=30).json().get("engine")
        rows = []
        for side in ctx.preset.http_sizes:
            body = png_file(ctx.image(side, seed=7))
            rows.append(_one(url, body, model["seconds_per_megapixel"], side))
            row = rows[-1]
            ctx.log(
                f"estimate: {row['input']} estimated {row['estimate_s']} s, model "
                f"{row['model_s']} s, total {row['total_s']} s"
            )
    return {
        "model": model["name"],
        "engine": engine,
        "seconds_per_megapixel": model["seconds_per_megapixel"],
        "requests": rows,
    }
