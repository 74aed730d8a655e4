"""The real service in a subprocess (uvicorn on a free loopback port), and a load driver.

The service runs exactly as deployed: `uvicorn service.main:app`, configured only through
`UPSCALER_*` variables. Clients are threads with one httpx connection each, sending a bounded
number of requests; every answer's status, latency and `Server-Timing` are recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_environment(settings: Settings) -> dict[str, str]:
    """`UPSCALER_*` variables that reproduce `settings` in another process."""
    prefix = Settings.model_config.get("env_prefix", "UPSCALER_")
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue  # unset optional settings (a cache folder): the default is None too
        if isinstance(value, list | tuple):
            text = json.dumps([str(item) for item in value])
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"{prefix}{name.upper()}"] = text
    return env


def answers_ready(url: str) -> Callable[[], bool]:
    """A readiness check: whether `url`'s /readyz answers 200."""

    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        return False

    return ready


@contextlib.contextmanager
def service_process(
    command: list[str],
    ready: Callable[[], bool],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    timeout_s: float = 180.0,
) -> Iterator[subprocess.Popen]:
    """Starts a service process, waits until `ready()` is true, yields the process; stops it
    afterwards (SIGTERM, then SIGKILL after 20 s). Its output goes to a temporary log.

    Raises:
        RuntimeError: If the process exits or is not ready within `timeout_s` (with the log's
            last lines).
    """
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=log)
        try:
            _wait_ready(process, ready, timeout_s, log)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def running_service(settings: Settings, timeout_s: float = 180.0) -> Iterator[str]:
    """Starts the service with `settings` as deployed (`uvicorn service.main:app`), waits until
    /readyz says ready, yields its base URL.

    Raises:
        RuntimeError: If the process exits or is not ready within `timeout_s` (with its log).
    """
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPSCALER_")}
    env.update(settings_environment(settings))
    host = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    command = [sys.executable, "-m", "uvicorn", "service.main:app", *host]
    url = f"http://127.0.0.1:{port}"
    with service_process(command, answers_ready(url), env=env, timeout_s=timeout_s):
        yield url


def time_to_ready(settings: Settings, timeout_s: float = 180.0) -> float:
    """Seconds from starting the service process to its first /readyz 200 (model loaded,
    compiled and warmed up), with `settings`."""
    started = time.perf_counter()
    with running_service(settings, timeout_s):
        return time.perf_counter() - started


def _wait_ready(
    process: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, log: Any
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"service exited with {process.returncode}:\n{log.read()[-3000:]}")
        if ready():
            return
        time.sleep(0.05)
    log.seek(0)
    raise RuntimeError(f"service not ready after {timeout_s} s:\n{log.read()[-3000:]}")


def parse_server_timing(header: str | None) -> dict[str, float]:
    """`decode;dur=1.5, model;dur=20` -> {"decode": 1.5, "model": 20.0} (milliseconds)."""
    timings: dict[str, float] = {}
    for metric in (header or "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key.strip() == "dur":
                with contextlib.suppress(ValueError):
                    timings[name] = float(value)
    return timings


@dataclass
class Reply:
    """One answered request."""

    status: int
    seconds: float
    output_pixels: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def drive(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    requests: int,
    accept: str = "image/png",
    timeout_s: float = 900.0,
) -> tuple[list[Reply], float]:
    """Sends `requests` uploads of `body` from `concurrency` client threads.

    Returns:
        Every reply, and the wall time from the first request to the last answer.
    """
    remaining = [requests]
    lock = threading.Lock()
    replies: list[Reply] = []
    headers = {"Content-Type": "image/png", "Accept": accept}

    def client() -> None:
        with httpx.Client(timeout=timeout_s) as session:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                response = session.post(f"{url}/upscale", content=body, headers=headers)
                reply = Reply(response.status_code, time.perf_counter() - started)
                if response.status_code == 200:
                    width, _, height = response.headers.get("x-output-size", "0x0").partition("x")
                    reply.output_pixels = int(width) * int(height)
                    reply.timings = parse_server_timing(response.headers.get("server-timing"))
                with lock:
                    replies.append(reply)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies, time.perf_counter() - started


def status_counts(replies: list[Reply]) -> Mapping[str, int]:
    """Replies per HTTP status, as strings for JSON."""
    counts: dict[str, int] = {}
    for reply in replies:
        counts[str(reply.status)] = counts.get(str(reply.status), 0) + 1
    return dict(sorted(counts.items()))
