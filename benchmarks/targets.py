"""The issue's performance targets, evaluated from one run's results (pure; no measuring).

Every target is a ratio of two figures measured side by side in the same run, never an absolute
time. A target whose figures are missing (a section not run, a baseline not installed, no GPU)
is reported as not measured rather than passed or failed.
"""

from __future__ import annotations

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


def _batched_fp16(gpu: dict[str, Any], gpu_measured: bool) -> tuple[float | None, str]:
    # Only the service's call on 512² tiles counts (the `on device` rows leave out the host
    # copies every request needs), and only fp16 rows: the batched rows fall back to the fp32
    # model when the fp16 file is missing. Skipped batch sizes have no figure.
    rows = [
        row
        for row in gpu.get("batched", [])
        if row.get("tile") == 512 and row.get("path", "service") == "service"
    ]
    values = [
        row["output_mp_per_s"]
        for row in rows
        if str(row.get("model", "")).endswith("_fp16.onnx") and "output_mp_per_s" in row
    ]
    if not gpu_measured:
        return None, "no GPU run yet"
    if rows and not values:
        return None, "gpu section ran the fp32 model: no fp16 export beside it"
    return (max(values) if values else None), "gpu section"


def _cpu_targets(results: dict[str, Any]) -> list[Target]:
    model = results.get("model") or {}
    tiling = results.get("tiling") or {}
    http = results.get("http")
    cell_256 = _cell(http, 256, 1)
    throughput, throughput_note = _throughput_ratio(http, 256)
    skipped = model.get("skipped", {})
    return [
        _target(
            "CPU: onnxruntime speed / Keras predict",
            model.get("speedup_vs_keras_predict"),
            1.3,
            True,
            skipped.get("keras_predict", "model section, same input"),
        ),
        _target(
            "CPU: onnxruntime speed / OpenCV DNN",
            model.get("speedup_vs_opencv_dnn"),
            1.2,
            True,
            skipped.get("opencv_dnn", "model section, same input"),
        ),
        _target(
            "CPU: tiled time / whole-image time",
            tiling.get("tiled_over_whole"),
            1.10,
            False,
            f"tiling section, {tiling.get('input')} input, {tiling.get('service_mode')} tiles",
        ),
        _target(
            "CPU: HTTP p50 / (bare model + encode), 256² input",
            cell_256.get("p50_over_bare") if cell_256 else None,
            1.15,
            False,
            "http section, concurrency 1",
        ),
        _target(
            "CPU: throughput at concurrency 4 / sequential",
            throughput,
            0.9,
            True,
            throughput_note,
        ),
    ]


def _engine_targets(results: dict[str, Any]) -> list[Target]:
    """Issue 18's targets, on the engine `UPSCALER_ENGINE=auto` runs on this CPU (OpenVINO)."""
    model = results.get("model") or {}
    engine = model.get("service_cpu_engine", "openvino")
    http = ((results.get("http") or {}).get("engines") or {}).get("openvino")
    cell_256 = _cell(http, 256, 1)
    throughput, throughput_note = _throughput_ratio(http, 256)
    startup = results.get("startup") or {}
    delta = startup.get("openvino_minus_onnxruntime_s")
    return [
        _target(
            f"CPU engine ({engine}) speed / Keras predict",
            model.get("service_cpu_speedup_vs_keras_predict"),
            1.3,
            True,
            model.get("skipped", {}).get("keras_predict", "model section, same input"),
        ),
        _target(
            "OpenVINO: HTTP p50 / (bare model + encode), 256² input",
            cell_256.get("p50_over_bare") if cell_256 else None,
            1.15,
            False,
            "http section, OpenVINO service, concurrency 1",
        ),
        _target(
            "OpenVINO: throughput at concurrency 4 / sequential",
            throughput if http else None,
            0.9,
            True,
            throughput_note if http else "http section not run on OpenVINO",
        ),
        _target(
            "OpenVINO start-up to ready minus onnxruntime's (s)",
            delta,
            2.0,
            False,
            "startup section, medians" if delta is not None else "startup section not run",
        ),
    ]


def _gpu_targets(gpu: dict[str, Any]) -> list[Target]:
    measured = "provider" in gpu and not gpu.get("cpu_smoke")
    batched, batched_note = _batched_fp16(gpu, measured)
    delta = (gpu.get("fp16_quality") or {}).get("delta_db")
    encode_share, share_note = _encode_share(gpu.get("http") if measured else None)
    return [
        _target(
            "GPU: fp16 batched model path, output MP/s on 512² tiles",
            batched,
            800.0,
            True,
            batched_note,
        ),
        _target(
            "GPU: Set5 PSNR difference, fp16 against fp32 (dB, absolute)",
            abs(delta) if measured and delta is not None else None,
            0.05,
            False,
            "gpu section, Y channel, border 4" if measured else "no GPU run yet",
        ),
        _target(
            "GPU: encode share of end-to-end server time",
            encode_share,
            0.5,
            False,
            share_note if measured else "no GPU run yet",
        ),
    ]


def evaluate(results: dict[str, Any]) -> list[Target]:
    """Evaluates every target against a run's results."""
    return _cpu_targets(results) + _engine_targets(results) + _gpu_targets(results.get("gpu") or {})
