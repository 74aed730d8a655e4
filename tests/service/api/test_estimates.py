"""Time estimates: the pace measured at warm-up, published for clients, and the bounded wait of
POST /upscale (503 with an honest Retry-After)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from tests.service.api.test_app import GatedEngine, _assert_error, _post_file, _wait_for
from tests.service.helpers import lifecycle_of, png_bytes, wait_until_ready

SettingsFactory = Callable[..., Settings]
#: A pace that makes an 8 x 8 upload (64 pixels, one tile) an estimated 64 s of model time.
SLOW_PACE = 1e6


def test_models_publish_the_pace_and_the_wait(client: TestClient) -> None:
    body = client.get("/models").json()
    (model,) = body["models"]
    assert model["seconds_per_megapixel"] > 0
    assert body["estimated_wait_seconds"] == 0, "an idle service: no wait"
    ready = client.get("/readyz").json()
    assert ready["models"][0]["seconds_per_megapixel"] == model["seconds_per_megapixel"]
    assert (ready["estimated_wait_seconds"], ready["max_wait_seconds"]) == (0, 120)


def test_a_wait_past_max_wait_seconds_is_refused_with_when_to_come_back(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(max_concurrency=1, max_queue=8, max_wait_seconds=30)
    with TestClient(create_app(settings, engine_factory=GatedEngine)) as client:
        wait_until_ready(client)
        serving = lifecycle_of(client.app).serving
        engine = serving.models.default.engine
        engine.info = dataclasses.replace(engine.info, seconds_per_megapixel=SLOW_PACE)
        engine.blocking = True
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(_post_file, client, png_bytes(8, 8))
            assert engine.entered.wait(timeout=30)
            _wait_for(lambda: client.get("/models").json()["estimated_wait_seconds"] > 60)

            refused = _post_file(client, png_bytes(8, 8))
            _assert_error(refused, 503, "more than this service's limit of 30 s")
            # 64 s of work less the moments it has run, of which 30 s may be waited.
            assert 30 <= int(refused.headers["retry-after"]) <= 34
            assert serving.gate.waiting == 0, "refused, not queued"

            engine.release.set()
            assert running.result().status_code == 200
