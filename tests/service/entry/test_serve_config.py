"""`serve run deploy/ray/serve-cpu.yaml` as shipped: from the repository root, on this machine
(2 cores in CI), it starts Ray, serves the repository's models and upscales.

The one change to the file is its port (a test never takes a fixed one). `serve run` starts its
own local Ray, so this module runs apart from test_serve.py's Ray session; skipped where the
`ray` extra is not installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.service.helpers import png_bytes

pytest.importorskip("ray.serve", reason="needs the ray extra: pip install '.[ray]'")

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG = REPO_ROOT / "deploy" / "ray" / "serve-cpu.yaml"
#: Longest wait from `serve run` to the first upscale (Ray's start, the model's warm-up).
START_TIMEOUT = 240.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _first_upscale(url: str, process: subprocess.Popen, log: Path) -> httpx.Response:
    """The first 200 of POST /upscale, polling until START_TIMEOUT."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve run exited:\n{log.read_text()[-3000:]}"
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.post(
                f"{url}/upscale",
                content=png_bytes(12, 8),
                headers={"Content-Type": "image/png"},
                timeout=60,
            )
            if answer.status_code == 200:
                return answer
        time.sleep(0.5)
    pytest.fail(f"no upscale within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def test_the_shipped_cpu_config_serves_from_the_repository_root(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    port = _free_port()
    config["http_options"]["port"] = port
    shipped = tmp_path / CONFIG.name
    shipped.write_text(yaml.safe_dump(config), encoding="utf-8")
    # Nothing from this shell: no UPSCALER_* settings, no allocator variable, no Ray address.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("UPSCALER_", "RAY_")) and key != "MALLOC_ARENA_MAX"
    }
    log = tmp_path / "serve.log"
    started = time.monotonic()
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("serve")), "run", str(shipped)],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its Ray processes go with it
            # Ctrl-C as a terminal delivers it, even when this runs as a background job.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        answer = _first_upscale(f"http://127.0.0.1:{port}", process, log)
        print(f"serve run to the first 200 of /upscale: {time.monotonic() - started:.1f} s")
        # Both shipped models are served, so `auto` chose one and says why.
        assert answer.headers["x-upscaler-model"] in {"edsr_x4", "edsr_x4_real"}
        assert "jpeg-quality=" in answer.headers["x-upscaler-evidence"]
        assert answer.headers["x-output-size"] == "48x32"
    finally:
        os.killpg(process.pid, signal.SIGINT)  # serve run's Ctrl-C: shuts Serve and Ray down
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
