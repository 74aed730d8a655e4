"""Tests that fetch URLs must reach nothing but 127.0.0.1: a guard on the process's sockets,
a resolver that maps test host names to the ranges the URL guard refuses, and a small local
HTTP server to fetch from."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

#: Test host names and the addresses the test resolver gives them.
TEST_HOSTS: dict[str, list[str]] = {
    "loopback.test": ["127.0.0.1"],
    "loopback6.test": ["::1"],
    "private.test": ["10.1.2.3"],
    "home.test": ["192.168.1.20"],
    "private6.test": ["fd00::5"],
    "metadata.test": ["169.254.169.254"],
    "linklocal6.test": ["fe80::1"],
    "sitelocal6.test": ["fec0::1"],
    "unspecified.test": ["0.0.0.0"],
    "unspecified6.test": ["::"],
    "multicast.test": ["224.0.0.251"],
    "multicast6.test": ["ff02::1"],
    "reserved.test": ["240.0.0.9"],
    "cgnat.test": ["100.64.0.1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "sixtofour.test": ["2002:a01:203::1"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    # One public address beside a private one: the name is refused whole.
    "mixed.test": ["93.184.216.34", "10.0.0.8"],
}


def test_resolver(host: str, port: int) -> list[str]:
    """Resolves only the test names (and 127.0.0.1); anything else fails the lookup."""
    if host in TEST_HOSTS:
        return TEST_HOSTS[host]
    raise AssertionError(f"the test resolver was asked for {host!r}")


test_resolver.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _host_of(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fails the test if anything connects to, or looks up, anything but 127.0.0.1."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def allowed(host: str) -> bool:
        if host == "127.0.0.1":
            return True
        attempts.append(host)
        return False

    def connect(sock: socket.socket, address: Any) -> Any:
        if not allowed(_host_of(address)):
            raise ConnectionRefusedError(f"test guard: no connection to {address}")
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> Any:
        if not allowed(_host_of(address)):
            return 111
        return real_connect_ex(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(str(host))  # numeric: no lookup happens
            return real_getaddrinfo(host, *args, **kwargs)
        if not allowed(str(host)):
            raise socket.gaierror(f"test guard: no lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"the test tried to reach {attempts}"


Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@contextlib.contextmanager
def local_http(routes: dict[str, Handler]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering `routes` (path -> handler); yields its URL."""

    class RequestHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404)
            else:
                route(self)

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def send(
    handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str
) -> None:
    """Answers with `status`, `headers` (underscores as dashes) and `body`."""
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    if "Content_Length" not in headers:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
