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

Bounded: a fetcher makes at most `max_connections` requests at once (more callers wait for a
turn until their deadline; none ever waits inside httpcore's pool), and at most `MAX_LOOKUPS`
name lookups, one per host and port. `close()` ends the requests and lookups in progress, so
that no thread outlives the service's stop by a timeout.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import ipaddress
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
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
#: Name lookups in progress at once, per fetcher: a resolver that does not answer holds each
#: one's thread for many seconds.
MAX_LOOKUPS = 8
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
    (pooled connections serve several requests, so the deadline is looked up at each call).

    Its socket is known to `sockets` (the backend's) until it is closed, so that `close()` of
    the fetcher can shut it down under a thread blocked reading it.
    """

    def __init__(self, inner: httpcore.NetworkStream, sockets: _Sockets) -> None:
        self._inner = inner
        self._sockets = sockets
        try:
            sockets.add(inner.get_extra_info("socket"))
        except BaseException:  # the fetcher was closed meanwhile
            inner.close()
            raise

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._sockets.discard(self._inner.get_extra_info("socket"))
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        tls = self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _DeadlineStream(tls, self._sockets)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Sockets:
    """The sockets of a backend's open connections (weakly: a connection dropped without a
    close must not be kept), and whether the backend is closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self.closed = False

    def add(self, sock: socket.socket | None) -> None:
        """Records an open connection's socket.

        Raises:
            UrlFetchError: The backend is closed (under the lock: a socket is either shut down
                by `shut_down` or refused here, never missed).
        """
        with self._lock:
            if self.closed:
                raise UrlFetchError("the fetcher is closed: the service is stopping")
            if sock is not None:
                self._open.add(sock)

    def discard(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._open.discard(sock)

    def shut_down(self) -> None:
        """Shuts every open socket down: a thread blocked reading one returns at once (closing
        it would not wake the read), and its request fails."""
        with self._lock:
            self.closed = True
            sockets = list(self._open)
        for sock in sockets:
            # socket.socket's own shutdown, for a TLS socket too: SSLSocket's drops its TLS
            # state first, under the thread that may be reading with it. OSError: already shut
            # down or closed, or detached into the TLS socket (which is in the set itself).
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Lookups:
    """The resolver's lookups, each in a daemon thread, given up by its callers after their
    timeout (the system resolver has none to pass, and an unanswering DNS server holds it for
    many seconds).

    At most `limit` run at once, and one per (host, port): fetches of a name share its lookup.
    Past the limit a lookup fails at once instead of starting another thread, so a resolver
    that hangs cannot grow the threads without bound. Daemon threads rather than a
    `ThreadPoolExecutor`, whose workers are joined at exit: a hung lookup would hold the
    process after the service has stopped.
    """

    def __init__(self, resolve: Resolver, limit: int = MAX_LOOKUPS) -> None:
        self._resolve = resolve
        self._limit = limit
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], Future[Sequence[str]]] = {}
        self._closed = False

    def look_up(self, host: str, port: int, timeout: float | None) -> Sequence[str]:
        """The addresses of `host`.

        Raises:
            httpcore.ConnectTimeout: No answer within `timeout`.
            UrlFetchError: Too many lookups in progress, or the fetcher is closed; or the
                resolver's own error.
        """
        future = self._start(host, port)
        try:
            return future.result(timeout)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"looking up {host!r} took over {timeout:g} s") from None

    def _start(self, host: str, port: int) -> Future[Sequence[str]]:
        with self._lock:
            if self._closed:
                raise UrlFetchError("the fetcher is closed: the service is stopping")
            future = self._pending.get((host, port))
            if future is not None:
                return future
            if len(self._pending) >= self._limit:
                raise UrlFetchError(
                    f"{self._limit} host name lookups are in progress already (the DNS "
                    "server may not be answering); retry later"
                )
            future = Future()
            thread = threading.Thread(
                target=self._run, args=(host, port, future), name="urlfetch-lookup", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # the process may start no more threads
                raise UrlFetchError(f"host {host!r} cannot be looked up now ({exc})") from None
            self._pending[(host, port)] = future
        return future

    def _run(self, host: str, port: int, future: Future[Sequence[str]]) -> None:
        try:
            answer = self._resolve(host, port)
        except BaseException as exc:  # handed to the callers
            _settle(future, exc)
        else:
            _settle(future, answer)
        finally:
            with self._lock:  # (taken after `_start` has recorded it)
                if self._pending.get((host, port)) is future:
                    del self._pending[(host, port)]

    def close(self) -> None:
        """Fails the lookups in progress (their callers return at once) and any later one."""
        with self._lock:
            self._closed = True
            pending = list(self._pending.values())
        for future in pending:
            _settle(future, UrlFetchError("the fetcher is closed: the service is stopping"))


def _settle(future: Future[Sequence[str]], outcome: Sequence[str] | BaseException) -> None:
    # A lookup failed by `close` may still end later: its answer is dropped.
    with contextlib.suppress(InvalidStateError):
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, connecting only to addresses `refusal` lets through,
    within the deadline of the request (`_DeadlineStream`)."""

    def __init__(self, resolve: Resolver, allowed: Sequence[IPNetwork]) -> None:
        self._lookups = _Lookups(resolve)
        self._allowed = allowed
        self._inner = httpcore.SyncBackend()
        self._sockets = _Sockets()

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
            found = self._lookups.look_up(host, port, timeout)
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
                return _DeadlineStream(stream, self._sockets)
        assert error is not None
        raise error

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise UrlRefusedError("no Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def close(self) -> None:
        """Ends the lookups and requests in progress, and refuses new connections."""
        self._lookups.close()
        self._sockets.shut_down()


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
        max_connections: Requests made at once (more callers wait for a turn, until their
            deadline).
    """

    def __init__(
        self,
        allowed: Sequence[IPNetwork],
        timeout_seconds: float,
        resolve: Resolver | None = None,
        max_connections: int = 10,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.max_connections = max_connections
        self._backend = _GuardedBackend(resolve or system_resolve, list(allowed))
        self._turns = threading.BoundedSemaphore(max_connections)
        self._closed = False
        # trust_env=False: an HTTP(S)_PROXY from the environment would make the proxy's
        # address the one checked, and the target's unchecked.
        self._client = httpx.Client(
            transport=_GuardedTransport(self._backend, max_connections),
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": "edsr-upscaler"},
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
        )

    def close(self) -> None:
        """Ends the fetches and deliveries in progress at once (their threads must not keep
        the process up to a timeout after the service stopped) and refuses later ones."""
        self._closed = True
        self._backend.close()
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

    @contextlib.contextmanager
    def _turn(self, deadline: float, what: str) -> Iterator[None]:
        """One of `max_connections` turns, waited for until `deadline`.

        No request may wait inside httpcore's pool: one whose pool timeout fires just as it is
        handed a new connection leaves that connection in the pool for good, never connected
        nor closed (httpcore 1.0), until the pool is full of them and every fetch fails. With
        no more requests than connections, each finds one at once.

        Raises:
            UrlFetchError: No turn before the deadline, or the fetcher is closed.
        """
        if not self._turns.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise UrlFetchError(
                f"{what}: all {self.max_connections} connections stayed busy for "
                f"{self.timeout_seconds:g} s (UPSCALER_URL_TIMEOUT_SECONDS); retry later"
            )
        try:
            if self._closed:
                raise UrlFetchError(f"{what}: the service is stopping")
            yield
        finally:
            self._turns.release()

    def _timeout(self, deadline: float) -> httpx.Timeout:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise httpx.TimeoutException("deadline passed")
        return httpx.Timeout(remaining, connect=min(CONNECT_TIMEOUT_SECONDS, remaining))

    def fetch(self, url: str, limit: int) -> bytes:
        """The body at `url` (following redirects), at most `limit` bytes.

        Raises:
            UrlRefusedError: A rule refuses the URL, a redirect or an address.
            UrlFetchError: Unreachable, an answer other than 200, too slow, or no turn.
            ImageUrlTooLargeError: More than `limit` bytes (declared or streamed).
        """
        with self._deadline() as deadline, self._turn(deadline, "image_url could not be fetched"):
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
            UrlFetchError: Unreachable, too slow, or no turn.
        """
        with self._deadline() as deadline, self._turn(deadline, "webhook not delivered"):
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
