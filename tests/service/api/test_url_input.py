"""`{"image_url": ...}` bodies on POST /upscale and POST /jobs, against a real server; the
image comes from a local server on 127.0.0.1, and nothing else is reached (`loopback_only`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.core import urlfetch
from tests.service.api.jobs_helpers import TERMINAL, job_models, wait_job
from tests.service.helpers import png_bytes
from tests.service.network_guard import (  # noqa: F401 (the fixture)
    local_http,
    loopback_only,
    send,
    test_resolver,
)
from tests.web.live import LiveServer, time_limit, tiny_settings

IMAGE = png_bytes(12, 10, seed=4)


@pytest.fixture
def service(
    tmp_path: Path,
    loopback_only: list[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[LiveServer, str]]:
    """The service fetching by URL (127.0.0.0/8 allowed), and a local image server."""
    monkeypatch.setattr(urlfetch, "system_resolve", test_resolver)
    settings = tiny_settings(
        None,
        models_dir=job_models(tmp_path / "models"),
        default_model="fast",
        jobs_dir=tmp_path / "jobs",
        url_input=True,
        url_allow_networks="127.0.0.0/8",
    )
    routes: dict[str, Any] = {
        "/photo.png": lambda h: send(h, 200, IMAGE, Content_Type="image/png"),
        "/big.png": lambda h: send(h, 200, b"x" * 40_000),
        "/to-metadata": lambda h: send(h, 302, Location="http://metadata.test/latest/"),
    }
    with time_limit(60), local_http(routes) as images, LiveServer(create_app(settings)) as live:
        yield live, images


def _post(url: str, body: Any) -> httpx.Response:
    return httpx.post(url, json=body, timeout=30)


def test_upscale_fetches_the_image_and_answers_as_for_an_upload(
    service: tuple[LiveServer, str],
) -> None:
    live, images = service
    fetched = _post(f"{live.url}/upscale", {"image_url": f"{images}/photo.png"})
    uploaded = httpx.post(
        f"{live.url}/upscale", content=IMAGE, headers={"Content-Type": "image/png"}
    )
    assert fetched.status_code == 200 and fetched.content == uploaded.content


def test_a_job_takes_an_image_url(service: tuple[LiveServer, str]) -> None:
    live, images = service
    job = _post(f"{live.url}/jobs", {"image_url": f"{images}/photo.png"}).json()
    assert job["input"] == {"width": 12, "height": 10, "bytes": len(IMAGE)}
    ended = wait_job(live, job["id"], lambda j: j["status"] in TERMINAL)
    assert ended["status"] == "succeeded"


def test_refusals_are_4xx_naming_the_rule(service: tuple[LiveServer, str]) -> None:
    live, images = service
    cases = [
        ({"image_url": "http://metadata.test/latest/meta-data"}, 422, "link-local"),
        ({"image_url": f"{images}/to-metadata"}, 422, "link-local"),
        ({"image_url": "file:///etc/passwd"}, 422, "only http and https"),
        ({"image_url": f"{images}/big.png"}, 413, "exceeds the limit of 32768 bytes"),
        ({"image_url": f"{images}/missing.png"}, 422, "answered HTTP 404"),
        ({"url": "x"}, 422, '{"image_url": "https://..."}'),
        ({"image_url": "http://[::1"}, 422, "not a valid URL"),
        ({"image_url": "http://[x]/"}, 422, "not a valid URL"),
        (b"[" * 5000, 422, "not valid JSON"),  # nested past the recursion limit
        (b"9" * 5000, 422, "not valid JSON"),  # past the 4300 digits of an int
    ]
    for body, status, detail in cases:
        for path in ("/upscale", "/jobs"):
            if isinstance(body, bytes):
                headers = {"Content-Type": "application/json"}
                answer = httpx.post(f"{live.url}{path}", content=body, headers=headers)
            else:
                answer = _post(f"{live.url}{path}", body)
            assert answer.status_code == status, (path, body, answer.text)
            assert detail in answer.json()["detail"]


def test_url_input_is_off_unless_enabled(tmp_path: Path) -> None:
    settings = tiny_settings(None, models_dir=job_models(tmp_path / "models"), default_model="fast")
    with time_limit(60), LiveServer(create_app(settings)) as live:
        answer = _post(f"{live.url}/upscale", {"image_url": "http://example.test/a.png"})
    assert answer.status_code == 415
    assert "UPSCALER_URL_INPUT" in answer.json()["detail"]


@pytest.mark.parametrize("enabled", [False, True])
def test_the_api_document_offers_the_json_body_only_when_enabled(enabled: bool) -> None:
    settings = tiny_settings(None, url_input=enabled)
    paths = create_app(settings).openapi()["paths"]
    for path, method in (("/upscale", "post"), ("/jobs", "post"), ("/jobs/{job_id}", "put")):
        content = paths[path][method]["requestBody"]["content"]
        assert ("application/json" in content) is enabled, path
        assert {"multipart/form-data", "image/*"} <= set(content)
