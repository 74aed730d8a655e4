"""Writing a run down: the JSON results, the latency-vs-size plot and a Markdown summary."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.targets import Target
from service.host import atomic_write_text, available_cpus

#: Distributions whose versions every report names.
PACKAGES = (
    "onnxruntime-gpu",
    "onnxruntime",
    "numpy",
    "pillow",
    "isal",
    "opencv-contrib-python-headless",
    "tensorflow",
    "keras",
    "fastapi",
    "uvicorn",
    "httpx",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """The machine and software versions the figures were measured with."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": _cpu_model(),
        "cpus_available": available_cpus(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def write_json(results: dict[str, Any], path: Path) -> None:
    """Writes the results, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2, default=str) + "\n")


def plot_latency(http: dict[str, Any], path: Path, title: str) -> bool:
    """Plots p50 latency against input size per concurrency, with the bare model + encode.

    Returns:
        False when there is nothing to plot.
    """
    cells = [cell for cell in http.get("cells", []) if cell.get("p50_ms")]
    if not cells:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for concurrency in sorted({cell["concurrency"] for cell in cells}):
        points = sorted(
            (cell["input"], cell["p50_ms"]) for cell in cells if cell["concurrency"] == concurrency
        )
        axis.plot(*zip(*points, strict=True), marker="o", label=f"HTTP p50, {concurrency} clients")
    bare = sorted(
        (int(side), value["total_ms"]) for side, value in http["bare_model_plus_encode"].items()
    )
    axis.plot(*zip(*bare, strict=True), "k--", marker="x", label="bare model + PNG encode")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("input side (pixels; output is 4x)")
    axis.set_ylabel("latency (ms)")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _verdict(target: Target) -> str:
    if target.passed is None:
        return "not measured"
    return "PASS" if target.passed else "FAIL"


def summary_markdown(results: dict[str, Any], targets: list[Target]) -> str:
    """The targets table, ready to paste into docs/benchmarks.md."""
    lines = [
        f"Run `{results['command']}` ({results['preset']}) on {results['machine']['cpu']}, "
        f"{results['machine']['cpus_available']} CPUs.",
        "",
        "| target | measured | bound | verdict | from |",
        "|---|---|---|---|---|",
    ]
    for target in targets:
        bound = ("≥ " if target.higher_is_better else "≤ ") + f"{target.threshold:g}"
        measured = "–" if target.measured is None else f"{target.measured:g}"
        lines.append(
            f"| {target.name} | {measured} | {bound} | {_verdict(target)} | {target.note} |"
        )
    return "\n".join(lines) + "\n"
