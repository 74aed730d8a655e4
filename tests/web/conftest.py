"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, the real app on
127.0.0.1 with a tiny model, and a bound on every test's time.

The browser is `/usr/lib/chromium/chromium` from the `chromium` package (`apt-get install
chromium`), never one downloaded by `playwright install`. It resolves no host name but
localhost and 127.0.0.1, so nothing it does leaves the machine. Without it the tests are
skipped on a workstation and fail in CI (CI=true), where a missing browser is a set-up error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from tests.service.helpers import build_model
from tests.web.live import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LiveServer,
    slow_model,
    time_limit,
    tiny_settings,
)

#: Longest any browser test may take, set-up included.
TEST_SECONDS = 90
#: Longest Playwright waits for one action or expectation.
ACTION_MS = 15_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fails a test that runs past TEST_SECONDS instead of hanging the suite."""
    with time_limit(TEST_SECONDS):
        yield


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=30_000
        )
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context(
        accept_downloads=True, viewport={"width": 1100, "height": 900}, locale="en-GB"
    )
    context.set_default_timeout(ACTION_MS)
    yield context
    context.close()


@pytest.fixture
def page(context: Any) -> Any:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="session")
def web_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("web-models")
    return {
        "fast": build_model(folder / "fast.onnx"),
        "slow": build_model(folder / "slow.onnx", seed=3),
    }


@pytest.fixture(scope="session")
def server(web_models: dict[str, Path]) -> Iterator[LiveServer]:
    """The service with the page, a tiny fast model and small limits (see `TEST_LIMITS`)."""
    with LiveServer(create_app(tiny_settings(web_models["fast"]))) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(web_models: dict[str, Path]) -> Iterator[LiveServer]:
    """The service with the page, asking for an API key (`KEY`) on its calls."""
    with LiveServer(create_app(tiny_settings(web_models["fast"], api_keys=KEY))) as live:
        yield live


KEY = "page-test-key"

#: The two models of `models_server`, as their cards describe them; the first is the default.
PICKER_MODELS = {
    "sharp": {"description": "Tiny test model A, for clean downscales", "degradation": "bicubic"},
    "gentle": {"description": "Tiny test model B, for noisy photos", "degradation": "realistic"},
}


@pytest.fixture(scope="module")
def models_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A service with two tiny models in its models folder, each with a card; `sharp` is the
    default (listed second by name, first by GET /models)."""
    folder = tmp_path_factory.mktemp("picker-models")
    for seed, (name, card) in enumerate(PICKER_MODELS.items()):
        build_model(folder / f"{name}.onnx", seed=seed)
        (folder / f"{name}.json").write_text(json.dumps(card), encoding="utf-8")
    settings = tiny_settings(None, models_dir=folder, default_model="sharp")
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def slow_server(web_models: dict[str, Path]) -> Iterator[tuple[LiveServer, Any]]:
    """A service whose model pauses 0.2 s a tile, with one slot and no queue (busy = 503)."""
    settings = tiny_settings(web_models["slow"], max_queue=0)
    app = create_app(settings)
    with slow_model(web_models["slow"], delay=0.2) as slow, LiveServer(app) as live:
        yield live, slow
