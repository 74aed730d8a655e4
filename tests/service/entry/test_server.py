"""The real server process: graceful drain (SIGTERM while an upscale runs), and the malloc
arena bound of both of its entry points."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from service.host import ARENA_ENVIRONMENT, MALLOC_ARENAS
from tests.service.arena_probe import arenas_after
from tests.service.helpers import build_model, png_bytes
from tests.service.reload_helpers import wait_for

REPO_ROOT = Path(__file__).resolve().parents[3]
DELAY = 2.0  # seconds per model call: the one tile of the upload takes this long


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(tmp_path: Path) -> None:
    model = build_model(tmp_path / "tiny.onnx")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "UPSCALER_ENGINE": "onnxruntime",
        "UPSCALER_PROVIDERS": "cpu",
        "UPSCALER_INTRA_OP_THREADS": "1",
        "UPSCALER_TILE_SIZE": "16",
        "UPSCALER_TILE_OVERLAP": "2",
        "UPSCALER_DRAIN_SECONDS": "30",
        "UPSCALER_RETRY_AFTER_SECONDS": "3",
        "UPSCALER_LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "tests.service.slow_service", str(DELAY)]
    args = ["--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*command, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert server.poll() is None, "the service exited during start-up"
                return False

        wait_for(ready, timeout=90)
        answer: dict[str, httpx.Response] = {}

        def upscale() -> None:
            answer["in flight"] = httpx.post(
                f"{url}/upscale",
                content=png_bytes(8, 8),
                headers={"Content-Type": "image/png"},
                timeout=60,
            )

        client = threading.Thread(target=upscale)
        client.start()
        wait_for(lambda: "upscaler_inflight 1.0" in httpx.get(f"{url}/metrics").text)
        server.send_signal(signal.SIGTERM)

        # Still listening while the upscale runs: not ready, and no new work.
        draining = httpx.get(f"{url}/readyz", timeout=5)
        assert (draining.status_code, draining.json()["status"]) == (503, "draining")
        refused = httpx.post(
            f"{url}/upscale", content=png_bytes(), headers={"Content-Type": "image/png"}
        )
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3"

        client.join(timeout=60)
        assert answer["in flight"].status_code == 200
        assert answer["in flight"].headers["x-output-size"] == "32x32"
        started = time.monotonic()
        assert server.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        if server.poll() is None:
            server.kill()
        output = server.communicate(timeout=10)[0]
    assert '"status": 200' in output and '"path": "/upscale"' in output, output[-3000:]


def _environment_without_a_bound() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key != ARENA_ENVIRONMENT and not key.startswith("UPSCALER_")
    }


def test_python_m_service_bounds_its_malloc_arenas() -> None:
    # `--help` runs the entry point's start and exits before serving.
    setup = (
        "import runpy, sys\n"
        "sys.argv = ['service', '--help']\n"
        "try:\n    runpy.run_module('service', run_name='__main__')\n"
        "except SystemExit:\n    pass"
    )
    assert arenas_after(setup, _environment_without_a_bound()) <= MALLOC_ARENAS


def test_uvicorn_service_main_app_bounds_its_malloc_arenas() -> None:
    setup = "import service.main\nservice.main.app  # what uvicorn reads"
    assert arenas_after(setup, _environment_without_a_bound()) <= MALLOC_ARENAS
