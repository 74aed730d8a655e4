"""What the page says before sending (how long an image will take) and the metadata choice, in
a real browser against the real service."""

from __future__ import annotations

import io
import math
from typing import Any

import httpx
from PIL import ExifTags, Image

from tests.service.helpers import encode, noise_image
from tests.web.live import LiveServer
from tests.web.test_page import (
    download,
    file_payload,
    item,
    pick,
    rgb_png,
    upscale_requests,
    wait_done,
)

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips, or fails in CI
    expect = None


def _about(seconds: float) -> str:
    return f"about {max(1, math.ceil(seconds))} s"


def test_a_waiting_image_says_how_long_the_model_will_take(
    page: Any, slow_server: tuple[LiveServer, Any]
) -> None:
    live, _ = slow_server
    (model,) = httpx.get(f"{live.url}/models", timeout=10).json()["models"]
    pace = model["seconds_per_megapixel"]  # timed at the service's warm-up
    page.goto(live.url)
    expect(page.get_by_label("Model")).to_have_value("slow")
    # The first runs for seconds (0.2 s a tile), so the second waits, estimated.
    pick(
        page,
        file_payload("first.png", rgb_png(64, 64)),
        file_payload("second.png", rgb_png(40, 30)),
    )
    waiting = item(page, "second.png").locator(".item-dims")
    expect(waiting).to_contain_text("40×30 → 160×120 · ")
    expect(waiting).to_contain_text(f"KiB · {_about(pace * 1200 / 1e6)}")
    page.get_by_role("radio", name="Max").click()  # 8 model runs
    expect(waiting).to_contain_text(_about(8 * pace * 1200 / 1e6))


def test_keeping_metadata_is_sent_remembered_and_kept(page: Any, server: LiveServer) -> None:
    page.goto(server.url)
    requests = upscale_requests(page)
    page.get_by_role("radio", name="Keep").click()
    page.reload()
    expect(page.locator("input[name=metadata][value=keep]")).to_be_checked()
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {1: "N", 2: (48.0, 51.0, 24.0)}
    photo = encode(Image.fromarray(noise_image(8, 8)), "JPEG", exif=exif.tobytes())
    pick(page, file_payload("geo.jpg", photo, "image/jpeg"))
    wait_done(page, "geo.jpg")
    assert requests[0].url.endswith("/upscale?metadata=keep")
    _, data = download(page, page.locator("#download"))
    kept = Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert kept == {1: "N", 2: (48.0, 51.0, 24.0)}
