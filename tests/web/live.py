"""A real service on a free loopback port, for the browser and CLI tests.

The app is the service's own (`create_app`, which mounts the page), run by uvicorn in a
thread on 127.0.0.1; tiny ONNX models come from `tests.service.helpers`. `slow_model` makes one
model file slow (a pause before each model call, on whichever engine runs it: onnxruntime or
OpenVINO), so a test can stop a request while its tiles are still running and count the calls
made after.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.config import Settings
from service.core.engines import OnnxEngine
from tests.service.helpers import CPU_ONLY

#: Debian's `chromium` package; never a browser fetched by `playwright install`.
CHROMIUM = Path(os.environ.get("UPSCALER_TEST_CHROMIUM", "/usr/lib/chromium/chromium"))
#: Resolves nothing but loopback names, so the browser makes no outside lookups at all.
CHROMIUM_ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

#: Limits small enough for tiny test images, large enough for the ones the tests upscale.
TEST_LIMITS: dict[str, Any] = {
    "max_upload_bytes": 32 * 1024,
    "max_input_pixels": 128 * 128,
    "max_ensemble_input_pixels": 40 * 40,
}


def tiny_settings(model_path: Path | None, **overrides: Any) -> Settings:
    """Settings for a small, fast, CPU-only service; keyword arguments override fields.

    `model_path` serves that one file; None serves every model in `models_dir` (which the
    overrides then name, with `default_model`).
    """
    values: dict[str, Any] = {
        "providers": CPU_ONLY,
        "tile_size": 16,
        "tile_overlap": 2,
        "intra_op_threads": 1,
        "max_concurrency": 1,
        "max_queue": 2,
        "retry_after_seconds": 1,
        **TEST_LIMITS,
    }
    if model_path is not None:
        values["model_path"] = model_path
    values.update(overrides)
    return Settings(**values)


class LiveServer:
    """Runs `app` with uvicorn on 127.0.0.1 in a thread until the context exits.

    `root_path` is uvicorn's `--root-path`: the prefix a proxy in front strips (`PrefixProxy`);
    the server is ready once `ready_path` answers 200.
    """

    def __init__(self, app: Any, *, root_path: str = "", ready_path: str = "/readyz") -> None:
        self.app = app
        self.ready_path = ready_path
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", root_path=root_path)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return self
            if not self._thread.is_alive():
                break
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("the test service did not become ready within 30 s")

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def metric(self, name: str, **labels: str) -> float:
        """The sample of `name` with exactly these labels, in any order (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for found in re.finditer(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", text, re.MULTILINE):
            if dict(_LABEL.findall(found.group(1) or "")) == labels:
                return float(found.group(2))
        return 0.0


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class PrefixProxy:
    """A reverse proxy serving `upstream` at `prefix`/, as nginx's `location /upscaler/ {
    proxy_pass http://upstream/; }` does: the prefix is stripped from every request (the
    upstream runs with `--root-path` to know it), and any path outside it is a 404. An ASGI app,
    for `LiveServer(proxy, ready_path=prefix + "/readyz")`.
    """

    def __init__(self, upstream: str, prefix: str) -> None:
        self.upstream = upstream
        self.prefix = prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if not path.startswith(self.prefix + "/"):
            await _answer(send, 404, [(b"content-type", b"text/plain")], b"not under the prefix")
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        query = scope["query_string"].decode()
        url = self.upstream + path[len(self.prefix) :] + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"host"]
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.request(scope["method"], url, headers=headers, content=body)
        dropped = {b"content-length", b"transfer-encoding", b"connection", b"content-encoding"}
        kept = [(k, v) for k, v in answer.headers.raw if k.lower() not in dropped]
        await _answer(send, answer.status_code, kept, answer.content)


async def _answer(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    length = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + length})
    await send({"type": "http.response.body", "body": body})


@dataclass
class SlowModel:
    """Counts and delays onnxruntime calls on one model file (see `slow_model`)."""

    path: Path
    delay: float
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _engine_classes() -> list[type]:
    classes: list[type] = [OnnxEngine]
    with contextlib.suppress(ImportError):  # OpenVINO is not installed on every platform
        from service.core.engines.openvino_engine import OpenVinoEngine

        classes.append(OpenVinoEngine)
    return classes


@contextlib.contextmanager
def slow_model(path: Path, delay: float) -> Iterator[SlowModel]:
    """Makes every model call on `path` sleep `delay` seconds first, and counts them.

    Patched at each engine class's `run` (onnxruntime's and OpenVINO's), which every tile of
    every request goes through, so it holds whichever engine the service picks.
    """
    slow = SlowModel(path=path, delay=delay)
    target = path.resolve()

    def slowed(original: Any) -> Any:
        def run(engine: Any, *args: Any, **kwargs: Any) -> Any:
            info = getattr(engine, "info", None)  # None while the engine is being built
            if info is not None and Path(info.path).resolve() == target:
                time.sleep(slow.delay)
                with slow.lock:
                    slow.calls += 1
            return original(engine, *args, **kwargs)

        return run

    with pytest.MonkeyPatch.context() as patch:
        for engine_class in _engine_classes():
            patch.setattr(engine_class, "run", slowed(engine_class.run))
        yield slow


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raises TimeoutError in the test (main thread) once `seconds` have passed."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"test ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
