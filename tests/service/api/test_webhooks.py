"""Webhooks against a real server: signatures checked by a receiver on 127.0.0.1 as the
Standard Webhooks specification says, retries of the terminal event, refusals at submit."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.api.app import create_app
from service.core.jobs import service as service_module
from service.core.jobs import webhooks
from service.core.jobs.service import HOST_CONCURRENCY, WEBHOOK_CONCURRENCY
from service.core.jobs.store import JobStatus
from tests.service.api.jobs_helpers import SLOW_DELAY, TERMINAL, job_models, submit, wait_job
from tests.service.helpers import png_bytes
from tests.service.network_guard import local_http, loopback_only, send  # noqa: F401 (fixture)
from tests.web.live import LiveServer, slow_model, time_limit, tiny_settings

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


class FakeReceivers:
    """Stands in for the service's webhook connections (`UrlFetcher.post`): nothing is sent,
    every delivery is recorded, and one to a host whose name starts with `dead` hangs until
    `release` is set (a receiver that never answers)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.open: Counter[str] = Counter()
        self.most: Counter[str] = Counter()  # at once, per host; "*": in all
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        host = urlsplit(url).hostname or ""
        with self.lock:
            self.open[host] += 1
            self.most[host] = max(self.most[host], self.open[host])
            self.most["*"] = max(self.most["*"], self.now())
            self.messages.append((host, json.loads(body)))
        try:
            if host.startswith("dead"):
                self.release.wait(20)
            return 200
        finally:
            with self.lock:
                self.open[host] -= 1

    def now(self) -> int:
        """Deliveries being made now."""
        return sum(self.open.values())


@pytest.fixture
def faked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loopback_only: list[str],  # noqa: F811
) -> Iterator[tuple[LiveServer, FakeReceivers]]:
    """The service with its webhook connections replaced by `FakeReceivers`, the slow model,
    and a sweep every 0.5 s (a quarter of the 2 s results are kept)."""
    models = job_models(tmp_path / "models")
    settings = tiny_settings(
        None,
        models_dir=models,
        default_model="fast",
        jobs_dir=tmp_path / "jobs",
        webhook_secret=SECRET,
        webhook_retry_seconds=0.05,
        job_retention_seconds=2,
    )
    fake = FakeReceivers()
    with (
        time_limit(60),
        slow_model(models / "slow.onnx", SLOW_DELAY),
        LiveServer(create_app(settings)) as live,
    ):
        monkeypatch.setattr(live.app.state.context.jobs._webhooks, "post", fake)
        try:
            yield live, fake
        finally:
            fake.release.set()


def _hooked(host: str, **params: Any) -> dict[str, Any]:
    return {"webhook": f"http://{host}/hook", "webhook_events_filter": "completed", **params}


def _until(condition: Any) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.02)


def test_deliveries_are_made_four_at_once_and_two_per_receiver_host(
    faked: tuple[LiveServer, FakeReceivers],
) -> None:
    """Slow receivers hold at most `WEBHOOK_CONCURRENCY` threads and connections, at most
    `HOST_CONCURRENCY` of them one host's; the other deliveries wait their turn."""
    live, fake = faked
    # Three for one host, then three for another: the first four to end are 3 + 1.
    hosts = ["dead0.test", "dead1.test"]
    jobs = [
        submit(live, png_bytes(seed=seed), params=_hooked(hosts[seed // 3])).json()
        for seed in range(6)
    ]
    for job in jobs:
        wait_job(live, job["id"], lambda j: j["status"] in TERMINAL)
    _until(lambda: fake.now() == WEBHOOK_CONCURRENCY)
    time.sleep(0.3)  # room for a fifth (wrong) one to arrive
    assert fake.most["*"] == WEBHOOK_CONCURRENCY
    assert max(fake.most[host] for host in hosts) == HOST_CONCURRENCY
    fake.release.set()
    for job in jobs:
        assert _deliveries(live, job["id"], "completed")["status"] == "delivered"


def test_a_dead_receiver_neither_takes_all_the_room_nor_holds_up_other_receivers(
    faked: tuple[LiveServer, FakeReceivers], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, fake = faked
    monkeypatch.setattr(service_module, "MAX_WAITING_PER_HOST", 3)
    dead = [
        submit(live, png_bytes(seed=seed), params=_hooked("dead.test")).json() for seed in range(5)
    ]
    # Two are being made, one waits for a turn; the last two are held back, left `retrying`.
    for job in dead[3:]:
        held = wait_job(
            live, job["id"], lambda j: "completed" in (j["webhook"] or {}).get("deliveries", {})
        )["webhook"]["deliveries"]["completed"]
        assert held["status"] == "retrying" and "3 deliveries to dead.test" in held["detail"]
    alive = submit(live, png_bytes(seed=9), params=_hooked("alive.test")).json()
    assert _deliveries(live, alive["id"], "completed")["status"] == "delivered"
    assert fake.open["dead.test"] == HOST_CONCURRENCY  # all the while
    fake.release.set()  # the receiver comes back: the sweep sends what was held back
    for job in dead:
        assert _deliveries(live, job["id"], "completed")["status"] == "delivered"
    sent = [message["data"]["id"] for host, message in fake.messages if host == "dead.test"]
    assert sorted(sent) == sorted(job["id"] for job in dead)  # each once


def test_a_delivery_that_fails_before_its_first_try_gives_its_place_back(
    faked: tuple[LiveServer, FakeReceivers], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, _ = faked
    monkeypatch.setattr(service_module, "MAX_WAITING_DELIVERIES", 1)
    message, broken = webhooks.message, [True, True]

    def fails_twice(*args: Any) -> bytes:
        if broken:
            broken.pop()
            raise RuntimeError("the job could not be described")
        return message(*args)

    monkeypatch.setattr(webhooks, "message", fails_twice)
    for seed in (11, 12):
        job = submit(live, png_bytes(seed=seed), params=_hooked("alive.test")).json()
        wait_job(live, job["id"], lambda j: j["status"] in TERMINAL)
    _until(lambda: not broken)
    last = submit(live, png_bytes(seed=13), params=_hooked("alive.test")).json()
    assert _deliveries(live, last["id"], "completed")["status"] == "delivered"


def test_concurrent_cancels_announce_the_end_once(
    faked: tuple[LiveServer, FakeReceivers], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cancels that both read the job as running before either writes: only the one whose
    write ended it sends `completed`."""
    live, fake = faked
    jobs = live.app.state.context.jobs
    store = jobs.store
    settle, cancels = store.settle, itertools.count()
    both = threading.Barrier(2, timeout=20)

    def settle_together(key: str, status: JobStatus, detail: str) -> bool:
        if status is JobStatus.CANCELED and next(cancels) < 2:
            both.wait()  # the two cancels' writes, once both have read the job
        return settle(key, status, detail)

    monkeypatch.setattr(store, "settle", settle_together)
    params = _hooked("alive.test", model="slow")
    job = submit(live, png_bytes(64, 64, seed=14), params=params).json()
    wait_job(live, job["id"], lambda j: j["status"] == "running")
    with ThreadPoolExecutor(2) as pool:
        url = f"{live.url}/jobs/{job['id']}/cancel"
        answers = list(pool.map(lambda _: httpx.post(url, timeout=30), range(2)))
    assert [answer.status_code for answer in answers] == [200, 200]
    _until(lambda: jobs._deliveries == 0)  # every delivery announced has been made
    ends = [message for _, message in fake.messages if message["type"] == "job.completed"]
    assert [message["data"]["status"] for message in ends] == ["canceled"]


def test_a_stop_ends_the_deliveries_in_flight(
    tmp_path: Path,
    loopback_only: list[str],  # noqa: F811
) -> None:
    """A receiver that never answers: the stop hangs up on it at once, rather than leaving a
    thread to wait out UPSCALER_URL_TIMEOUT_SECONDS (30 s) and hold the process."""
    arrived, hung_up = threading.Event(), threading.Event()

    def never_answers(handler: Any) -> None:
        handler.rfile.read(int(handler.headers["Content-Length"]))
        arrived.set()
        handler.connection.settimeout(20)
        with contextlib.suppress(OSError):
            if handler.connection.recv(1) == b"":  # the service closed its side
                hung_up.set()

    settings = tiny_settings(
        None,
        models_dir=job_models(tmp_path / "models"),
        default_model="fast",
        jobs_dir=tmp_path / "jobs",
        webhook_secret=SECRET,
        url_allow_networks="127.0.0.0/8",
        url_timeout_seconds=30,
    )
    with time_limit(60), local_http({"/hook": never_answers}) as url:
        with LiveServer(create_app(settings)) as live:
            submit(live, png_bytes(), params=_hooked(url.removeprefix("http://")))
            assert arrived.wait(20)
        assert hung_up.wait(10)
