"""The issue's performance targets, evaluated from one run's results (pure; no measuring).

Every target is a ratio of two figures measured side by side in the same run, never an absolute
time. A target whose figures are missing (a section not run, a baseline not installed, no GPU)
is reported as not measured rather than passed or failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """One target's verdict.

    Attributes:
        name: What is compared.
        measured: The measured ratio or figure, or None if not measured.
        threshold: The bound it must meet.
        higher_is_better: Whether `measured` must be >= (True) or <= (False) the threshold.
        passed: The verdict; None when not measured.
        note: Where the figure comes from, or why it is missing.
    """

    name: str
    measured: float | None
    threshold: float
    higher_is_better: bool
    passed: bool | None
    note: str

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        return asdict(self)


def _target(name: str, measured: float | None, threshold: float, higher: bool, note: str) -> Target:
    if measured is None:
        return Target(name, None, threshold, higher, None, note)
    passed = measured >= threshold if higher else measured <= threshold
    return Target(name, round(measured, 3), threshold, higher, passed, note)


def _cell(http: dict[str, Any] | None, side: int, concurrency: int) -> dict[str, Any] | None:
    for cell in (http or {}).get("cells", []):
        if cell["input"] == side and cell["concurrency"] == concurrency and "skipped" not in cell:
            return cell
    return None


def _throughput_ratio(http: dict[str, Any] | None, side: int) -> tuple[float | None, str]:
    sequential, concurrent = _cell(http, side, 1), _cell(http, side, 4)
    if not sequential or not concurrent or not sequential["output_mp_per_s"]:
        return None, f"{side}² cells at concurrency 1 and 4 not measured"
    statuses = set()
    for cell in (http or {}).get("cells", []):
        statuses |= set(cell.get("statuses", {}))
    if not statuses <= {"200", "503"}:
        return 0.0, f"statuses other than 200/503 seen: {sorted(statuses)}"
    value = concurrent["output_mp_per_s"] / sequential["output_mp_per_s"]
    return value, f"{side}², MP/s at c=4 over c=1; statuses seen {sorted(statuses)}"


def _encode_share(http: dict[str, Any] | None) -> tuple[float | None, str]:
    shares = []
    for cell in (http or {}).get("cells", []):
        split = cell.get("server_split_ms") or {}
        total = sum(split.values())
        if total > 0:
            shares.append((split.get("encode", 0.0) / total, cell["input"], cell["concurrency"]))
    if not shares:
        return None, "GPU HTTP section not run"
    share, side, concurrency = max(shares)
    return share, f"largest encode share of decode+model+encode: {side}², c={concurrency}"


def evaluate(results: dict[str, Any]) -> list[Target]:
    """Evaluates every target against a run's results."""
    model = results.get("model") or {}
    tiling = results.get("tiling") or {}
    http = results.get("http")
    gpu = results.get("gpu") or {}
    gpu_measured = "provider" in gpu and not gpu.get("cpu_smoke")

    cell_256 = _cell(http, 256, 1)
    e2e = cell_256.get("p50_over_bare") if cell_256 else None
    throughput, throughput_note = _throughput_ratio(http, 256)

    # The batched rows fall back to the fp32 model when the fp16 file is missing; only fp16
    # rows answer this target.
    # Only the service's call counts (the `on device` rows leave out the host copies every
    # request needs); skipped batch sizes have no figure.
    batched_rows = [
        row
        for row in gpu.get("batched", [])
        if row.get("tile") == 512 and row.get("path", "service") == "service"
    ]
    batched = [
        row["output_mp_per_s"]
        for row in batched_rows
        if str(row.get("model", "")).endswith("_fp16.onnx") and "output_mp_per_s" in row
    ]
    batched_note = "gpu section" if gpu_measured else "no GPU run yet"
    if gpu_measured and batched_rows and not batched:
        batched_note = "gpu section ran the fp32 model: no fp16 export beside it"
    quality = gpu.get("fp16_quality") or {}
    delta = quality.get("delta_db")
    encode_share, share_note = _encode_share(gpu.get("http") if gpu_measured else None)

    checks: list[Callable[[], Target]] = [
        lambda: _target(
            "CPU: onnxruntime speed / Keras predict",
            model.get("speedup_vs_keras_predict"),
            1.3,
            True,
            model.get("skipped", {}).get("keras_predict", "model section, same input"),
        ),
        lambda: _target(
            "CPU: onnxruntime speed / OpenCV DNN",
            model.get("speedup_vs_opencv_dnn"),
            1.2,
            True,
            model.get("skipped", {}).get("opencv_dnn", "model section, same input"),
        ),
        lambda: _target(
            "CPU: tiled time / whole-image time",
            tiling.get("tiled_over_whole"),
            1.10,
            False,
            f"tiling section, {tiling.get('input')} input, {tiling.get('service_mode')} tiles",
        ),
        lambda: _target(
            "CPU: HTTP p50 / (bare model + encode), 256² input",
            e2e,
            1.15,
            False,
            "http section, concurrency 1",
        ),
        lambda: _target(
            "CPU: throughput at concurrency 4 / sequential",
            throughput,
            0.9,
            True,
            throughput_note,
        ),
        lambda: _target(
            "GPU: fp16 batched model path, output MP/s on 512² tiles",
            max(batched) if gpu_measured and batched else None,
            800.0,
            True,
            batched_note,
        ),
        lambda: _target(
            "GPU: Set5 PSNR difference, fp16 against fp32 (dB, absolute)",
            abs(delta) if gpu_measured and delta is not None else None,
            0.05,
            False,
            "gpu section, Y channel, border 4" if gpu_measured else "no GPU run yet",
        ),
        lambda: _target(
            "GPU: encode share of end-to-end server time",
            encode_share,
            0.5,
            False,
            share_note if gpu_measured else "no GPU run yet",
        ),
    ]
    return [check() for check in checks]
