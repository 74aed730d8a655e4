"""The URL guard (`service.core.urlfetch`): every refused range, redirects, rebinding, limits.

Nothing here reaches anything but 127.0.0.1: host names resolve through a test resolver that
maps them into the refused ranges, and `loopback_only` fails a test that connects to, or looks
up, anything else. The allowed cases fetch from a local server, allowed by the allow-list.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service.core.urlfetch import UrlFetcher
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
