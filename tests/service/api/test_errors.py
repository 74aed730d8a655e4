"""The one JSON error shape, for domain errors and FastAPI's own validation errors alike."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.errors import install_error_handlers, status_for
from service.exceptions import InvalidParameterError, NotAcceptableError, UpscalerError


def test_domain_errors_map_to_their_status() -> None:
    assert status_for(InvalidParameterError("x")) == 422
    assert status_for(NotAcceptableError("x")) == 406
    assert status_for(UpscalerError("not in the table")) == 500


def test_validation_errors_become_one_detail_string() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/probe")
    async def probe(count: int) -> dict[str, int]:
        return {"count": count}

    with TestClient(app) as client:
        response = client.get("/probe", params={"count": "many"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert detail.startswith("query 'count': ")
