"""Nothing lost: `kill -9` of the real server process while a job runs, then a restart on the
same jobs folder, and the job finishes with the bytes an uninterrupted upscale gives."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.service.helpers import build_model, png_bytes
from tests.service.reload_helpers import wait_for

REPO_ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _server(
    model: Path, jobs_dir: Path, delay: float
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`python -m service` (every model call slowed by `delay`) with jobs in `jobs_dir`."""
    port = _free_port()
    env = {
        **os.environ,
        "UPSCALER_ENGINE": "onnxruntime",
        "UPSCALER_PROVIDERS": "cpu",
        "UPSCALER_INTRA_OP_THREADS": "1",
        "UPSCALER_TILE_SIZE": "16",
        "UPSCALER_TILE_OVERLAP": "2",
        "UPSCALER_JOBS_DIR": str(jobs_dir),
    }
    command = [
        sys.executable,
        "-m",
        "tests.service.slow_service",
        str(delay),
        "--model",
        str(model),
    ]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            assert server.poll() is None, server.communicate()[1][-2000:]
            return False

    try:
        wait_for(ready, timeout=90)
        yield url, server
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=10)


def _job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/jobs/{job_id}", timeout=5).json()


def test_a_job_killed_mid_run_finishes_after_a_restart_with_the_same_bytes(tmp_path: Path) -> None:
    model = build_model(tmp_path / "tiny.onnx")
    jobs_dir = tmp_path / "jobs"
    image = png_bytes(48, 40, seed=3)
    with _server(model, jobs_dir, delay=0.3) as (url, server):
        answer = httpx.put(
            f"{url}/jobs/photo", content=image, headers={"Content-Type": "image/png"}
        )
        assert answer.status_code == 202
        wait_for(lambda: (_job(url, "photo")["progress"]["tiles_done"] or 0) >= 2, timeout=30)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
    assert not list(jobs_dir.glob("files/*/result")), "no result may exist before the job ended"

    with _server(model, jobs_dir, delay=0.0) as (url, _):
        job = wait_for(lambda: (j := _job(url, "photo"))["status"] == "succeeded" and j, timeout=60)
        assert job["attempts"] == 2
        result = httpx.get(f"{url}/jobs/photo/result", timeout=10)
        direct = httpx.post(
            f"{url}/upscale", content=image, headers={"Content-Type": "image/png"}, timeout=60
        )
    assert result.status_code == direct.status_code == 200
    assert result.content == direct.content
    assert not list(jobs_dir.glob("files/*/input")), "the input goes once the result is stored"
