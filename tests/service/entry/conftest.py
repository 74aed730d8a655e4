"""Fixtures of the CLI tests: the real service on a free loopback port, a tiny model, images."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.api.app import create_app
from tests.service.helpers import build_model, png_bytes
from tests.web.live import LiveServer, time_limit, tiny_settings

TEST_SECONDS = 60


@pytest.fixture
def bounded() -> Iterator[None]:
    """Each CLI test within TEST_SECONDS (`pytestmark` of test_client.py)."""
    with time_limit(TEST_SECONDS):
        yield


@pytest.fixture(scope="session")
def client_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("client-model") / "tiny.onnx")


@pytest.fixture(scope="session")
def service_url(client_model: Path) -> Iterator[str]:
    with LiveServer(create_app(tiny_settings(client_model))) as live:
        yield live.url


#: The key `keyed_service_url` asks for.
KEY = "cli-test-key"


@pytest.fixture(scope="session")
def keyed_service_url(client_model: Path) -> Iterator[str]:
    with LiveServer(create_app(tiny_settings(client_model, api_keys=KEY))) as live:
        yield live.url


@pytest.fixture
def local_env(client_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`--local` settings for the tiny model, as the service reads them (UPSCALER_*)."""
    for name, value in {
        "UPSCALER_PROVIDERS": "cpu",
        "UPSCALER_TILE_SIZE": "16",
        "UPSCALER_TILE_OVERLAP": "2",
        "UPSCALER_INTRA_OP_THREADS": "1",
        "UPSCALER_MAX_INPUT_PIXELS": str(128 * 128),
    }.items():
        monkeypatch.setenv(name, value)
    return client_model


@pytest.fixture
def photos(tmp_path: Path) -> Callable[..., Path]:
    """Writes a folder of images, `photos({"a.png": (w, h), "sub/b.png": ...})`, plus
    `bad.png` (not an image) and `notes.txt` (not an image file name)."""

    def make(sizes: dict[str, tuple[int, int]]) -> Path:
        folder = tmp_path / "in"
        for seed, (name, (width, height)) in enumerate(sizes.items()):
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(width, height, seed=seed))
        (folder / "bad.png").write_bytes(b"not an image at all")
        (folder / "notes.txt").write_text("not an image file name either")
        return folder

    return make
