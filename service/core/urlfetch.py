"""Fetching from URLs the clients give (`image_url`, webhooks) without letting them reach inside.

The danger is server-side request forgery: a URL naming the cloud metadata service
(169.254.169.254), a database on localhost or an admin page on the private network, directly,
through a redirect, or through a host name that resolves to a public address when checked and
to a private one when connected (DNS rebinding). So the check is made where it cannot be
dodged: **on every connection's address, at connect time** (as imgproxy does). `UrlFetcher`
gives httpx a network backend that resolves the host itself, refuses the addresses of the
ranges below unless `UPSCALER_URL_ALLOW_NETWORKS` names them, and connects to the address it
checked, never resolving twice. Redirects are followed by hand (at most `MAX_REDIRECTS`, each
hop's scheme checked), and each hop's connection goes through the same backend.

Refused: unspecified (0.0.0.0, ::), loopback, link-local (the cloud metadata address),
IPv6 site-local (fec0::/10), multicast, private, reserved, and anything else that is not
globally routable (shared 100.64/10, documentation ranges...), IPv4 and IPv6, and the IPv4
address inside IPv4-mapped, 6to4, Teredo and NAT64 addresses. Only http and https; no
credentials in the URL; no proxy from the environment (the address checked must be the one
connected to); no cookies kept (one client serves every fetch: a cookie one server set must not
travel with another client's fetch). Timeouts: 5 s to connect (the name's lookup included),
`UPSCALER_URL_TIMEOUT_SECONDS` in all: every lookup, connect, read and write of a fetch ends by
its deadline, whichever hop it is on. The byte limit is counted while the body streams,
unencoded (`Accept-Encoding: identity`, so that no gzip bomb inflates in memory), before
anything is decoded. Refusals name the rule, never the content fetched.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from service.exceptions import ImageUrlTooLargeError, UrlFetchError, UrlRefusedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Resolves (host, port) to IP address strings.
Resolver = Callable[[str, int], Sequence[str]]

MAX_REDIRECTS = 5
CONNECT_TIMEOUT_SECONDS = 5.0
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

#: The refused kinds of address, in the order they are named, each with its test.
_RULES: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("unspecified", lambda ip: ip.is_unspecified),
    ("loopback", lambda ip: ip.is_loopback),
    ("link-local (the cloud metadata range)", lambda ip: ip.is_link_local),
    # fec0::/10, deprecated but still routed inside some networks; Python 3.11's `is_global`
    # lets it through, and IPv4 addresses have no such attribute.
    ("site-local", lambda ip: getattr(ip, "is_site_local", False)),
    ("multicast", lambda ip: ip.is_multicast),
    ("reserved", lambda ip: ip.is_reserved),
    ("private", lambda ip: ip.is_private),
    ("not globally routable", lambda ip: not ip.is_global),
)


def _embedded_ipv4(address: IPAddress) -> list[IPAddress]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo client, NAT64)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[IPAddress] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.append(address.teredo[1])
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def refusal(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """The kind of address that refuses `address` (`"loopback"`...), or None if it may be
    reached: globally routable, or in one of the `allowed` networks."""
    networks = list(allowed)
    if any(address.version == net.version and address in net for net in networks):
        return None
    # The IPv4 address inside an IPv6 one first: it names the rule that matters (the mapped
    # form of 127.0.0.1 is loopback, not merely "private").
    for candidate in [*_embedded_ipv4(address), address]:
        for name, refused in _RULES:
            if refused(candidate):
                return name
    return None


def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (IPv4 and IPv6, in its order).

    Raises:
        UrlFetchError: If the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlFetchError(f"host {host!r} cannot be resolved") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


#: The deadline (`time.monotonic()`) of the fetch or delivery the current thread is making
#: (`UrlFetcher._deadline`); its connections' lookups, connects, reads and writes end by it.
_deadline = threading.local()


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout`, cut to what is left before this thread's deadline (as it is without one).

    httpx's timeouts hold per read: a stall that begins just before the deadline would
    otherwise run a whole read timeout past it, nearly doubling the total.

    Raises:
        error: Once the deadline has passed.
    """
    deadline: float | None = getattr(_deadline, "at", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the deadline of the request using it
    (pooled connections serve several requests, so the deadline is looked up at each call)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, connecting only to addresses `refusal` lets through,
    within the deadline of the request (`_DeadlineStream`)."""

    def __init__(self, resolve: Resolver, allowed: Sequence[IPNetwork]) -> None:
        self._resolve = resolve
        self._allowed = allowed
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            found = self._lookup(host, port, timeout)
            addresses = [ipaddress.ip_address(address) for address in found]
        for address in addresses:
            # Every address of the name is checked, not just the first: a name that also
            # resolves into a refused range is refused whole, whichever address would be used.
            rule = refusal(address, self._allowed)
            if rule is not None:
                raise UrlRefusedError(
                    f"host {host!r} resolves to a {rule} address "
                    "(UPSCALER_URL_ALLOW_NETWORKS can allow a network)"
                )
        if not addresses:
            raise UrlFetchError(f"host {host!r} has no address")
        error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(address),
                    port,
                    _bounded(timeout, httpcore.ConnectTimeout),
                    local_address,
                    socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
            else:
                return _DeadlineStream(stream)
        assert error is not None
        raise error

    def _lookup(self, host: str, port: int, timeout: float | None) -> Sequence[str]:
        """The resolver's answer, given up after `timeout`: the system resolver has no timeout
        of its own to pass, and an unanswering DNS server holds it for many seconds. It runs in
        a daemon thread, which finishes on its own when the lookup does."""
        answer: list[Sequence[str] | BaseException] = []

        def look_up() -> None:
            try:
                answer.append(self._resolve(host, port))
            except BaseException as exc:  # handed to the caller below
                answer.append(exc)

        thread = threading.Thread(target=look_up, name="urlfetch-lookup", daemon=True)
        thread.start()
        thread.join(timeout)
        if not answer:
            raise httpcore.ConnectTimeout(f"looking up {host!r} took over {timeout:g} s")
        if isinstance(answer[0], BaseException):
            raise answer[0]
        return answer[0]

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise UrlRefusedError("no Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a pool of guarded connections.

    httpx offers no way to give its pool a network backend, so the pool is built here, and
    `HTTPTransport.__init__` is not called: it would build a pool (and an SSL context) only for
    it to be dropped. `_pool` is the one attribute the transport's methods use.
    """

    def __init__(self, backend: _GuardedBackend, max_connections: int) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=backend,
            max_connections=max_connections,
        )


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Refuses to keep any cookie: one client fetches for every API client (and delivers every
    webhook), so a kept cookie would travel with another client's requests, and a jar that
    only grows is a leak."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def check_url(url: str) -> httpx.URL:
    """The URL parsed, if its form is acceptable: http(s), a host, no credentials.

    Raises:
        UrlRefusedError: Naming the rule it breaks (the caller says which URL it was).
    """
    try:
        parts = urlsplit(url)
        hostname = parts.hostname  # a bracketed host that is no IPv6 address raises here
    except ValueError:  # `http://[::1`, `http://[x]/`
        raise UrlRefusedError("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefusedError("only http and https URLs are fetched")
    if not hostname:
        raise UrlRefusedError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefusedError("credentials in the URL are not sent")
    try:
        return httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UrlRefusedError(f"not a valid URL ({exc})") from exc


def _error_text(exc: Exception) -> str:
    # Some httpx errors carry no message (a bare ReadTimeout): their name says what happened.
    return str(exc) or type(exc).__name__


class UrlFetcher:
    """Fetches images and delivers webhooks over connections the address rules allow.

    Args:
        allowed: Networks reachable although in a refused range.
        timeout_seconds: Longest time for one fetch (redirects included) or one delivery.
        resolve: Host name resolver (tests map names to addresses; the system's by default).
        max_connections: Connections open at once (more requests wait for one).
    """

    def __init__(
        self,
        allowed: Sequence[IPNetwork],
        timeout_seconds: float,
        resolve: Resolver | None = None,
        max_connections: int = 10,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        backend = _GuardedBackend(resolve or system_resolve, list(allowed))
        # trust_env=False: an HTTP(S)_PROXY from the environment would make the proxy's
        # address the one checked, and the target's unchecked.
        self._client = httpx.Client(
            transport=_GuardedTransport(backend, max_connections),
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": "edsr-upscaler"},
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
        )

    def close(self) -> None:
        self._client.close()

    @contextlib.contextmanager
    def _deadline(self) -> Iterator[float]:
        """Sets this thread's deadline for the fetch or delivery inside (`_bounded`)."""
        deadline = time.monotonic() + self.timeout_seconds
        _deadline.at = deadline
        try:
            yield deadline
        finally:
            _deadline.at = None

    def _timeout(self, deadline: float) -> httpx.Timeout:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise httpx.TimeoutException("deadline passed")
        return httpx.Timeout(remaining, connect=min(CONNECT_TIMEOUT_SECONDS, remaining))

    def fetch(self, url: str, limit: int) -> bytes:
        """The body at `url` (following redirects), at most `limit` bytes.

        Raises:
            UrlRefusedError: A rule refuses the URL, a redirect or an address.
            UrlFetchError: Unreachable, an answer other than 200, or too slow.
            ImageUrlTooLargeError: More than `limit` bytes (declared or streamed).
        """
        with self._deadline() as deadline:
            try:
                return self._follow(check_url(url), limit, deadline)
            except UrlRefusedError as exc:
                raise UrlRefusedError(f"image_url refused: {exc}") from None
            except httpx.TimeoutException:
                raise UrlFetchError(
                    f"image_url: no complete answer within {self.timeout_seconds:g} s "
                    "(UPSCALER_URL_TIMEOUT_SECONDS)"
                ) from None
            except httpx.HTTPError as exc:
                raise UrlFetchError(f"image_url could not be fetched: {_error_text(exc)}") from None

    def _follow(self, target: httpx.URL, limit: int, deadline: float) -> bytes:
        headers = {"Accept": "image/*", "Accept-Encoding": "identity"}
        for _ in range(MAX_REDIRECTS + 1):
            timeout = self._timeout(deadline)
            with self._client.stream("GET", target, headers=headers, timeout=timeout) as answer:
                if answer.is_redirect:
                    target = check_url(str(answer.url.join(answer.headers["location"])))
                    continue
                if answer.status_code != 200:
                    raise UrlFetchError(f"image_url answered HTTP {answer.status_code}")
                return _read_limited(answer, limit)
        raise UrlRefusedError(f"more than {MAX_REDIRECTS} redirects")

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POSTs `body` to `url` (no redirect followed) and returns the answer's status.

        Raises:
            UrlRefusedError: A rule refuses the URL or its address.
            UrlFetchError: Unreachable or too slow.
        """
        with self._deadline() as deadline:
            try:
                target = check_url(url)
                timeout = self._timeout(deadline)
                with self._client.stream(
                    "POST", target, content=body, headers=dict(headers), timeout=timeout
                ) as answer:
                    return answer.status_code
            except UrlRefusedError as exc:
                raise UrlRefusedError(f"webhook refused: {exc}") from None
            except httpx.HTTPError as exc:
                raise UrlFetchError(f"webhook not delivered: {_error_text(exc)}") from None


def _read_limited(answer: httpx.Response, limit: int) -> bytes:
    encoding = answer.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UrlFetchError(
            f"image_url answered with Content-Encoding {encoding!r}; images are fetched unencoded"
        )
    declared = answer.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ImageUrlTooLargeError(limit)
    body = bytearray()
    # As received (a fixed size would wait for it to fill); a body trickling in slowly ends at
    # the deadline, which every read of the connection keeps (`_DeadlineStream`).
    for chunk in answer.iter_raw():
        body += chunk
        if len(body) > limit:
            raise ImageUrlTooLargeError(limit)
    return bytes(body)
