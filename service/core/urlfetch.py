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
multicast, private, reserved, and anything else that is not globally routable (shared
100.64/10, documentation ranges...), IPv4 and IPv6, and the IPv4 address inside IPv4-mapped,
6to4, Teredo and NAT64 addresses. Only http and https; no credentials in the URL; no proxy
from the environment (the address checked must be the one connected to). Timeouts: 5 s to
connect, `UPSCALER_URL_TIMEOUT_SECONDS` in all. The byte limit is counted while the body
streams, unencoded (`Accept-Encoding: identity`, so that no gzip bomb inflates in memory),
before anything is decoded. Refusals name the rule, never the content fetched.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, connecting only to addresses `refusal` lets through."""

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
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            addresses = [ipaddress.ip_address(found) for found in self._resolve(host, port)]
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
                return self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise UrlRefusedError("no Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, backend: _GuardedBackend) -> None:
        super().__init__(retries=0)
        # httpx builds its connection pool without a way to pass a network backend; the pool
        # is rebuilt with the guarded one (same defaults: certifi's TLS context, HTTP/1.1).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=backend, max_connections=10
        )


def check_url(url: str) -> httpx.URL:
    """The URL parsed, if its form is acceptable: http(s), a host, no credentials.

    Raises:
        UrlRefusedError: Naming the rule it breaks (the caller says which URL it was).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefusedError("only http and https URLs are fetched")
    if not parts.hostname:
        raise UrlRefusedError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefusedError("credentials in the URL are not sent")
    try:
        return httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UrlRefusedError(f"not a valid URL ({exc})") from exc


class UrlFetcher:
    """Fetches images and delivers webhooks over connections the address rules allow.

    Args:
        allowed: Networks reachable although in a refused range.
        timeout_seconds: Longest time for one fetch (redirects included) or one delivery.
        resolve: Host name resolver (tests map names to addresses; the system's by default).
    """

    def __init__(
        self,
        allowed: Sequence[IPNetwork],
        timeout_seconds: float,
        resolve: Resolver | None = None,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        backend = _GuardedBackend(resolve or system_resolve, list(allowed))
        # trust_env=False: an HTTP(S)_PROXY from the environment would make the proxy's
        # address the one checked, and the target's unchecked.
        self._client = httpx.Client(
            transport=_GuardedTransport(backend),
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": "edsr-upscaler"},
        )

    def close(self) -> None:
        self._client.close()

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
        deadline = time.monotonic() + self.timeout_seconds
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
            raise UrlFetchError(f"image_url could not be fetched: {exc}") from None

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
                return _read_limited(answer, limit, deadline)
        raise UrlRefusedError(f"more than {MAX_REDIRECTS} redirects")

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POSTs `body` to `url` (no redirect followed) and returns the answer's status.

        Raises:
            UrlRefusedError: A rule refuses the URL or its address.
            UrlFetchError: Unreachable or too slow.
        """
        deadline = time.monotonic() + self.timeout_seconds
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
            raise UrlFetchError(f"webhook not delivered: {exc or type(exc).__name__}") from None


def _read_limited(answer: httpx.Response, limit: int, deadline: float) -> bytes:
    encoding = answer.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UrlFetchError(
            f"image_url answered with Content-Encoding {encoding!r}; images are fetched unencoded"
        )
    declared = answer.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ImageUrlTooLargeError(limit)
    body = bytearray()
    for chunk in answer.iter_raw():  # as received: a fixed size would wait for it to fill
        body += chunk
        if len(body) > limit:
            raise ImageUrlTooLargeError(limit)
        if time.monotonic() > deadline:
            # Each read has its own timeout, so a body trickling in slowly ends here.
            raise httpx.ReadTimeout("deadline passed")
    return bytes(body)
