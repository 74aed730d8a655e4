"""The page on a service that keeps jobs, in a real browser: real progress and the tiles as they
finish, Stop as a cancel, and a reload that picks the job up instead of starting over."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from tests.web.live import LiveServer, slow_model, tiny_settings
from tests.web.test_page import expect, file_payload, item, pick, rgb_png, wait_done

#: Seconds per tile: a 64x64 image (25 tiles) takes about 4 s, time to watch it.
DELAY = 0.15


@pytest.fixture(scope="module")
def jobs_live(
    web_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, Any]]:
    settings = tiny_settings(web_models["slow"], jobs_dir=tmp_path_factory.mktemp("page-jobs"))
    with slow_model(web_models["slow"], DELAY) as slow, LiveServer(create_app(settings)) as live:
        yield live, slow


def _submits(page: Any) -> list[str]:
    """The URLs of the uploads the page sends (job submits and direct upscales)."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.method in ("POST", "PUT") else None)
    return sent


def _job_ids(page: Any) -> list[str]:
    ids: list[str] = []
    page.on(
        "response",
        lambda r: (
            ids.append(r.json()["id"]) if r.url.endswith("/jobs") and r.status == 202 else None
        ),
    )
    return ids


def test_a_job_shows_its_progress_and_tiles_then_its_result(
    page: Any, jobs_live: tuple[LiveServer, Any]
) -> None:
    live, _ = jobs_live
    page.goto(live.url)
    sent = _submits(page)
    pick(page, file_payload("big.png", rgb_png(64, 64)))
    entry = item(page, "big.png")
    status = entry.locator(".item-status")
    expect(status).to_have_text(re.compile(r"Upscaling: tile \d+ of 25 · about \d+ s left"))
    bar = entry.locator("progress")
    started = bar.evaluate("bar => bar.value")
    page.wait_for_function(
        "([bar, start]) => bar.value > start + 0.1", arg=[bar.element_handle(), started]
    )
    # The finished tiles, drawn over the blurred input.
    expect(entry.locator("img.live-sharp")).to_have_attribute("src", re.compile("^blob:"))
    wait_done(page, "big.png")
    expect(entry.locator(".live")).to_have_count(0)
    expect(page.locator("#result-title")).to_have_text("big_x4.png")
    assert sent == [f"{live.url}/jobs"]


def test_stop_cancels_the_job_on_the_service(page: Any, jobs_live: tuple[LiveServer, Any]) -> None:
    live, _ = jobs_live
    page.goto(live.url)
    ids = _job_ids(page)
    pick(page, file_payload("stop.png", rgb_png(64, 64, seed=1)))
    entry = item(page, "stop.png")
    expect(entry.locator(".item-status")).to_contain_text("Upscaling: tile")
    entry.get_by_role("button", name="Stop").click()
    expect(entry).to_have_attribute("data-state", "stopped")
    job = httpx.get(f"{live.url}/jobs/{ids[0]}", timeout=10).json()
    assert job["status"] == "canceled"
    assert job["progress"]["tiles_done"] < 25


def test_a_reload_picks_the_job_up_again(page: Any, jobs_live: tuple[LiveServer, Any]) -> None:
    live, _ = jobs_live
    page.goto(live.url)
    sent = _submits(page)
    ids = _job_ids(page)
    pick(page, file_payload("reload.png", rgb_png(64, 48, seed=2)))
    expect(item(page, "reload.png").locator(".item-status")).to_contain_text("Upscaling: tile")
    page.reload()
    entry = item(page, "reload.png")
    expect(entry).to_have_attribute("data-state", "running")
    wait_done(page, "reload.png")
    assert sent == [f"{live.url}/jobs"]  # picked up, not sent again
    expect(page.locator("#result-title")).to_have_text("reload_x4.png")
    # The input came back from the browser's storage: the comparison has it.
    natural = page.locator("#before").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [64, 48]
    # Done and downloaded: the page forgot the job and the service deleted it.
    assert page.evaluate("() => localStorage.getItem('edsr-upscaler.jobs')") == "[]"
    deadline = time.monotonic() + 10  # the page deletes it without waiting for the answer
    while httpx.get(f"{live.url}/jobs/{ids[0]}", timeout=10).status_code != 404:
        assert time.monotonic() < deadline, "the page did not delete the finished job"
        time.sleep(0.05)
