"""Listener: the recipe's `TCPServer`, made to survive a hostile world.

* Accepts up to `accept_batch` connections per readable event: a connect storm drains in few
  turns, and one listener cannot starve the rest of the loop.
* Every accepted socket is made non-blocking (Linux `accept()` returns blocking sockets; the
  recipe's server does not fix that, so one slow peer would freeze its loop).
* Out of descriptors (EMFILE/ENFILE/ENOBUFS/ENOMEM) the listening socket stays readable, and a
  level-triggered loop would spin on it.  Like Twisted, the listener keeps one spare descriptor:
  it closes it, accepts the waiting peer, closes that peer at once (it gets a clean close, not a
  hang), reopens the spare, and then stops listening for `backoff` seconds (asyncio backs off
  too).  Wake-ups are thus bounded while the table is full, and accepting resumes by itself.
* ECONNABORTED, EPERM and EPROTO concern one peer only: skip it and go on.
* `max_connections`: at the limit `wants_to_receive()` turns False, so the kernel's backlog holds
  the rest; it turns True again when a connection ends (waitress does the same).
* `allow`/`deny`: CIDR lists (recipe 11.4).  Deny wins; with an allow list a peer must match
  it.  IPv4-mapped IPv6 peers (``::ffff:10.0.0.1``) are judged by their IPv4 address.  A refused
  peer is reset at once, before any handler exists for it.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import stat
import struct
from typing import Any, Callable, Iterable

from .handler import EventHandler
from .networks import Network, parse_networks, peer_allowed   # re-exported: the listener's rules
from .tls import tls_server_factory

log = logging.getLogger(__name__)

# Errors that concern one peer only (accept(2): treat the network ones like EAGAIN).
ACCEPT_SKIP = frozenset(getattr(errno, name) for name in (
    "ECONNABORTED", "EPERM", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
    "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH") if hasattr(errno, name))
ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Listener(EventHandler):
    """A listening socket that builds one handler per accepted connection; close() stops
    accepting and leaves the connections already made alone."""

    accept_batch = 128
    backoff = 0.1
    ssl_context: ssl.SSLContext | None = None    # set by listen_tcp: its handlers speak TLS

    def __init__(self, sock: socket.socket, factory: Callable[[socket.socket, Any], EventHandler],
                 *, max_connections: int | None = None,
                 allow: Iterable[str | Network] | None = None,
                 deny: Iterable[str | Network] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.factory = factory
        self.max_connections = max_connections
        self.allow, self.deny = parse_networks(allow), parse_networks(deny)
        self.connections: set[EventHandler] = set()
        self.refused = 0
        self._fd = sock.fileno()
        self._backing_off = False
        self._backoff_timer = None
        self._closed = False
        self._unlink_path: str | None = None
        self._spare: int | None = self._open_spare()

    @property
    def address(self) -> Any:
        """The bound address (host, port) or the Unix path."""
        return self.sock.getsockname()

    def fileno(self) -> int:
        return self._fd

    def wants_to_receive(self) -> bool:
        return not (self._closed or self._backing_off) and self.has_room()

    def _at_limit(self) -> bool:
        return self.max_connections is not None and len(self.connections) >= self.max_connections

    def handle_receive(self) -> None:
        reactor = self.reactor
        for _ in range(self.accept_batch):
            if self._closed or not self.has_room():
                return
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                reactor._accept_errors += 1
                if exc.errno in ACCEPT_SKIP:
                    continue
                if exc.errno in ACCEPT_EXHAUSTED:
                    self._out_of_descriptors(exc)
                    return
                raise
            reactor._accepts += 1
            conn.setblocking(False)
            if (self.allow or self.deny) and not peer_allowed(
                    addr[0] if isinstance(addr, tuple) else "", self.allow, self.deny):
                self.refused += 1
                log.warning("refused connection from %r", addr)
                reset(conn)
                continue
            self.accepted(conn, addr)

    def has_room(self) -> bool:
        """May another connection be accepted now?  (Below max_connections by default.)"""
        return not self._at_limit()

    def accepted(self, conn: socket.socket, addr: Any) -> None:
        """An allowed, non-blocking connection: serve it (override to send it elsewhere, as the
        worker acceptor does).  A factory that fails resets that peer only."""
        try:
            handler = self.factory(conn, addr)
        except Exception as exc:            # that peer's problem (it may already be gone)
            log.error("cannot build a handler for %r: %s", addr, exc, exc_info=exc)
            reset(conn)
            return
        handler.listener = self
        self.connections.add(handler)
        self.reactor.add(handler)

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copy of the spare descriptor too."""
        if self._spare is not None:
            try:
                os.close(self._spare)
            except OSError:
                pass
            self._spare = None

    def connection_closed(self, handler: EventHandler) -> None:
        """A connection built here has ended (called by the handler's close path)."""
        at_limit = self._at_limit()
        self.connections.discard(handler)
        if at_limit and self.reactor is not None and not self._closed:
            self.reactor.update(self)

    def _out_of_descriptors(self, exc: OSError) -> None:
        log.warning("accept failed (%s): dropping waiting peers, pausing %.2f s", exc, self.backoff)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            try:
                for _ in range(self.accept_batch):
                    conn, _ = self.sock.accept()
                    reset(conn)
            except OSError:
                pass
            self._spare = self._open_spare()
        self._backing_off = True
        self._backoff_timer = self.reactor.call_later(self.backoff, self._resume)

    def _resume(self) -> None:
        self._backing_off, self._backoff_timer = False, None
        if self._closed:
            return
        if self._spare is None:
            self._spare = self._open_spare()
        if self.reactor is not None and not self._closed:
            self.reactor.update(self)

    @staticmethod
    def _open_spare() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def handle_error(self, exc: BaseException) -> None:
        """An unexpected accept error: log it and keep listening (one peer must not end the
        service); a closed or broken listening socket is the exception."""
        if isinstance(exc, OSError) and exc.errno in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
            super().handle_error(exc)
        else:
            log.error("%r: accept failed, still listening", self, exc_info=exc)

    def handle_close(self) -> None:
        self._closed = True
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        self.sock.close()
        if self._unlink_path:
            try:
                os.unlink(self._unlink_path)
            except OSError:
                pass
            self._unlink_path = None

    def __repr__(self) -> str:
        return f"<Listener fd={self._fd} connections={len(self.connections)}>"


def reset(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()


def listen_tcp(reactor, host: str | None, port: int, factory: Callable[[socket.socket, Any], EventHandler],
               *, backlog: int = 4096, reuse_port: bool = False,
               ssl_context: ssl.SSLContext | None = None, ssl_handshake_timeout: float | None = None,
               **options: Any) -> Listener:
    """Bind host:port (IPv4 or IPv6; port 0 picks one) and serve factory(sock, addr) handlers.

    The backlog is large on purpose: with asyncio's 100 a burst of connects overflows it and the
    kernel retransmits SYNs a second later (measured: 30-40 s for 10,000 connects vs 0.3 s).
    With ssl_context (a server-side SSLContext) every handler the factory makes, any
    StreamHandler, runs over TLS (reactor.tls)."""
    factory = _secure(factory, ssl_context, ssl_handshake_timeout)
    family, type_, proto, _, sockaddr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        listener = Listener(sock, factory, **options)
        listener.ssl_context = ssl_context
        return reactor.add(listener)
    except BaseException:
        sock.close()
        raise


def _secure(factory: Callable[[socket.socket, Any], EventHandler],
            ssl_context: ssl.SSLContext | None,
            handshake_timeout: float | None) -> Callable[[socket.socket, Any], EventHandler]:
    if ssl_context is None:
        return factory
    return tls_server_factory(factory, ssl_context, handshake_timeout)


def listen_unix(reactor, path: str, factory: Callable[[socket.socket, Any], EventHandler],
                *, backlog: int = 4096, ssl_context: ssl.SSLContext | None = None,
                ssl_handshake_timeout: float | None = None,
                **options: Any) -> Listener:
    """Serve on a Unix-domain stream socket at path (a stale socket file there is replaced);
    ssl_context as for listen_tcp."""
    factory = _secure(factory, ssl_context, ssl_handshake_timeout)
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
        listener = Listener(sock, factory, **options)
        listener._unlink_path = path
        listener.ssl_context = ssl_context
        return reactor.add(listener)
    except BaseException:
        sock.close()
        raise
