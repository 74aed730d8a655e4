"""The URL guard (`service.core.urlfetch`): every refused range, redirects, rebinding, limits.

Nothing here reaches anything but 127.0.0.1: host names resolve through a test resolver that
maps them into the refused ranges, and `loopback_only` fails a test that connects to, or looks
up, anything else. The allowed cases fetch from a local server, allowed by the allow-list.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpcore
import httpx
import pytest
from httpcore._sync.connection_pool import PoolRequest

from service.core.urlfetch import MAX_LOOKUPS, UrlFetcher
from service.exceptions import ImageUrlTooLargeError, UrlFetchError, UrlRefusedError
from tests.service.helpers import png_bytes
from tests.service.network_guard import (  # noqa: F401 (the fixture)
    TEST_HOSTS,
    local_http,
    loopback_only,
    send,
    test_resolver,
)

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
IMAGE = png_bytes(6, 4)
REFUSED = {
    "loopback.test": "loopback",
    "loopback6.test": "loopback",
    "private.test": "private",
    "home.test": "private",
    "private6.test": "private",
    "metadata.test": "link-local (the cloud metadata range)",
    "linklocal6.test": "link-local",
    "sitelocal6.test": "site-local",
    "unspecified.test": "unspecified",
    "unspecified6.test": "unspecified",
    "multicast.test": "multicast",
    "multicast6.test": "multicast",
    "reserved.test": "reserved",
    "cgnat.test": "not globally routable",
    "mapped.test": "loopback",
    "sixtofour.test": "private",
    "nat64.test": "link-local",
    "mixed.test": "private",
}


@pytest.fixture
def fetcher(loopback_only: list[str]) -> Iterator[UrlFetcher]:  # noqa: F811
    fetch = UrlFetcher([], timeout_seconds=5, resolve=test_resolver)
    yield fetch
    fetch.close()


@pytest.fixture
def trusting(loopback_only: list[str]) -> Iterator[UrlFetcher]:  # noqa: F811
    """A fetcher whose allow-list admits 127.0.0.0/8 (the local test server)."""
    fetch = UrlFetcher(LOOPBACK, timeout_seconds=1.5, resolve=test_resolver)
    yield fetch
    fetch.close()


def _routes(base: dict[str, Any] | None = None) -> dict[str, Any]:
    routes: dict[str, Any] = {"/image.png": lambda h: send(h, 200, IMAGE, Content_Type="image/png")}
    routes.update(base or {})
    return routes


@pytest.mark.parametrize("host", sorted(REFUSED))
def test_every_refused_range_is_refused_by_name_before_connecting(
    fetcher: UrlFetcher, host: str
) -> None:
    assert set(REFUSED) == set(TEST_HOSTS)
    with pytest.raises(UrlRefusedError) as refused:
        fetcher.fetch(f"http://{host}/a.png", 1000)
    assert f"resolves to a {REFUSED[host]}" in refused.value.detail
    assert refused.value.detail.startswith("image_url refused: ")


@pytest.mark.parametrize(
    "url, rule",
    [
        ("http://127.0.0.1:9/x.png", "loopback"),
        ("http://[::1]/x.png", "loopback"),
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
    ],
)
def test_literal_addresses_are_checked_too(fetcher: UrlFetcher, url: str, rule: str) -> None:
    with pytest.raises(UrlRefusedError, match=rule):
        fetcher.fetch(url, 1000)


@pytest.mark.parametrize(
    "url, rule",
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://loopback.test/x", "only http and https"),
        ("gopher://loopback.test/", "only http and https"),
        ("http:///x.png", "no host"),
        ("http://user:secret@loopback.test/x.png", "credentials"),
        ("http://[::1", "not a valid URL"),
        ("http://[x]/", "not a valid URL"),
    ],
)
def test_only_plain_http_urls_are_fetched(fetcher: UrlFetcher, url: str, rule: str) -> None:
    with pytest.raises(UrlRefusedError, match=rule):
        fetcher.fetch(url, 1000)


def test_an_allowed_network_is_fetched(trusting: UrlFetcher) -> None:
    with local_http(_routes()) as url:
        assert trusting.fetch(f"{url}/image.png", 10_000) == IMAGE


def test_a_redirect_into_a_refused_range_is_refused_at_the_hop(trusting: UrlFetcher) -> None:
    routes = _routes({"/go": lambda h: send(h, 302, Location="http://metadata.test/latest/")})
    with local_http(routes) as url, pytest.raises(UrlRefusedError, match="link-local"):
        trusting.fetch(f"{url}/go", 10_000)


def test_redirects_are_followed_a_bounded_number_of_times(trusting: UrlFetcher) -> None:
    routes = _routes({"/loop": lambda h: send(h, 307, Location="/loop"), "/once": None})
    routes["/once"] = lambda h: send(h, 301, Location="/image.png")
    with local_http(routes) as url:
        assert trusting.fetch(f"{url}/once", 10_000) == IMAGE
        with pytest.raises(UrlRefusedError, match="more than 5 redirects"):
            trusting.fetch(f"{url}/loop", 10_000)


def test_each_connection_is_checked_so_a_rebinding_name_is_caught(
    loopback_only: list[str],  # noqa: F811
) -> None:
    answers = iter([["127.0.0.1"], ["10.0.0.7"]])  # the name changes between two connections
    fetch = UrlFetcher(LOOPBACK, 2.0, resolve=lambda host, port: next(answers))
    routes = _routes({"/close": lambda h: send(h, 200, IMAGE, Connection="close")})
    with local_http(routes) as url:
        port = url.rsplit(":", 1)[1]
        assert fetch.fetch(f"http://rebind.test:{port}/close", 10_000) == IMAGE
        with pytest.raises(UrlRefusedError, match="private"):
            fetch.fetch(f"http://rebind.test:{port}/close", 10_000)
    fetch.close()


def test_the_byte_limit_holds_while_streaming_and_from_the_header(trusting: UrlFetcher) -> None:
    def chunked(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(64):
            handler.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    routes = _routes({"/chunked": chunked, "/declared": None})
    routes["/declared"] = lambda h: send(h, 200, b"", Content_Length="999999999")
    with local_http(routes) as url:
        for path in ("/chunked", "/declared"):
            with pytest.raises(ImageUrlTooLargeError, match="limit of 10000 bytes"):
                trusting.fetch(f"{url}{path}", 10_000)


def test_errors_name_the_status_never_the_content(trusting: UrlFetcher) -> None:
    routes = _routes({"/secret": lambda h: send(h, 404, b"SECRET internal page")})
    routes["/gzip"] = lambda h: send(h, 200, b"\x1f\x8b", Content_Encoding="gzip")
    with local_http(routes) as url:
        with pytest.raises(UrlFetchError) as failed:
            trusting.fetch(f"{url}/secret", 10_000)
        assert failed.value.detail == "image_url answered HTTP 404"
        with pytest.raises(UrlFetchError, match="Content-Encoding 'gzip'"):
            trusting.fetch(f"{url}/gzip", 10_000)


def test_a_stalled_answer_ends_at_the_total_timeout(trusting: UrlFetcher) -> None:
    def trickle(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(30):  # a byte every 0.2 s: each read is quick, the whole is not
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.2)

    with (
        local_http(_routes({"/trickle": trickle})) as url,
        pytest.raises(UrlFetchError, match=r"no complete answer within 1\.5 s"),
    ):
        trusting.fetch(f"{url}/trickle", 10_000)


def test_unresolvable_and_unreachable_hosts_are_fetch_errors(
    loopback_only: list[str],  # noqa: F811
) -> None:
    fetch = UrlFetcher(LOOPBACK, 2.0, resolve=lambda host, port: ["127.0.0.1"])
    with local_http({}) as url:
        port = int(url.rsplit(":", 1)[1])
    # The server is gone: its port refuses the connection.
    with pytest.raises(UrlFetchError, match="could not be fetched"):
        fetch.fetch(f"http://gone.test:{port}/x.png", 1000)
    fetch.close()


def test_a_redirect_to_an_invalid_url_is_a_fetch_error(trusting: UrlFetcher) -> None:
    routes = _routes({"/bad": lambda h: send(h, 302, Location="http://[x]/")})
    routes["/worse"] = lambda h: send(h, 302, Location="http://[::1")
    with local_http(routes) as url:
        for path in ("/bad", "/worse"):
            # (httpx parses the Location itself; never an escaping ValueError, a 500.)
            with pytest.raises(UrlFetchError, match="Invalid URL in location header"):
                trusting.fetch(f"{url}{path}", 10_000)


def test_no_cookie_set_by_one_server_travels_with_a_later_fetch(trusting: UrlFetcher) -> None:
    cookies: list[str | None] = []

    def setter(handler: Any) -> None:
        send(handler, 200, IMAGE, Set_Cookie="session=abc; Path=/")

    def reader(handler: Any) -> None:
        cookies.append(handler.headers.get("Cookie"))
        send(handler, 200, IMAGE)

    with local_http(_routes({"/set": setter, "/read": reader})) as url:
        trusting.fetch(f"{url}/set", 10_000)
        trusting.fetch(f"{url}/read", 10_000)
        trusting.post(f"{url}/set", b"{}", {})
        trusting.fetch(f"{url}/read", 10_000)
    assert cookies == [None, None]


def test_a_lookup_that_hangs_ends_at_the_timeout(
    loopback_only: list[str],  # noqa: F811
) -> None:
    answer = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        answer.wait(10)  # an unanswering DNS server; released once the test is done
        return ["127.0.0.1"]

    requests: list[str] = []
    fetch = UrlFetcher(LOOPBACK, 0.5, resolve=hanging)
    try:
        with local_http({"/image.png": lambda h: requests.append(h.path)}) as url:
            port = url.rsplit(":", 1)[1]
            with pytest.raises(UrlFetchError, match=r"no complete answer within 0\.5 s"):
                fetch.fetch(f"http://slow-dns.test:{port}/image.png", 10_000)
    finally:
        answer.set()
        fetch.close()
    assert requests == []  # given up while looking the name up, not after


def test_no_read_may_run_past_the_deadline_of_the_fetch(
    trusting: UrlFetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that trickles in until just before the deadline, then stalls: the stalled read
    gets only what is left of the total, not a whole read timeout of its own (the timeouts
    the fetch gives its socket are recorded, so nothing here depends on how fast it runs)."""
    release = threading.Event()
    ends: list[float] = []
    settimeout = socket.socket.settimeout
    fetching = threading.get_ident()

    def record(sock: socket.socket, value: float | None) -> None:
        if threading.get_ident() == fetching and value is not None:
            ends.append(time.monotonic() + value)
        settimeout(sock, value)

    def trickle_then_stall(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        for _ in range(6):  # until 1.2 s of the 1.5 s have passed
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.2)
        release.wait(10)

    monkeypatch.setattr(socket.socket, "settimeout", record)
    with local_http(_routes({"/stall": trickle_then_stall})) as url:
        started = time.monotonic()
        try:
            with pytest.raises(UrlFetchError, match="no complete answer"):
                trusting.fetch(f"{url}/stall", 10_000)
        finally:
            release.set()
    assert len(ends) > 3 and max(ends) <= started + trusting.timeout_seconds + 0.05


def test_a_delivery_error_without_a_message_is_named(
    trusting: UrlFetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    def silent(*args: Any, **kwargs: Any) -> Any:
        raise httpx.ReadTimeout("")

    monkeypatch.setattr(httpx.Client, "stream", silent)
    with pytest.raises(UrlFetchError) as failed:
        trusting.post("http://127.0.0.1:9/hook", b"{}", {})
    assert failed.value.detail == "webhook not delivered: ReadTimeout"


def test_a_fetcher_builds_one_connection_pool(
    loopback_only: list[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[object] = []

    class Counted(httpcore.ConnectionPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(httpcore, "ConnectionPool", Counted)
    UrlFetcher(LOOPBACK, 1.0, resolve=test_resolver).close()
    assert len(built) == 1


def _hanging(release: threading.Event, asked: list[str] | None = None) -> Any:
    """A resolver that answers 127.0.0.1 only once `release` is set (an unanswering DNS
    server), recording the names it is asked for."""

    def resolve(host: str, port: int) -> list[str]:
        if asked is not None:
            asked.append(host)
        release.wait(20)
        return ["127.0.0.1"]

    return resolve


def test_lookups_are_bounded_shared_per_name_and_refused_at_once_past_the_bound(
    loopback_only: list[str],  # noqa: F811
) -> None:
    release, asked = threading.Event(), []
    fetch = UrlFetcher(LOOPBACK, 0.2, resolve=_hanging(release, asked))
    try:
        for _ in range(3):  # one name asked again while its lookup hangs: still one lookup
            with pytest.raises(UrlFetchError, match="no complete answer"):
                fetch.fetch("http://same.test/x.png", 1000)
        for number in range(MAX_LOOKUPS - 1):
            with pytest.raises(UrlFetchError, match="no complete answer"):
                fetch.fetch(f"http://name{number}.test/x.png", 1000)
        # Every lookup thread hangs: the next name fails at once instead of starting another.
        with pytest.raises(UrlFetchError, match=f"{MAX_LOOKUPS} host name lookups are in"):
            fetch.fetch("http://one-more.test/x.png", 1000)
    finally:
        release.set()
        fetch.close()
    assert asked == ["same.test"] + [f"name{number}.test" for number in range(MAX_LOOKUPS - 1)]


def test_a_lookup_that_cannot_start_its_thread_is_a_fetch_error(
    loopback_only: list[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    fetch = UrlFetcher(LOOPBACK, 1.0, resolve=test_resolver)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(UrlFetchError, match="cannot be looked up now"):
        fetch.fetch("http://loopback.test/x.png", 1000)
    fetch.close()


def test_no_fetch_waits_inside_the_pool_so_none_can_leave_a_connection_stuck(
    loopback_only: list[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpcore 1.0: a request whose pool timeout fires just as it is handed a new connection
    leaves that connection in the pool for good (never connected, never closed). The seam
    makes every wait inside the pool end that way; with many fetches stuck on a hanging lookup,
    a healthy fetch must still find a connection afterwards."""
    real_wait = PoolRequest.wait_for_connection

    def racing(request: PoolRequest, timeout: float | None = None) -> Any:
        if request.connection is None:  # it has to wait: it times out as it gets one
            real_wait(request, 3.0)
            raise httpcore.PoolTimeout("timed out as it was handed a connection")
        return real_wait(request, timeout)

    monkeypatch.setattr(PoolRequest, "wait_for_connection", racing)
    release = threading.Event()
    fetch = UrlFetcher(LOOPBACK, 0.5, resolve=_hanging(release), max_connections=2)

    def stuck(_: int) -> str:
        with pytest.raises(UrlFetchError) as failed:
            fetch.fetch(f"http://slow-dns.test:{port}/image.png", 10_000)
        return failed.value.detail

    try:
        with local_http(_routes()) as url, ThreadPoolExecutor(8) as pool:
            port = url.rsplit(":", 1)[1]
            assert len(list(pool.map(stuck, range(8)))) == 8
            assert fetch.fetch(f"{url}/image.png", 10_000) == IMAGE
    finally:
        release.set()
        fetch.close()


def test_close_ends_the_requests_and_lookups_in_progress(
    loopback_only: list[str],  # noqa: F811
) -> None:
    """A delivery whose receiver never answers, and a fetch whose lookup hangs, both with 30 s
    left: `close` ends them at once, so no thread holds the process after the service stops."""
    arrived, release, dns = threading.Event(), threading.Event(), threading.Event()
    asked: list[str] = []

    def never_answers(handler: Any) -> None:
        handler.rfile.read(int(handler.headers["Content-Length"]))
        arrived.set()
        release.wait(20)

    fetch = UrlFetcher(LOOPBACK, 30, resolve=_hanging(dns, asked))
    failures: list[str] = []

    def run(call: Any, *args: Any) -> None:
        try:
            call(*args)
        except UrlFetchError:
            failures.append(call.__name__)

    try:
        with local_http({"/hook": never_answers}) as url:
            threads = [
                threading.Thread(target=run, args=(fetch.post, f"{url}/hook", b"{}", {})),
                threading.Thread(target=run, args=(fetch.fetch, "http://slow.test/x.png", 10)),
            ]
            for thread in threads:
                thread.start()
            assert arrived.wait(10)
            while not asked:
                time.sleep(0.01)
            fetch.close()
            for thread in threads:
                thread.join(10)
            assert not [thread for thread in threads if thread.is_alive()]
    finally:
        release.set()
        dns.set()
    assert sorted(failures) == ["fetch", "post"]
    with pytest.raises(UrlFetchError, match="the service is stopping"):
        fetch.fetch("http://127.0.0.1:9/x.png", 1000)
