"""The HTTP client's connections: the per-origin keep-alive pool, and `open_stream`, the one
place where http:// and https:// part ways.

Why it has this shape
---------------------
`ConnectionPool` keeps kept-alive connections per origin (scheme, host, port), at most
max_per_host open at once; a request that finds none idle and no room waits in its origin's
queue and takes the next connection freed.  Connecting resolves a name at most once a minute
(getaddrinfo blocks the loop) and tries the addresses in turn while they refuse.  A request
whose kept-alive connection closes before any byte of the response arrived (the server timed it
out as we reused it) is sent once more on a new connection, if it is idempotent and its body
can be replayed.  The one read timer of an exchange is re-armed from the time of the last byte,
never reset per read.  Nothing is kept for an origin with no connection and no waiting request,
and a kept-alive connection idle past pool_idle_timeout is closed by one timer for the whole
pool (armed only while some connection is idle), so a long-lived client that met many hosts
holds neither sockets nor bookkeeping for them.  A Session, whose reactor turns only during a
call, turns that timer off and calls `close_expired()` before each call instead.

https:// goes through the reactor's TLS layer (reactor/tls.py), which verifies the certificate
and the host name by the client's SSLContext; on_connect comes only after the handshake, and
the handshake is bounded by the connect timeout.
"""
from __future__ import annotations

import collections
import logging
import socket
from typing import Any, Callable

from reactor import StreamHandler, connect_tcp
from reactor.core import Reactor

from .client_handler import _ClientHandler, _connect_error, _Exchange
from .client_request import (URL, ConnectError, HTTPClientError, ReadTimeout, RemoteDisconnected,
                             RequestCancelled, TLSUnavailable)

log = logging.getLogger(__name__)

MAX_PER_HOST = 32               # connections open to one origin at once; more requests wait
MAX_RESPONSE_BODY = 100 * 1024 * 1024
POOL_IDLE_TIMEOUT = 30.0        # a kept-alive connection idle longer is not reused
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})


def _tls_available() -> bool:
    """True if the reactor has its TLS layer (reactor/tls.py, issue 6)."""
    try:
        from reactor.tls import start_tls  # noqa: F401
    except ImportError:
        return False
    return True


def open_stream(reactor: Reactor, scheme: str, host: str, port: int,
                factory: Callable[[socket.socket, Any], StreamHandler], *, server_hostname: str,
                ssl_context: Any = None, timeout: float | None = None,
                on_connect: Callable[[Any], Any], on_error: Callable[[BaseException], Any]) -> Any:
    """Start one connection to host:port, the only place where http and https part ways: plain
    TCP, or TLS from reactor/tls.py verifying the certificate and server_hostname by
    ssl_context, the handshake bounded by the connect timeout; on_connect comes after it."""
    if scheme == "https":
        if not _tls_available():
            raise TLSUnavailable("TLS layer not available: reactor/tls.py is missing, so "
                                 f"https://{server_hostname} cannot be fetched")
        return connect_tcp(reactor, host, port, factory, ssl_context=ssl_context,
                           server_hostname=server_hostname, ssl_handshake_timeout=timeout,
                           timeout=timeout, on_connect=on_connect, on_error=on_error)
    return connect_tcp(reactor, host, port, factory, timeout=timeout,
                       on_connect=on_connect, on_error=on_error)


class ConnectionPool:
    """Connections per origin for the exchanges of one client; the client (a subclass) says what
    a finished exchange means in `_response`.  Runs on the reactor thread only."""

    def __init__(self, reactor: Reactor, *, max_per_host: int = MAX_PER_HOST,
                 max_body: int = MAX_RESPONSE_BODY, verify: bool | str = True,
                 ssl_context: Any = None, pool_idle_timeout: float = POOL_IDLE_TIMEOUT) -> None:
        self.reactor = reactor
        self.max_per_host, self.max_body = max_per_host, max_body
        self.verify, self._ssl_context = verify, ssl_context
        self.pool_idle_timeout = pool_idle_timeout
        # per origin, an entry only while it has something: never one per origin ever seen
        self._idle: dict[tuple, list[_ClientHandler]] = {}
        self._open: dict[tuple, int] = {}          # connections open or opening
        self._waiting: dict[tuple, collections.deque] = {}
        self._handlers: set[_ClientHandler] = set()
        self._connecting: set[_Exchange] = set()   # exchanges whose TCP connect is under way
        self._addresses: dict[tuple[str, int], tuple[float, list]] = {}
        self._closed = False
        self._idle_timer: Any = None
        self.idle_timer_enabled = True             # Session turns it off (see the top)
        self._starting = 0         # inside request(): completions defer their callbacks

    @property
    def connections(self) -> int:
        """Connections open or opening now (busy, idle, connecting)."""
        return sum(self._open.values())

    def close(self) -> None:
        """Close idle connections, abort busy ones and those still connecting (their requests
        fail), refuse new requests."""
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for queue in self._waiting.values():
            for ex in list(queue):
                self._failed(ex, RequestCancelled("client closed", ex.url.url))
        self._waiting.clear()
        for ex in list(self._connecting):          # nothing was sent: stop before it is
            self._connecting.discard(ex)
            connector, ex.connector = ex.connector, None
            if connector is not None:
                connector.cancel()                 # calls no callback
            self._forget_open(ex.url.key)
            self._failed(ex, RequestCancelled("client closed", ex.url.url))
        for handler in list(self._handlers):
            ex, pending = handler.exchange, handler.connecting
            if ex is not None:
                handler._abandon(RequestCancelled("client closed", ex.url.url))
            elif pending is not None:              # in the TLS handshake
                handler.connecting = None
                self._failed(pending, RequestCancelled("client closed", pending.url.url))
                handler.abort()
            else:
                handler.close()
        self._idle.clear()

    def close_expired(self) -> None:
        """Close the kept-alive connections idle for pool_idle_timeout or longer."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()       # called directly: the timer is re-armed below
            self._idle_timer = None
        now, limit = self.reactor.now, self.pool_idle_timeout
        expired: list[_ClientHandler] = []
        earliest = None
        for key, idle in list(self._idle.items()):
            keep = []
            for handler in idle:
                if now - handler.idle_since >= limit:
                    expired.append(handler)
                else:
                    keep.append(handler)
                    if earliest is None or handler.idle_since < earliest:
                        earliest = handler.idle_since
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        for handler in expired:
            handler.close()
        if earliest is not None:
            self._arm_idle_timer(earliest + limit - now)

    def _arm_idle_timer(self, delay: float) -> None:
        if self._idle_timer is None and self.idle_timer_enabled and not self._closed:
            self._idle_timer = self.reactor.call_later(delay, self.close_expired)

    def _response(self, ex: _Exchange) -> None:
        """A hop's response is complete (ex.head, ex.chunks): the client decides what follows."""
        raise NotImplementedError

    def _dispatch(self, ex: _Exchange, fresh: bool = False) -> None:
        """Give ex a connection: an idle one, a new one, or a place in the origin's queue."""
        key = ex.url.key
        if not fresh:
            idle = self._idle.get(key)
            if idle:
                now, limit = self.reactor.now, self.pool_idle_timeout
                while idle:
                    handler = idle.pop()
                    if not idle:
                        del self._idle[key]
                    if handler.usable(now, limit):
                        ex.reused = True
                        handler.start(ex)
                        return
                    handler.close()
        if self._open.get(key, 0) < self.max_per_host:
            self._connect(ex)
        else:
            self._waiting.setdefault(key, collections.deque()).append(ex)

    def _resolve(self, host: str, port: int) -> list:
        """getaddrinfo, remembered for a minute (it blocks; a numeric host costs nothing)."""
        now = self.reactor.now
        hit = self._addresses.get((host, port))
        if hit is not None and now - hit[0] < 60.0:
            return hit[1]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if len(self._addresses) > 256:
            self._addresses.clear()
        self._addresses[(host, port)] = (now, infos)
        return infos

    def _connect(self, ex: _Exchange) -> None:
        url = ex.url
        key = url.key
        self._open[key] = self._open.get(key, 0) + 1
        try:
            ex.addresses = list(self._resolve(url.host, url.port))
        except (OSError, UnicodeError) as exc:
            self._connect_failed(key)
            self._failed(ex, ConnectError(f"cannot resolve {url.host}: {exc}", url.url))
            return
        self._try_address(ex)

    def _try_address(self, ex: _Exchange) -> None:
        """Connect to the next address of ex's host; if refused, the one after (IPv6, IPv4)."""
        url = ex.url
        key = url.key
        ip = ex.addresses.pop(0)[4][0]
        made: list[_ClientHandler] = []

        def factory(sock: socket.socket, address: Any) -> _ClientHandler:
            self._connecting.discard(ex)
            ex.connector = None
            handler = _ClientHandler(sock, address, self, key)
            handler.connecting = ex
            self._handlers.add(handler)
            made.append(handler)
            return handler

        def connected(handler: _ClientHandler) -> None:
            handler.connecting = None
            if ex.done:
                self._release(handler)
            else:
                handler.start(ex)

        def failed(exc: BaseException) -> None:
            self._connecting.discard(ex)
            ex.connector = None
            if made:                    # TCP was up, TLS failed: the handler's close counts it
                made[0].connecting = None
                self._failed(ex, _connect_error(exc, url))
            elif not ex.done and ex.addresses and not isinstance(exc, TimeoutError):
                self._try_address(ex)
            else:
                self._connect_failed(key)
                self._failed(ex, _connect_error(exc, url))

        self._connecting.add(ex)
        try:
            connector = open_stream(self.reactor, url.scheme, ip, url.port, factory,
                                    server_hostname=url.host, ssl_context=self._tls_context(url),
                                    timeout=ex.connect_timeout, on_connect=connected,
                                    on_error=failed)
        except HTTPClientError as exc:
            self._connecting.discard(ex)
            self._connect_failed(key)
            self._failed(ex, exc)
        except (OSError, ValueError) as exc:
            failed(exc)
        else:                           # unless it already ended (or a retry replaced it)
            if ex in self._connecting and ex.connector is None and not made:
                ex.connector = connector

    def _tls_context(self, url: URL) -> Any:
        if url.scheme != "https":
            return None
        if self._ssl_context is None:
            import ssl
            verify = self.verify
            ctx = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl_context = ctx
        return self._ssl_context

    def _connect_failed(self, key: tuple) -> None:
        self._forget_open(key)
        self._next_waiting(key)

    def _forget_open(self, key: tuple) -> None:
        """One connection of this origin fewer; the origin's entry goes with its last one."""
        left = self._open[key] - 1
        if left:
            self._open[key] = left
        else:
            del self._open[key]

    def _next_waiting(self, key: tuple) -> None:
        queue = self._waiting.get(key)
        while queue and self._open.get(key, 0) < self.max_per_host:
            ex = queue.popleft()
            if not ex.done:
                self._connect(ex)
        if queue is not None and not queue:
            del self._waiting[key]

    def _release(self, handler: _ClientHandler) -> None:
        """A connection finished an exchange cleanly: the next waiting request, or the pool."""
        if self._closed:
            handler.close()
            return
        key = handler.key
        queue = self._waiting.get(key)
        while queue:
            ex = queue.popleft()
            if not queue:
                del self._waiting[key]
            if not ex.done:
                ex.reused = True
                handler.start(ex)
                return
        handler.idle_since = self.reactor.now
        self._idle.setdefault(key, []).append(handler)
        self._arm_idle_timer(self.pool_idle_timeout)

    def _lost(self, handler: _ClientHandler) -> None:
        """A connection closed (any way): forget it, and let a waiting request connect."""
        if handler not in self._handlers:
            return
        self._handlers.discard(handler)
        key = handler.key
        idle = self._idle.get(key)
        if idle and handler in idle:
            idle.remove(handler)
            if not idle:
                del self._idle[key]
        self._forget_open(key)
        if not self._closed:
            self._next_waiting(key)

    # -- outcomes ----------------------------------------------------------------------------------

    def _read_check(self, ex: _Exchange) -> None:
        """The read-timeout timer: fail ex if nothing arrived (or left) for read_timeout."""
        ex.timer = None
        handler = ex.handler
        if ex.done or handler is None or handler.exchange is not ex:
            return
        idle = self.reactor.time() - ex.last
        if idle >= ex.read_timeout:
            handler._abandon(ReadTimeout(f"no response from {ex.url.host_header} within "
                                      f"{ex.read_timeout:g} s", ex.url.url))
        else:
            ex.timer = self.reactor.call_later(ex.read_timeout - idle, self._read_check, ex)

    def _exchange_lost(self, ex: _Exchange, handler: _ClientHandler, exc: BaseException | None) -> None:
        """The connection closed under ex: retry once if nothing came back, else fail."""
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        nothing = not ex.received
        if nothing and ex.reused and self._replayable(ex):
            log.debug("%r: kept-alive connection closed under %s; retrying once", handler, ex.url)
            self._retry(ex)
            return
        what = "before sending a response" if nothing else "in the middle of the response"
        cause = f" ({exc})" if exc is not None else ""
        err = RemoteDisconnected(f"{ex.url.host_header} closed the connection {what}{cause}", ex.url.url)
        err.__cause__ = exc
        self._failed(ex, err)

    def _replayable(self, ex: _Exchange) -> bool:
        """True if ex may be sent once more: not yet retried, idempotent, its body replayable."""
        body = ex.body
        return (not ex.retried and ex.method in IDEMPOTENT
                and (body is None or type(body) is bytes or body.rewind()))

    def _retry(self, ex: _Exchange) -> None:
        """Send ex once more on a new connection (its old one is gone or going)."""
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        ex.retried = True
        ex.handler = None
        self._dispatch(ex, fresh=True)

    def _failed(self, ex: _Exchange, exc: BaseException, force: bool = False) -> None:
        """The call of ex fails with exc (force: even if ex was marked done on the way)."""
        if ex.done and not force:
            return
        ex.done = True
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        self._finish(ex.future, None, exc)

    def _finish(self, future: Any, result: Any, exc: BaseException | None) -> None:
        """Complete a call's future; inside request() its callbacks wait for call_soon, so
        that none runs before request() returned the future (as asyncio's never do)."""
        if self._starting:
            future._finish(result, exc, schedule=self.reactor.call_soon)
        else:
            future._finish(result, exc)

    def _cancel(self, ex: _Exchange) -> None:
        """future.cancel(): the exchange stops; a connection carrying it is aborted."""
        if ex.done:
            return
        ex.done = True
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        handler = ex.handler
        if handler is not None and handler.exchange is ex:
            handler.exchange = None
            handler.abort()
