"""Helpers of the job tests: a real service with jobs on 127.0.0.1, and its event streams."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from service.api.app import create_app
from tests.service.helpers import build_model
from tests.web.live import LiveServer, slow_model, tiny_settings

#: Seconds per model call of the `slow` model: a 64x64 image (about 25 tiles) takes seconds.
SLOW_DELAY = 0.2
TERMINAL = {"succeeded", "failed", "canceled"}


def job_models(folder: Path) -> Path:
    """A models folder with `fast` (the default) and `slow` (slowed by `jobs_server`)."""
    folder.mkdir(parents=True, exist_ok=True)
    build_model(folder / "fast.onnx")
    build_model(folder / "slow.onnx", seed=3)
    return folder


@contextlib.contextmanager
def jobs_server(models: Path, jobs_dir: Path, **overrides: Any) -> Iterator[tuple[LiveServer, Any]]:
    """The service with jobs in `jobs_dir` and the two models; yields it and the slow model's
    call counter."""
    settings = tiny_settings(
        None,
        models_dir=models,
        default_model="fast",
        jobs_dir=jobs_dir,
        engine="onnxruntime",
        **overrides,
    )
    with (
        slow_model(models / "slow.onnx", SLOW_DELAY) as slow,
        LiveServer(create_app(settings)) as live,
    ):
        yield live, slow


def events(
    url: str, *, headers: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[dict[str, Any]]:
    """The jobs of a `/jobs/{id}/events` stream, one per `event: job` message."""
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[len("data: ") :])


def wait_job(
    live: LiveServer, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    """Polls GET /jobs/{id} until `until(job)`."""
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{live.url}/jobs/{job_id}", timeout=10).json()
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} stayed {job['status']}"
        time.sleep(0.05)


def submit(
    live: LiveServer, data: bytes, *, params: dict[str, Any] | None = None, **kwargs: Any
) -> httpx.Response:
    headers = {"Content-Type": "image/png", **kwargs.pop("headers", {})}
    return httpx.post(
        f"{live.url}/jobs", content=data, params=params, headers=headers, timeout=30, **kwargs
    )
