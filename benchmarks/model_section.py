"""Model section: the service's engines against Keras `predict` and OpenCV DNN, same weights.

One whole-image call on the same input for each engine (onnxruntime's CPU provider, OpenVINO in
fp32 and, where the CPU has bfloat16, in bf16), interleaved, and the FLOP rate each reaches
measured against numpy's sgemm in the same run. The engines run with the service's own settings.
Then `parallel`: for each engine and OpenVINO hint, images per second with 2 calls in parallel
against 1 call at a time (interleaved too), which chooses `UPSCALER_OPENVINO_HINT`.
Keras and OpenCV are imported here only, and only when their baseline is measured; Keras needs
the `.keras` checkpoint (`--checkpoint`), since the ONNX file cannot be loaded back into Keras.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from benchmarks.context import BenchContext
from benchmarks.measure import (
    conv_flops,
    megapixels_per_second,
    ratio,
    sgemm_gflops,
    time_interleaved,
)


def _engine_row(
    name: str, timing: Any, output: np.ndarray, reference: np.ndarray, flops: float, sgemm: float
) -> dict[str, Any]:
    seconds = timing.median
    output_pixels = int(output.shape[1] * output.shape[2])
    return {
        "engine": name,
        "time_ms": timing.as_dict(),
        "output_mp_per_s": round(megapixels_per_second(output_pixels, seconds), 3),
        "gflop_per_s": round(flops / seconds / 1e9, 1),
        "fraction_of_sgemm": round(flops / seconds / 1e9 / sgemm, 3),
        "max_abs_diff_vs_onnxruntime": round(float(np.max(np.abs(output - reference))), 4),
    }


def _keras_predict(checkpoint: Any) -> Any:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.model import load_edsr

    model = load_edsr(checkpoint)
    return lambda batch: np.asarray(model.predict(batch, verbose=0))


def _opencv_forward(model_path: Any) -> Any:
    import cv2

    net = cv2.dnn.readNetFromONNX(str(model_path))

    def forward(batch: np.ndarray) -> np.ndarray:
        net.setInput(batch)
        return np.asarray(net.forward())

    return forward


def _openvino_engines(ctx: BenchContext, skipped: dict[str, str]) -> dict[str, Any]:
    """OpenVINO's fp32 and bf16 engines (the service's, with `create_engine`), where they run."""
    if "openvino" not in ctx.engine_names:
        skipped["openvino_fp32"] = skipped["openvino_bf16"] = "openvino not installed"
        return {}
    engines = {}
    for precision in ("fp32", "bf16"):
        name = f"openvino_{precision}"
        engine = ctx.make_named_engine("openvino", precision=precision)
        if engine.info.engine != "openvino":
            skipped[name] = f"fell back: {engine.info.fallback_reason}"
        elif engine.info.precision != precision:
            skipped[name] = engine.info.precision_reason or f"runs {engine.info.precision}"
        else:
            engines[name] = engine
            continue
        ctx.log(f"model: {name} skipped ({skipped[name]})")
    return engines


def _parallel_calls(run_once: Any, count: int) -> float:
    """Wall seconds for `count` calls of `run_once` started together in threads."""
    start = threading.Barrier(count + 1)

    def worker() -> None:
        start.wait()
        run_once()

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def parallel_throughput(
    runs: dict[str, Any], repeats: int, parallel: int = 2
) -> dict[str, dict[str, Any]]:
    """Images per second with `parallel` calls at once against one at a time, per engine.

    Interleaved like `time_interleaved`: each round times one call, then `parallel` calls
    together, of every engine in turn (after one untimed round).

    Returns:
        Per engine: the medians in ms and `speedup` = images/s in parallel over images/s alone.
    """
    for run_once in runs.values():
        run_once()
        _parallel_calls(run_once, parallel)
    single: dict[str, list[float]] = {name: [] for name in runs}
    multi: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(max(1, repeats)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            runs[name]()
            single[name].append(time.perf_counter() - started)
            multi[name].append(_parallel_calls(runs[name], parallel))
    rows = {}
    for name in names:
        one, many = float(np.median(single[name])), float(np.median(multi[name]))
        rows[name] = {
            "one_call_ms": round(one * 1000, 1),
            f"{parallel}_parallel_ms": round(many * 1000, 1),
            "speedup": round(parallel * one / many, 3),
        }
    return rows


def _parallel_study(
    ctx: BenchContext, onnx_engine: Any, openvino: dict[str, Any], batch: np.ndarray
) -> dict[str, Any]:
    """2 parallel calls against 1, for onnxruntime and the fastest OpenVINO precision under
    both hints (`parallel_throughput`)."""
    runs: dict[str, Any] = {"onnxruntime": lambda: onnx_engine.run(batch)}
    if openvino:
        fastest = openvino.get("openvino_bf16") or openvino["openvino_fp32"]
        precision = fastest.info.precision
        runs[f"openvino_{precision}_latency"] = lambda: fastest.run(batch)
        throughput = ctx.make_named_engine(
            "openvino", precision=precision, openvino_hint="throughput"
        )
        runs[f"openvino_{precision}_throughput"] = lambda: throughput.run(batch)
    parallel = parallel_throughput(runs, ctx.preset.repeats)
    for name, row in parallel.items():
        ctx.log(f"model: {name} 2 parallel calls / 1: {row['speedup']:.2f}x images/s")
    return parallel


def run(ctx: BenchContext) -> dict[str, Any]:
    """Times the service's engines, Keras `predict` and OpenCV DNN on one `model_input`-sided
    image, then (`Preset.model_parallel`) 2 parallel calls against 1 per engine and hint."""
    side = ctx.preset.model_input
    batch = ctx.image(side)[np.newaxis].astype(np.float32)
    flops = conv_flops(ctx.model_path, side, side)
    sgemm = sgemm_gflops()
    ctx.log(f"model: sgemm {sgemm:.0f} GFLOP/s; {flops / 1e9:.1f} GFLOP per {side}² call")

    onnx_engine = ctx.engine
    engines: dict[str, Any] = {"onnxruntime": onnx_engine.run}
    skipped: dict[str, str] = {}
    openvino = _openvino_engines(ctx, skipped)
    engines.update({name: engine.run for name, engine in openvino.items()})
    baselines: dict[str, Any] = {"opencv_dnn": lambda: _opencv_forward(ctx.model_path)}
    if ctx.checkpoint is not None:
        baselines["keras_predict"] = lambda: _keras_predict(ctx.checkpoint)
    if ctx.checkpoint is None:
        skipped["keras_predict"] = "no --checkpoint given"
    for name, build in baselines.items():
        try:
            engine = build()
            engine(batch)  # fails here, not inside the timed rounds, if the engine cannot run
        except Exception as exc:  # a missing optional package must not sink the whole run
            skipped[name] = f"{type(exc).__name__}: {exc}"
            ctx.log(f"model: {name} skipped ({skipped[name]})")
            continue
        engines[name] = engine

    # The engines take turns, so a machine that speeds up or slows down mid-run shifts them all.
    timings = time_interleaved(
        {name: lambda engine=engine: engine(batch) for name, engine in engines.items()},
        ctx.preset.repeats,
    )
    reference = timings["onnxruntime"][1]
    rows = []
    for name, (timing, output) in timings.items():
        rows.append(_engine_row(name, timing, output, reference, flops, sgemm))
        ctx.log(f"model: {name} {timing.median * 1000:.0f} ms")
    rows[0]["providers"] = list(onnx_engine.info.providers)

    for row in rows:
        if row["engine"] in openvino:
            info = openvino[row["engine"]].info
            row["engine_config"] = dict(info.engine_config)
            row["precision_reason"] = info.precision_reason

    by_name = {row["engine"]: row["time_ms"]["median"] for row in rows}
    ort_ms = by_name["onnxruntime"]
    # The engine `UPSCALER_ENGINE=auto` would pick on this CPU (bf16 where the CPU has it).
    service_cpu = next(
        (name for name in ("openvino_bf16", "openvino_fp32") if name in by_name), "onnxruntime"
    )
    service_ms = by_name[service_cpu]

    if ctx.preset.model_parallel:
        parallel = _parallel_study(ctx, onnx_engine, openvino, batch)
    else:
        parallel = {"skipped": f"not in the {ctx.preset.name} preset"}
    return {
        "input": f"1x{side}x{side}x3",
        "gflop_per_call": round(flops / 1e9, 4),
        "sgemm_gflop_per_s": round(sgemm, 1),
        "engines": rows,
        "skipped": skipped,
        "speedup_vs_keras_predict": ratio(by_name.get("keras_predict"), ort_ms),
        "speedup_vs_opencv_dnn": ratio(by_name.get("opencv_dnn"), ort_ms),
        "service_cpu_engine": service_cpu,
        "service_cpu_speedup_vs_keras_predict": ratio(by_name.get("keras_predict"), service_ms),
        "service_cpu_speedup_vs_onnxruntime": ratio(ort_ms, service_ms),
        "parallel": parallel,
    }
