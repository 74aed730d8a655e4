"""Screenshots of the web page for the docs: empty, comparing, error.

    .venv/bin/python -m tests.web.screenshots            # writes docs/images/page-*.png

Serves the shipped model (`models/edsr_x4.onnx`, CPU) with the default limits and upscales
Set14's monarch downscaled 4x (from the shared benchmark sets; a synthetic picture when they are
absent), so the pictures show what a user sees. `tests/web/test_screenshots.py` runs the same
steps with the tiny test model into a temporary folder, so this script keeps working.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.images import SHARED_BENCH, synthetic_photo
from service.api.app import create_app
from service.config import Settings
from tests.service.helpers import CPU_ONLY
from tests.web.live import CHROMIUM, CHROMIUM_ARGS, LiveServer

ROOT = Path(__file__).resolve().parents[2]
NOT_AN_IMAGE = b"Quarterly report\n" * 20


def sample_photo(size: tuple[int, int] = (192, 128)) -> bytes:
    """A PNG of `size`: Set14's monarch downscaled 4x, or a synthetic picture without it."""
    source = SHARED_BENCH / "Set14" / "monarch.png"
    if source.is_file():
        image = Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    else:
        image = Image.fromarray(synthetic_photo(size[1], size[0], seed=2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def take_screenshots(browser: Any, url: str, photo: bytes, out: Path) -> list[Path]:
    """Drives the page at `url` through its three states and saves one PNG of each."""
    out.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1200, "height": 860}, locale="en-GB")
    context.set_default_timeout(60_000)
    paths = [out / f"page-{name}.png" for name in ("empty", "compare", "error")]
    try:
        page = context.new_page()
        page.goto(url)
        page.locator("#status[data-state=ready]").wait_for()
        page.locator("#model-field").wait_for()  # the picker, filled from GET /models
        page.screenshot(path=paths[0])

        page.set_input_files(
            "#file-input",
            files=[{"name": "monarch.png", "mimeType": "image/png", "buffer": photo}],
        )
        page.locator("#queue .item[data-state=done]").wait_for()
        page.locator("#split").focus()
        for _ in range(8):
            page.keyboard.press("ArrowLeft")
        page.locator("#result").scroll_into_view_if_needed()
        page.screenshot(path=paths[1], full_page=True)

        page.reload()
        page.set_input_files(
            "#file-input",
            files=[
                {"name": "report.png", "mimeType": "image/png", "buffer": NOT_AN_IMAGE},
                {"name": "panorama.png", "mimeType": "image/png", "buffer": _huge_png()},
            ],
        )
        page.locator("#queue .item[data-state=failed]").wait_for()
        page.locator("#queue .item[data-state=rejected]").wait_for()
        page.screenshot(path=paths[2])
    finally:
        context.close()
    return paths


def _huge_png() -> bytes:
    # 4096 x 1200 = 4.9 MP, over the default 2048² limit, in a few kilobytes.
    rows = np.linspace(30, 220, 4096, dtype=np.uint8)[None, :].repeat(1200, axis=0)
    buffer = io.BytesIO()
    Image.fromarray(rows).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "edsr_x4.onnx")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    settings = Settings(model_path=args.model, providers=CPU_ONLY)
    with LiveServer(create_app(settings)) as live, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for path in take_screenshots(browser, live.url, sample_photo(), args.out):
                print(path)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
