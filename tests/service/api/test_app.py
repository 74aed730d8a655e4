"""The HTTP layer: routes, limits, error statuses, readiness, admission control, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageCms

from service.api.app import create_app
from service.config import Settings
from service.core.engines import OnnxEngine
from service.core.lifecycle import ModelLifecycle
from service.exceptions import ModelLoadError
from tests.service.helpers import (
    SCALE,
    encode,
    lifecycle_of,
    noise_image,
    png_bytes,
    raw_png,
    wait_until_ready,
)

SettingsFactory = Callable[..., Settings]


class GatedEngine(OnnxEngine):
    """A real engine whose `run` can be held, counted, or made to fail, for timing-free tests."""

    blocking = False
    fail_warm_up = False

    def __init__(self, settings: Settings) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        super().__init__(settings)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.blocking:
            self.calls += 1
            self.entered.set()
            assert self.release.wait(timeout=30)
        return super().run(batch)

    def warm_up(self) -> float:
        if self.fail_warm_up:
            raise RuntimeError("out of GPU memory")
        return super().warm_up()


def _post_file(client: TestClient, data: bytes, name: str = "photo.png") -> Any:
    return client.post("/upscale", files={"file": (name, data, "application/octet-stream")})


def _wait_for(condition: Callable[[], bool]) -> None:
    """Polls a condition set by another thread (a synchronisation aid, not a timing check)."""
    for _ in range(3000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition never became true")


# --- Success paths -------------------------------------------------------------------------------


def test_upscale_multipart_returns_png_four_times_larger(client: TestClient) -> None:
    response = _post_file(client, png_bytes(5, 3))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-upscaler-provider"] == "CPUExecutionProvider"
    assert float(response.headers["x-inference-time-ms"]) >= 0
    assert response.headers["x-input-size"] == "5x3"
    assert response.headers["x-output-size"] == "20x12"
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size, image.mode) == ("PNG", (5 * SCALE, 3 * SCALE), "RGB")


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream"])
def test_upscale_raw_body(client: TestClient, content_type: str) -> None:
    body = png_bytes(4, 4)
    response = client.post("/upscale", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (16, 16)


def test_output_matches_direct_tiled_inference(client: TestClient) -> None:
    # A 40x30 image needs several 16-pixel tiles: the served result equals the model's output.
    from service.core.tiling import upscale_tiled

    pixels = noise_image(30, 40)
    response = _post_file(client, encode(Image.fromarray(pixels)))
    engine = lifecycle_of(client.app).models.default.engine
    expected = upscale_tiled(pixels, engine.run, scale=SCALE, tile_size=16, overlap=2)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(response.content))), expected)


def test_quality_max_averages_the_eight_flips_and_rotations(client: TestClient) -> None:
    from service.core.ensemble import self_ensemble
    from service.core.tiling import upscale_tiled

    pixels = noise_image(30, 40)
    response = client.post(
        "/upscale",
        params={"quality": "max"},
        files={"file": ("p.png", encode(Image.fromarray(pixels)))},
    )
    assert response.status_code == 200
    assert response.headers["X-Upscaler-Quality"] == "max"
    engine = lifecycle_of(client.app).models.default.engine
    averaged = self_ensemble(
        lambda image: upscale_tiled(image, engine.run, scale=SCALE, tile_size=16, overlap=2),
        pixels,
    )
    expected = np.clip(np.round(averaged), 0, 255).astype(np.uint8)
    got = np.asarray(Image.open(io.BytesIO(response.content)))
    assert got.shape == (120, 160, 3)
    # The random-weight test model is not flip-equivariant, so the ensemble differs from one run.
    assert not np.array_equal(
        got,
        np.asarray(
            Image.open(io.BytesIO(_post_file(client, encode(Image.fromarray(pixels))).content))
        ),
    )
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_unknown_quality_is_a_422_with_the_one_error_shape(client: TestClient) -> None:
    response = client.post(
        "/upscale", params={"quality": "ultra"}, files={"file": ("p.png", png_bytes(8, 8))}
    )
    _assert_error(response, 422, "quality='ultra' is not valid; use 'standard' or 'max'")


def test_quality_max_has_its_own_pixel_limit(make_settings: SettingsFactory) -> None:
    with TestClient(create_app(make_settings(max_ensemble_input_pixels=100))) as client:
        wait_until_ready(client)
        small, large = png_bytes(10, 10), png_bytes(11, 10)
        assert _post_file(client, large).status_code == 200  # standard quality: no such limit
        ok = client.post("/upscale", params={"quality": "max"}, files={"file": ("a.png", small)})
        assert ok.status_code == 200
        refused = client.post(
            "/upscale", params={"quality": "max"}, files={"file": ("a.png", large)}
        )
        _assert_error(refused, 413, "quality=max runs the model 8 times")


@pytest.mark.parametrize(
    ("mode", "image_format", "expected_mode"),
    [
        ("RGB", "JPEG", "RGB"),
        ("RGBA", "PNG", "RGBA"),
        ("L", "PNG", "L"),
        ("LA", "PNG", "LA"),
        ("P", "GIF", "RGB"),
        ("CMYK", "JPEG", "RGB"),
        ("RGB", "WEBP", "RGB"),
        ("RGB", "BMP", "RGB"),
        ("RGB", "TIFF", "RGB"),
    ],
)
def test_modes_and_formats_round_trip(
    client: TestClient, mode: str, image_format: str, expected_mode: str
) -> None:
    image = Image.fromarray(noise_image(3, 5)).convert(mode)
    response = _post_file(client, encode(image, image_format))
    assert response.status_code == 200, response.text
    result = Image.open(io.BytesIO(response.content))
    assert (result.mode, result.size) == (expected_mode, (20, 12))


def test_alpha_is_upscaled_with_bicubic_and_kept(client: TestClient) -> None:
    image = Image.fromarray(noise_image(3, 5))
    alpha = Image.fromarray(np.arange(15, dtype=np.uint8).reshape(3, 5) * 17)
    image.putalpha(alpha)
    response = _post_file(client, encode(image))
    result = Image.open(io.BytesIO(response.content))
    expected_alpha = alpha.resize((20, 12), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(result)[..., 3], np.asarray(expected_alpha))


def test_icc_profile_is_carried_to_the_output(client: TestClient) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.fromarray(noise_image(3, 5))
    response = _post_file(client, encode(image, "JPEG", icc_profile=profile))
    assert Image.open(io.BytesIO(response.content)).info["icc_profile"] == profile


def test_exif_rotation_is_applied(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    response = _post_file(client, encode(Image.fromarray(noise_image(3, 5)), exif=exif))
    assert Image.open(io.BytesIO(response.content)).size == (3 * SCALE, 5 * SCALE)


# --- Errors --------------------------------------------------------------------------------------


def _assert_error(response: Any, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert fragment in response.json()["detail"]


def test_upload_over_the_limit_by_content_length(client: TestClient) -> None:
    body = b"\x00" * (256 * 1024 + 1)
    response = client.post("/upscale", content=body, headers={"Content-Type": "image/png"})
    _assert_error(response, 413, "limit of 262144 bytes")


def test_multipart_upload_over_the_limit(client: TestClient) -> None:
    _assert_error(_post_file(client, b"\x00" * (300 * 1024)), 413, "upload exceeds")


def test_image_over_the_pixel_limit(client: TestClient) -> None:
    _assert_error(_post_file(client, png_bytes(65, 64)), 413, "65x64")


def test_decompression_bomb(client: TestClient) -> None:
    # The header claims 100000 x 100000 pixels (30 GB decoded) over a few bytes of data.
    _assert_error(_post_file(client, raw_png(100_000, 100_000, 2, b"")), 413, "pixels")


def test_empty_body(client: TestClient) -> None:
    response = client.post("/upscale", content=b"", headers={"Content-Type": "image/png"})
    _assert_error(response, 422, "empty")


def test_empty_file_field(client: TestClient) -> None:
    _assert_error(_post_file(client, b""), 422, "empty")


def test_not_an_image(client: TestClient) -> None:
    _assert_error(_post_file(client, b"just some text"), 415, "not an image")


def test_unsupported_format(client: TestClient) -> None:
    ppm = encode(Image.fromarray(noise_image(3, 3)), "PPM")
    _assert_error(_post_file(client, ppm), 415, "PPM images are not supported")


def test_truncated_file(client: TestClient) -> None:
    png = png_bytes(40, 40)
    _assert_error(_post_file(client, png[: len(png) // 2]), 422, "truncated")


def test_missing_file_field(client: TestClient) -> None:
    response = client.post("/upscale", files={"image": ("a.png", png_bytes(), "image/png")})
    _assert_error(response, 422, "'file' is missing")


def test_a_multipart_body_cut_short_is_reported(client: TestClient) -> None:
    boundary = "cut"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png_bytes()  # no closing boundary
    response = client.post(
        "/upscale",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    _assert_error(response, 422, "body ended before that part was complete")


def test_text_instead_of_file(client: TestClient) -> None:
    response = client.post("/upscale", data={"file": "not a file"})
    assert response.status_code in (415, 422)
    response = client.post(
        "/upscale",
        files={"other": ("a.png", b"x", "image/png")},
        data={"file": "not a file"},
    )
    _assert_error(response, 422, "must be a file")


def test_unsupported_content_type(client: TestClient) -> None:
    response = client.post("/upscale", json={"image": "base64..."})
    _assert_error(response, 415, "application/json")


def test_wrong_method_is_json(client: TestClient) -> None:
    response = client.get("/upscale")
    assert response.status_code == 405
    assert "detail" in response.json()


def test_wrong_method_lists_every_method_of_the_path(client: TestClient) -> None:
    # /jobs/{id} is three routes (GET, PUT, DELETE): the 405 names all of them.
    response = client.request("PATCH", "/jobs/some-job")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PUT"
    assert "detail" in response.json()


def test_unacceptable_format_for_the_output_size_is_refused_before_upscaling(
    make_settings: SettingsFactory,
) -> None:
    # 4100 x 1 upscales to 16400 x 4: one pixel too wide... for WebP by 17, within PNG's reach.
    with TestClient(create_app(make_settings(max_input_pixels=5000))) as client:
        wait_until_ready(client)
        wide = png_bytes(4100, 1)
        refused = client.post(
            "/upscale",
            content=wide,
            headers={"Content-Type": "image/png", "Accept": "image/webp"},
        )
        _assert_error(refused, 406, "16400x4 pixels, is too large")
        metrics = client.get("/metrics").text
        assert 'upscaler_inference_seconds_count{model="conv"} 0.0' in metrics
        fallback = client.post(
            "/upscale",
            content=wide,
            headers={"Content-Type": "image/png", "Accept": "image/webp, image/png;q=0.5"},
        )
        assert fallback.status_code == 200
        assert fallback.headers["content-type"] == "image/png"


# --- Readiness and start-up ----------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_head_requests(client: TestClient, path: str) -> None:
    response = client.head(path)
    assert response.status_code == 200
    assert response.content == b""


def test_not_ready_before_the_model_is_loaded(make_settings: SettingsFactory) -> None:
    client = TestClient(create_app(make_settings()))  # lifespan not started
    response = client.get("/readyz")
    assert (response.status_code, response.json()["status"]) == (503, "starting")
    assert client.get("/healthz").status_code == 200
    _assert_error(_post_file(client, png_bytes()), 503, "not loaded")


def test_ready_once_warmed_up(client: TestClient, conv_model_path: Path) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["providers"] == ["CPUExecutionProvider"]
    assert body["fallback"] is False
    assert body["model"]["path"] == str(conv_model_path)
    assert body["model"]["scale"] == SCALE
    assert body["model"]["metadata"]["training_data"] == "none (test fixture)"
    assert body["tile_size"] == 16
    assert body["warmup_ms"] is not None


def test_not_ready_while_warming_up(make_settings: SettingsFactory) -> None:
    class SlowWarmUp(GatedEngine):
        def warm_up(self) -> float:
            self.entered.set()
            assert self.release.wait(timeout=30)
            return super().warm_up()

    with TestClient(create_app(make_settings(), engine_factory=SlowWarmUp)) as client:
        engine = lifecycle_of(client.app).models.default.engine
        assert engine.entered.wait(timeout=30)
        response = client.get("/readyz")
        assert (response.status_code, response.json()["status"]) == (503, "warming_up")
        assert response.headers["retry-after"] == "5"
        assert response.json()["providers"] == ["CPUExecutionProvider"]
        refused = _post_file(client, png_bytes())
        _assert_error(refused, 503, "warming up")
        assert refused.headers["retry-after"] == "5"
        engine.release.set()
        wait_until_ready(client)
        assert client.get("/readyz").status_code == 200
        assert _post_file(client, png_bytes()).status_code == 200


def test_failed_warm_up_keeps_the_service_unready(make_settings: SettingsFactory) -> None:
    class BrokenWarmUp(GatedEngine):
        fail_warm_up = True

    with TestClient(create_app(make_settings(), engine_factory=BrokenWarmUp)) as client:
        _wait_for(lambda: lifecycle_of(client.app).warmup_error is not None)
        response = client.get("/readyz")
        assert (response.status_code, response.json()["status"]) == (503, "failed")
        _assert_error(_post_file(client, png_bytes()), 503, "out of GPU memory")


def test_missing_model_refuses_to_start(make_settings: SettingsFactory, tmp_path: Path) -> None:
    missing = tmp_path / "absent.onnx"
    with (
        pytest.raises(ModelLoadError, match=f"model file not found: {missing}"),
        TestClient(create_app(make_settings(model_path=missing))),
    ):
        pass


def test_command_line_exits_when_the_model_is_missing(tmp_path: Path) -> None:
    from service.entry.server import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "absent.onnx"), "--port", "0"])
    assert exit_info.value.code not in (0, None)


def test_command_line_exits_with_a_message_when_the_keys_file_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    from service.entry.server import STARTUP_FAILURE, main

    monkeypatch.setenv("UPSCALER_API_KEYS_FILE", str(tmp_path / "absent-keys"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0"])
    assert exit_info.value.code == STARTUP_FAILURE
    logged = capfd.readouterr().err
    assert "cannot start" in logged and "absent-keys" in logged


# --- Admission control ---------------------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(make_settings: SettingsFactory) -> None:
    settings = make_settings(max_concurrency=1, max_queue=1, retry_after_seconds=7)
    with TestClient(create_app(settings, engine_factory=GatedEngine)) as client:
        wait_until_ready(client)
        serving = lifecycle_of(client.app).serving
        engine = serving.models.default.engine
        engine.blocking = True
        with ThreadPoolExecutor(max_workers=2) as pool:
            running = pool.submit(_post_file, client, png_bytes())
            assert engine.entered.wait(timeout=30)
            queued = pool.submit(_post_file, client, png_bytes())
            _wait_for(lambda: serving.gate.waiting == 1)

            refused = _post_file(client, png_bytes())
            _assert_error(refused, 503, "busy")
            assert refused.headers["retry-after"] == "7"
            metrics = client.get("/metrics").text
            assert "upscaler_queue_depth 1.0" in metrics
            assert "upscaler_inflight 1.0" in metrics

            engine.release.set()
            assert running.result().status_code == 200
            assert queued.result().status_code == 200


async def _asgi_post(
    app: FastAPI,
    chunks: list[bytes],
    headers: dict[str, str],
    consumed: list[int],
    chunk_delay: float = 0.0,
    query: bytes = b"",
    gone: asyncio.Event | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Calls the app directly, streaming `chunks` (`chunk_delay` seconds apart), then reporting a
    disconnected client: at once, or once `gone` is set (until then the client is there)."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if consumed[0] < len(chunks):
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
            consumed[0] += 1
            more = consumed[0] < len(chunks)
            return {"type": "http.request", "body": chunks[consumed[0] - 1], "more_body": more}
        if gone is not None:
            await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/upscale",
        "raw_path": b"/upscale",
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
        "app": app,
    }
    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, body


@contextlib.asynccontextmanager
async def _started(app: FastAPI) -> AsyncIterator[ModelLifecycle]:
    """Runs the app's lifespan and waits for its warm-up: a served app before its first request."""
    async with app.router.lifespan_context(app):
        lifecycle = lifecycle_of(app)
        await anyio.to_thread.run_sync(lifecycle.wait_warm, 30)
        yield lifecycle


def test_upload_limit_is_enforced_while_streaming(make_settings: SettingsFactory) -> None:
    # No Content-Length: the server must count bytes and stop reading soon after the limit.
    app = create_app(make_settings(max_upload_bytes=256 * 1024))
    chunks = [b"\x00" * (64 * 1024)] * 100
    consumed = [0]

    async def scenario() -> int:
        async with _started(app):
            status, _, body = await _asgi_post(app, chunks, {"content-type": "image/png"}, consumed)
            assert b"upload exceeds" in body
            return status

    assert asyncio.run(scenario()) == 413
    assert consumed[0] <= 5


def test_a_trickling_upload_times_out_with_408(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings(upload_timeout_seconds=0.3))
    chunks = [b"\x00" * 16] * 1000  # At 0.05 s a chunk this would take 50 s to arrive.
    consumed = [0]

    async def scenario() -> tuple[int, bytes]:
        async with _started(app):
            status, _, body = await _asgi_post(
                app, chunks, {"content-type": "image/png"}, consumed, chunk_delay=0.05
            )
            return status, body

    status, body = asyncio.run(scenario())
    assert status == 408
    assert json.loads(body)["detail"].startswith("the upload did not arrive within")
    assert consumed[0] < 100


def test_client_gone_while_queued_costs_no_inference(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings(), engine_factory=GatedEngine)

    engines: list[GatedEngine] = []

    async def scenario() -> int:
        async with _started(app) as lifecycle:
            engine = lifecycle.models.default.engine
            engines.append(engine)
            engine.blocking = True
            engine.release.set()
            async with lifecycle.serving.gate.slot():  # someone else's upscale is running
                request = asyncio.create_task(
                    _asgi_post(app, [png_bytes()], {"content-type": "image/png"}, [0])
                )
                while lifecycle.serving.gate.waiting == 0:
                    await asyncio.sleep(0.01)
            status, _, _ = await request
            return status

    assert asyncio.run(scenario()) == 499
    assert engines[0].calls == 0
    assert app.state.context.metrics.requests.labels(model="conv", status="499")._value.get() == 1


def test_bad_quality_is_refused_before_the_upload_is_read(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())
    consumed = [0]

    async def scenario() -> tuple[int, bytes]:
        async with _started(app):
            status, _, body = await _asgi_post(
                app, [png_bytes()], {"content-type": "image/png"}, consumed, query=b"quality=x"
            )
            return status, body

    status, body = asyncio.run(scenario())
    assert status == 422
    assert "quality='x'" in json.loads(body)["detail"]
    assert consumed[0] == 0


def test_uploads_beyond_the_concurrent_limit_get_503(make_settings: SettingsFactory) -> None:
    # One slow upload holds the only upload slot; a second upload is refused before being read.
    app = create_app(make_settings(max_concurrent_uploads=1, upload_timeout_seconds=5))
    slow_consumed, refused_consumed = [0], [0]
    refused_body: list[str] = []

    async def scenario() -> tuple[int, dict[str, str], int]:
        async with _started(app):
            slow = asyncio.create_task(
                _asgi_post(app, [b"\x00"] * 20, {"content-type": "image/png"}, slow_consumed, 0.05)
            )
            while slow_consumed[0] == 0:
                await asyncio.sleep(0.01)
            status, headers, body = await _asgi_post(
                app, [png_bytes()], {"content-type": "image/png"}, refused_consumed
            )
            refused_body.append(json.loads(body)["detail"])
            slow_status, _, _ = await slow
            return status, headers, slow_status

    status, headers, slow_status = asyncio.run(scenario())
    assert (status, headers["retry-after"]) == (503, "5")
    assert "too many uploads" in refused_body[0]
    assert refused_consumed[0] == 0
    assert slow_status == 415  # the slow one was read to the end (and is no image)


def test_client_gone_during_the_upscale_stops_it(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 48x48 is nine 16-pixel fitted tiles. The client leaves while the first call is in the
    # model; the tiles not yet handed to the model are never run.
    import service.api.routes

    monkeypatch.setattr(service.api.routes, "DISCONNECT_POLL_SECONDS", 0.01)
    app = create_app(make_settings(), engine_factory=GatedEngine)
    engines: list[GatedEngine] = []

    async def scenario() -> int:
        async with _started(app) as lifecycle:
            engine = lifecycle.models.default.engine
            engines.append(engine)
            engine.blocking = True
            gone = asyncio.Event()
            request = asyncio.create_task(
                _asgi_post(app, [png_bytes(48, 48)], {"content-type": "image/png"}, [0], gone=gone)
            )
            await anyio.to_thread.run_sync(engine.entered.wait, 30)
            gone.set()
            # The watcher polls every 10 ms: give it a few polls before the tile completes.
            await asyncio.sleep(0.2)
            engine.release.set()
            status, _, _ = await request
            return status

    with caplog.at_level("INFO", logger="service"):
        assert asyncio.run(scenario()) == 499
    assert engines[0].calls == 1
    assert app.state.context.metrics.requests.labels(model="conv", status="499")._value.get() == 1
    assert "POST /upscale abandoned: the client disconnected" in caplog.text


def test_an_upscale_cancelled_while_its_thread_runs_stops_at_its_next_tile(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn cancels the requests left after the drain: the cancelled request lets its slot
    and its thread's token go at once, so its thread must stop before its next tile rather
    than run on to the end beside the work that takes them."""
    from service.core.choice import Fixed

    finished = threading.Event()
    run = Fixed.run

    def run_then_tell(self: Fixed, *args: Any, **kwargs: Any) -> Any:
        try:
            return run(self, *args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(Fixed, "run", run_then_tell)
    app = create_app(make_settings(), engine_factory=GatedEngine)
    engines: list[GatedEngine] = []

    async def scenario() -> None:
        async with _started(app) as lifecycle:
            engine = lifecycle.models.default.engine
            engines.append(engine)
            engine.blocking = True
            client_stays = asyncio.Event()  # never set: only the cancellation ends the request
            request = asyncio.create_task(
                _asgi_post(
                    app, [png_bytes(48, 48)], {"content-type": "image/png"}, [0], gone=client_stays
                )
            )
            await anyio.to_thread.run_sync(engine.entered.wait, 30)
            request.cancel()  # as uvicorn's shutdown does, past its graceful timeout
            with contextlib.suppress(asyncio.CancelledError):
                await request
            engine.release.set()
            assert await anyio.to_thread.run_sync(finished.wait, 30)

    asyncio.run(scenario())
    assert engines[0].calls == 1  # of 16 tiles: it stopped at the first after the cancel


# --- Metrics and documentation -------------------------------------------------------------------


def test_metrics_report_requests_latency_and_pixels(client: TestClient) -> None:
    assert _post_file(client, png_bytes(5, 3)).status_code == 200
    assert _post_file(client, b"not an image").status_code == 415
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'upscaler_requests_total{model="conv",status="200"} 1.0' in text
    assert 'upscaler_requests_total{model="conv",status="415"} 1.0' in text
    assert 'upscaler_request_seconds_count{model="conv"} 2.0' in text
    assert 'upscaler_inference_seconds_count{model="conv"} 1.0' in text
    assert "upscaler_inflight 0.0" in text
    assert "upscaler_queue_depth 0.0" in text
    assert 'upscaler_pixels_total{model="conv",side="input"} 15.0' in text
    assert 'upscaler_pixels_total{model="conv",side="output"} 240.0' in text
    assert 'upscaler_provider_info{fallback="false",provider="CPUExecutionProvider"} 1.0' in text


def test_metrics_registries_are_per_app(make_settings: SettingsFactory) -> None:
    first, second = create_app(make_settings()), create_app(make_settings())
    assert first.state.context.metrics.registry is not second.state.context.metrics.registry


def test_openapi_documents_the_upload_and_errors(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/upscale"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(operation["requestBody"]["content"])
    assert {"200", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "image/png" in operation["responses"]["200"]["content"]
    (quality,) = (p for p in operation["parameters"] if p["name"] == "quality")
    assert quality["schema"]["enum"] == ["standard", "max"]
    assert client.get("/docs").status_code == 200
