"""Webhooks against a real server: signatures checked by a receiver on 127.0.0.1 as the
Standard Webhooks specification says, retries of the terminal event, refusals at submit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from service.core.jobs.service import WEBHOOK_CONCURRENCY
from tests.service.api.jobs_helpers import TERMINAL, job_models, submit, wait_job
from tests.service.helpers import png_bytes
from tests.service.network_guard import local_http, loopback_only, send  # noqa: F401 (fixture)
from tests.web.live import LiveServer, time_limit, tiny_settings

SECRET = "whsec_" + base64.b64encode(b"sixteen byte key").decode()


def verify(headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, written from the specification (not from the service's code)."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(f"v1,{expected}", sig) for sig in headers["webhook-signature"].split()
    )


class Receiver:
    """Records deliveries and answers each with the next scripted status (200 once done)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, handler: Any) -> None:
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        with self.lock:
            self.received.append(({k.lower(): v for k, v in handler.headers.items()}, body))
            status = self.statuses.pop(0) if self.statuses else 200
        send(handler, status)


@pytest.fixture
def service(tmp_path: Path, loopback_only: list[str]) -> Iterator[LiveServer]:  # noqa: F811
    """The service delivering webhooks (127.0.0.0/8 allowed); nothing but 127.0.0.1 is reached."""
    settings = tiny_settings(
        None,
        models_dir=job_models(tmp_path / "models"),
        default_model="fast",
        jobs_dir=tmp_path / "jobs",
        webhook_secret=SECRET,
        webhook_retry_seconds=0.05,
        webhook_max_attempts=4,
        url_allow_networks="127.0.0.0/8",
    )
    with time_limit(60), LiveServer(create_app(settings)) as live:
        yield live


def _deliveries(live: LiveServer, job_id: str, event: str) -> dict[str, Any]:
    job = wait_job(
        live,
        job_id,
        lambda j: (
            j["status"] in TERMINAL
            and j["webhook"]["deliveries"].get(event, {}).get("status") in ("delivered", "failed")
        ),
    )
    return job["webhook"]["deliveries"][event]


def test_deliveries_are_signed_as_standard_webhooks(service: LiveServer) -> None:
    receiver = Receiver([])
    with local_http({"/hook": receiver}) as url:
        job = submit(service, png_bytes(), params={"webhook": f"{url}/hook"}).json()
        assert _deliveries(service, job["id"], "completed")["status"] == "delivered"
    assert job["webhook"]["events"] == ["start", "completed"]
    kinds = []
    for headers, body in receiver.received:
        assert verify(headers, body), headers
        assert headers["content-type"] == "application/json"
        message = json.loads(body)
        assert message["data"]["id"] == job["id"]
        kinds.append((message["type"], message["data"]["status"]))
    assert kinds == [("job.start", "running"), ("job.completed", "succeeded")]
    tampered = receiver.received[-1][1].replace(b"succeeded", b"failed!!!")
    assert not verify(receiver.received[-1][0], tampered)


def test_the_terminal_event_is_retried_on_429_and_5xx_then_recorded(service: LiveServer) -> None:
    receiver = Receiver([503, 429, 502])
    params = {"webhook": "", "webhook_events_filter": "completed"}
    with local_http({"/hook": receiver}) as url:
        params["webhook"] = f"{url}/hook"
        job = submit(service, png_bytes(), params=params).json()
        outcome = _deliveries(service, job["id"], "completed")
    assert outcome["status"] == "delivered" and outcome["attempts"] == 4
    assert outcome["response_status"] == 200
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(receiver.received) == 4 and len(ids) == 1  # one message, retried


def test_a_refusing_receiver_is_not_retried(service: LiveServer) -> None:
    receiver = Receiver([400])
    with local_http({"/hook": receiver}) as url:
        params = {"webhook": f"{url}/hook", "webhook_events_filter": "completed"}
        job = submit(service, png_bytes(), params=params).json()
        outcome = _deliveries(service, job["id"], "completed")
    assert (outcome["status"], outcome["attempts"], outcome["response_status"]) == (
        "failed",
        1,
        400,
    )


def test_an_unreachable_receiver_is_retried_then_given_up(service: LiveServer) -> None:
    with local_http({}) as url:
        pass  # closed: its port now refuses connections
    params = {"webhook": f"{url}/hook", "webhook_events_filter": "completed"}
    job = submit(service, png_bytes(), params=params).json()
    outcome = _deliveries(service, job["id"], "completed")
    assert (outcome["status"], outcome["attempts"]) == ("failed", 4)
    assert outcome["response_status"] is None and "not delivered" in outcome["detail"]


def test_bad_webhooks_are_refused_at_submit(service: LiveServer, tmp_path: Path) -> None:
    cases = [
        ({"webhook": "http://169.254.169.254/hook"}, "link-local"),
        ({"webhook": "ftp://example.test/hook"}, "only http and https"),
        ({"webhook": "http://[::1"}, "not a valid URL"),
        ({"webhook": "http://[x]/"}, "not a valid URL"),
        ({"webhook": "https://example.test/h", "webhook_events_filter": "output"}, "unknown"),
        ({"webhook_events_filter": "completed"}, "needs a webhook URL"),
    ]
    for params, detail in cases:
        answer = submit(service, png_bytes(), params=params)
        assert answer.status_code == 422 and detail in answer.json()["detail"], params
    unsigned = tiny_settings(
        None,
        models_dir=job_models(tmp_path / "m2"),
        default_model="fast",
        jobs_dir=tmp_path / "j2",
    )
    with LiveServer(create_app(unsigned)) as live:
        answer = submit(live, png_bytes(), params={"webhook": "https://example.test/h"})
    assert answer.status_code == 422 and "UPSCALER_WEBHOOK_SECRET" in answer.json()["detail"]


def test_at_most_four_deliveries_are_made_at_once(service: LiveServer) -> None:
    """Slow receivers hold at most `WEBHOOK_CONCURRENCY` threads and connections; the other
    deliveries wait their turn and are made once those end."""
    release = threading.Event()
    lock = threading.Lock()
    open_now = [0, 0]  # deliveries being answered now, and the most at once

    def slow_receiver(handler: Any) -> None:
        handler.rfile.read(int(handler.headers["Content-Length"]))
        with lock:
            open_now[0] += 1
            open_now[1] = max(open_now)
        release.wait(20)
        with lock:
            open_now[0] -= 1
        send(handler, 200)

    with local_http({"/hook": slow_receiver}) as url:
        params = {"webhook": f"{url}/hook", "webhook_events_filter": "completed"}
        jobs = [submit(service, png_bytes(seed=seed), params=params).json() for seed in range(6)]
        for job in jobs:
            wait_job(service, job["id"], lambda j: j["status"] in TERMINAL)
        deadline = time.monotonic() + 20
        while open_now[0] < WEBHOOK_CONCURRENCY:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # room for a fifth (wrong) one to arrive
        assert open_now[1] == WEBHOOK_CONCURRENCY
        release.set()
        for job in jobs:
            assert _deliveries(service, job["id"], "completed")["status"] == "delivered"
