"""The page behind a path prefix: a proxy serving the service at /upscaler/ (`uvicorn
--root-path /upscaler`). Ray Serve's `route_prefix` is the other host: tests/service/entry/
test_serve.py."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from tests.service.helpers import png_bytes
from tests.web.live import LiveServer, PrefixProxy, tiny_settings

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips, or fails in CI
    expect = None

PREFIX = "/upscaler"


@pytest.fixture(scope="module")
def prefixed(web_models: dict[str, Path]) -> Iterator[tuple[str, LiveServer]]:
    """The page's URL through the proxy, and the service behind it."""
    app = create_app(tiny_settings(web_models["fast"]))
    with LiveServer(app, root_path=PREFIX) as service:
        proxy = PrefixProxy(service.url, PREFIX)
        with LiveServer(proxy, ready_path=f"{PREFIX}/readyz") as front:
            yield f"{front.url}{PREFIX}/", service


def test_the_page_works_behind_the_prefix(
    page: Any, prefixed: tuple[str, LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    url, service = prefixed
    caplog.set_level(logging.INFO, logger="service.access")
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    before = service.metric("upscaler_requests_total", model="fast", status="200")
    page.goto(url)
    expect(page.locator("#status")).to_have_text(re.compile(r"^Ready · "))
    expect(page.get_by_label("Model")).to_have_value("fast")  # GET models answered
    page.set_input_files(
        "#file-input", files=[{"name": "p.png", "mimeType": "image/png", "buffer": png_bytes(8, 6)}]
    )
    entry = page.locator("#queue .item").filter(has_text="p.png")
    expect(entry).to_have_attribute("data-state", "done")
    assert asked and all(
        request.startswith(url) or request.startswith("blob:") for request in asked
    )
    assert f"{url}upscale" in asked and f"{url}readyz" in asked
    # The service counted and logged the upscale under its own path, though it came prefixed.
    after = service.metric("upscaler_requests_total", model="fast", status="200")
    assert after == before + 1
    lines = [record.access for record in caplog.records if record.name == "service.access"]
    posts = [line for line in lines if line["method"] == "POST"]
    assert [(post["path"], post["status"]) for post in posts] == [("/upscale", 200)]
