"""Figures of the jobs (docs/api.md, Jobs): what a job costs against `POST /upscale` for one
image (time end to end, bytes on disk), and how long a restart takes to pick up queued jobs.

    .venv/bin/python scripts/jobs_figures.py [--model models/edsr_x4.onnx] [--side 256]
                                             [--rounds 5] [--queued 100]

The service runs as deployed (`uvicorn service.main:app` in a subprocess, configured by
`UPSCALER_*` variables, on 127.0.0.1). A job is timed from its submit to the last byte of its
result, following its events as a client would; `/upscale` from request to last byte. The
pick-up is timed twice: opening the store in this process (recovery included), and a real
process from its start until the last of the queued jobs answers (and until the first runs,
which waits for the model's warm-up). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.images import png_file, synthetic_photo
from benchmarks.server import (
    free_port,
    running_service,
    service_process,
    settings_environment,
)
from service.config import Settings
from service.core.jobs.store import JobStore, NewJob


def _disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _run_job(url: str, image: bytes) -> tuple[float, int, bytes]:
    """Seconds from submit to the result's last byte, and the bytes the job held on disk."""
    started = time.perf_counter()
    job = httpx.post(f"{url}/jobs", content=image, headers={"Content-Type": "image/png"}).json()
    with httpx.stream("GET", f"{url}/jobs/{job['id']}/events", timeout=600) as events:
        for line in events.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["status"] == "succeeded":
                break
    result = httpx.get(f"{url}/jobs/{job['id']}/result", timeout=60).content
    seconds = time.perf_counter() - started
    return seconds, len(result), result


def overhead(settings: Settings, image: bytes, rounds: int) -> dict[str, Any]:
    """A job against POST /upscale, alternating, after one warm-up request of each."""
    jobs_dir = settings.jobs_dir
    assert jobs_dir is not None
    direct, jobs, on_disk = [], [], []
    with running_service(settings) as url:
        post = {"content": image, "headers": {"Content-Type": "image/png"}, "timeout": 600}
        httpx.post(f"{url}/upscale", **post)
        _run_job(url, image)
        for _ in range(rounds):
            started = time.perf_counter()
            expected = httpx.post(f"{url}/upscale", **post).content
            direct.append(time.perf_counter() - started)
            before = _disk_bytes(jobs_dir)
            seconds, result_bytes, result = _run_job(url, image)
            assert result == expected, "a job must give the bytes /upscale gives"
            jobs.append(seconds)
            # Input deleted at success; the result and the record's share of the database stay.
            on_disk.append(_disk_bytes(jobs_dir) - before)
    upscale_s, job_s = statistics.median(direct), statistics.median(jobs)
    return {
        "image_bytes": len(image),
        "result_bytes": result_bytes,
        "upscale_median_s": round(upscale_s, 3),
        "job_median_s": round(job_s, 3),
        "overhead_s": round(job_s - upscale_s, 3),
        "overhead_percent": round(100 * (job_s - upscale_s) / upscale_s, 1),
        "disk_bytes_per_finished_job_median": int(statistics.median(on_disk)),
        "upscale_s": [round(s, 3) for s in direct],
        "job_s": [round(s, 3) for s in jobs],
    }


def pickup(settings: Settings, image: bytes, queued: int) -> dict[str, Any]:
    """Time to pick up `queued` jobs left queued by a stopped process."""
    jobs_dir = settings.jobs_dir
    assert jobs_dir is not None
    store = JobStore(jobs_dir, retention_seconds=3600, max_bytes=10**12)
    name = Path(settings.model_path).stem
    for index in range(queued):
        store.submit(NewJob("", f"q{index:04d}", image, name, "standard", "image/png", 1, 1, 4))
    store.close()
    opens = []
    for _ in range(5):
        started = time.perf_counter()
        JobStore(jobs_dir, retention_seconds=3600, max_bytes=10**12).close()
        opens.append(time.perf_counter() - started)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(port)]
    last = f"{url}/jobs/q{queued - 1:04d}"

    def listed() -> bool:
        try:
            return httpx.get(last, timeout=2).json().get("queue_position") == queued
        except (httpx.HTTPError, ValueError):
            return False

    started = time.perf_counter()
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPSCALER_")}
    env.update(settings_environment(settings))
    with service_process(command, listed, env=env):
        answered = time.perf_counter() - started
        while httpx.get(f"{url}/jobs/q0000").json()["status"] == "queued":
            time.sleep(0.05)
        running = time.perf_counter() - started
    return {
        "queued": queued,
        "store_open_median_ms": round(1000 * statistics.median(opens), 1),
        "process_start_to_all_jobs_answering_s": round(answered, 2),
        "process_start_to_first_job_running_s": round(running, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/edsr_x4.onnx"))
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queued", type=int, default=100)
    args = parser.parse_args()
    image = png_file(synthetic_photo(args.side, args.side, seed=1))
    with tempfile.TemporaryDirectory() as folder:
        base = {"model_path": args.model, "reload_interval_seconds": 0}
        first = Settings(**base, jobs_dir=Path(folder) / "a")
        second = Settings(**base, jobs_dir=Path(folder) / "b")
        figures = {
            "overhead": overhead(first, image, args.rounds),
            "pickup": pickup(second, image, args.queued),
        }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
