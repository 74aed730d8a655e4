"""Request IDs and logs, API keys, CORS and the drain flag, in process."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.logs import JsonFormatter
from tests.service.helpers import png_bytes, wait_until_ready

SettingsFactory = Callable[..., Settings]
KEY = "k3y-for-tests"


def _post(client: TestClient, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(
        "/upscale", content=png_bytes(), headers={"Content-Type": "image/png", **(headers or {})}
    )


# --- Request IDs and logs ---


def test_a_sane_client_request_id_is_echoed(client: TestClient) -> None:
    response = _post(client, {"X-Request-ID": "abc.DEF_1-2"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "abc.DEF_1-2"


@pytest.mark.parametrize("sent", [None, "x" * 65, "has space", "semi;colon"])
def test_otherwise_one_is_generated_errors_included(client: TestClient, sent: str | None) -> None:
    headers = {"X-Request-ID": sent} if sent else {}
    response = client.post("/upscale?quality=bad", content=b"", headers=headers)
    assert response.status_code == 422
    generated = response.headers["x-request-id"]
    assert generated != sent and len(generated) == 32 and int(generated, 16) >= 0


def test_every_log_line_of_a_request_carries_its_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        _post(client, {"X-Request-ID": "trace-me"})
    mine = [record for record in caplog.records if getattr(record, "request_id", None)]
    assert mine and {record.request_id for record in mine} == {"trace-me"}
    (access,) = [record for record in mine if record.name == "service.access"]
    fields = access.access
    assert (fields["method"], fields["path"], fields["status"]) == ("POST", "/upscale", 200)
    assert fields["request_bytes"] == len(png_bytes()) and fields["response_bytes"] > 0
    assert fields["model"] == "conv" and len(fields["model_version"]) == 12
    assert {"decode_ms", "model_ms", "encode_ms", "duration_ms"} <= set(fields)


def test_json_format_is_one_object_per_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        _post(client, {"X-Request-ID": "json-1"})
    (access,) = [record for record in caplog.records if record.name == "service.access"]
    line = JsonFormatter().format(access)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["request_id"] == "json-1" and entry["logger"] == "service.access"
    assert entry["status"] == 200 and entry["model"] == "conv" and "model_ms" in entry


# --- API keys ---


@pytest.fixture
def keyed(make_settings: SettingsFactory) -> Settings:
    return make_settings(api_keys=f"other-key,{KEY}")


async def _refused_before_reading(settings: Settings, headers: dict[str, str]) -> httpx.Response:
    read = []

    async def body() -> AsyncIterator[bytes]:
        read.append(True)
        yield png_bytes()

    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post(
            "/upscale", content=body(), headers={"Content-Type": "image/png", **headers}
        )
    assert not read, "the body was read before the key was checked"
    return response


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}]
)
def test_upscale_without_a_valid_key_is_401_before_the_body(keyed: Settings, headers) -> None:
    import anyio

    response = anyio.run(_refused_before_reading, keyed, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in response.json()["detail"]


def test_the_right_key_opens_upscale_and_models_and_probes_stay_open(keyed: Settings) -> None:
    with TestClient(create_app(keyed)) as client:
        wait_until_ready(client)
        auth = {"Authorization": f"Bearer {KEY}"}
        assert _post(client, auth).status_code == 200
        assert client.get("/models").status_code == 401
        assert client.get("/models", headers=auth).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path


def test_readyz_describes_the_models_to_key_holders_only(keyed: Settings) -> None:
    with TestClient(create_app(keyed)) as client:
        wait_until_ready(client)
        assert client.get("/readyz").json() == {"status": "ready"}
        described = client.get("/readyz", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert described["status"] == "ready" and described["models"]


def test_hashed_keys_file_and_protected_metrics(
    make_settings: SettingsFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys"
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    keys.write_text(f"# the team's key\n{digest}\n")
    settings = make_settings(api_keys_file=keys, protect_metrics=True)
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/readyz").status_code == 200
    assert KEY not in caplog.text and KEY not in repr(settings)


def test_openapi_declares_the_bearer_scheme(keyed: Settings) -> None:
    schema = create_app(keyed).openapi()
    scheme = schema["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert schema["paths"]["/upscale"]["post"]["security"] == [{"ApiKey": []}]
    assert "401" in schema["paths"]["/upscale"]["post"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert "security" not in schema["paths"]["/metrics"]["get"], "metrics stay open by default"


def test_openapi_claims_no_authentication_while_keys_are_off(
    make_settings: SettingsFactory,
) -> None:
    schema = TestClient(create_app(make_settings())).get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "security" not in operation, f"{method.upper()} {path}"
            assert "401" not in operation["responses"], f"{method.upper()} {path}"


def test_openapi_puts_metrics_behind_the_key_when_they_are(keyed: Settings) -> None:
    settings = keyed.model_copy(update={"protect_metrics": True})
    metrics = create_app(settings).openapi()["paths"]["/metrics"]["get"]
    assert metrics["security"] == [{"ApiKey": []}] and "401" in metrics["responses"]


# --- CORS ---


def test_cors_headers_only_for_configured_origins(make_settings: SettingsFactory) -> None:
    allowed = "https://app.example.com"
    settings = make_settings(cors_origins=allowed)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        response = _post(client, {"Origin": allowed})
        assert response.headers["access-control-allow-origin"] == allowed
        exposed = response.headers["access-control-expose-headers"]
        assert "Server-Timing" in exposed and "X-Upscaler-Model-Version" in exposed
        preflight = client.options(
            "/upscale",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        other = _post(client, {"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_by_default(client: TestClient) -> None:
    response = _post(client, {"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers


# --- Drain (the flag; the real process is in test_drain.py) ---


def test_draining_turns_readyz_and_new_uploads_into_503(client: TestClient) -> None:
    client.app.state.context.lifecycle.drain.begin()
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (503, "draining")
    refused = _post(client)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert "shutting down" in refused.json()["detail"]
    assert client.get("/healthz").status_code == 200
