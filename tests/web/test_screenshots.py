"""The docs' screenshot script runs through its three states (tiny model, temporary folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from tests.service.helpers import png_bytes
from tests.web.live import LiveServer
from tests.web.screenshots import take_screenshots


def test_screenshot_script_captures_every_state(
    browser: Any, server: LiveServer, tmp_path: Path
) -> None:
    paths = take_screenshots(browser, server.url, png_bytes(24, 24), tmp_path)
    assert [p.name for p in paths] == ["page-empty.png", "page-compare.png", "page-error.png"]
    for path in paths:
        assert Image.open(path).width == 1200
