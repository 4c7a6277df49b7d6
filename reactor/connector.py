"""Outgoing connections without blocking the loop.

A non-blocking `connect()` returns EINPROGRESS; the socket turns writable when the attempt is
over, and `SO_ERROR` says how it went.  The Connector is a handler for exactly that wait; on
success it leaves the reactor *without* closing the socket and hands it to `factory(sock,
address)`, whose handler takes its place.  A deadline turns a silent peer into TimeoutError.

Names are resolved with `getaddrinfo`, which blocks: give an IP address (or resolve in a
thread) where a slow resolver matters.  The first address returned is tried.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from typing import Any, Callable

from .handler import EventHandler
from .timers import Timer
from .tls import start_tls

log = logging.getLogger(__name__)

_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY})


class Connector(EventHandler):
    """Waits for one non-blocking connect, then hands the socket to factory."""

    def __init__(self, sock: socket.socket, address: Any,
                 factory: Callable[[socket.socket, Any], EventHandler], *,
                 timeout: float | None = None,
                 on_connect: Callable[[EventHandler], Any] | None = None,
                 on_error: Callable[[BaseException], Any] | None = None) -> None:
        sock.setblocking(False)
        self.sock, self.address, self.factory = sock, address, factory
        self.timeout, self.on_connect, self.on_error = timeout, on_connect, on_error
        self.handler: EventHandler | None = None
        self.error: BaseException | None = None
        self._fd = sock.fileno()
        self._timer: Timer | None = None
        self._pending = True
        self._securing = False          # TLS: TCP is up, the handshake is not over (see _secure)

    def fileno(self) -> int:
        return self._fd

    def wants_to_send(self) -> bool:
        return self._pending

    def handle_added(self) -> None:
        if self.timeout is not None:
            self._timer = self.reactor.call_later(self.timeout, self._timed_out)
        try:
            err = self.sock.connect_ex(self.address)
        except (OSError, TypeError, ValueError) as exc:    # a bad address, a path too long
            self._failed(exc)
            return
        if err == 0:
            self._connected()
        elif err not in _IN_PROGRESS:
            self._failed(ConnectionRefusedError(err, os.strerror(err)) if err == errno.ECONNREFUSED
                         else OSError(err, os.strerror(err)))

    def handle_send(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            try:
                self.sock.getpeername()     # writable and no error, but is it connected yet?
            except OSError as exc:
                if exc.errno == errno.ENOTCONN:
                    return                  # a spurious wake-up: keep waiting
                self._failed(exc)
                return
            self._connected()
        elif err == errno.ECONNREFUSED:
            self._failed(ConnectionRefusedError(err, os.strerror(err)))
        else:
            self._failed(OSError(err, os.strerror(err)))

    def _connected(self) -> None:
        self._pending = False
        reactor = self.reactor
        reactor.remove(self)                  # unregisters; handle_close keeps the socket
        try:
            handler = self.factory(self.sock, self.address)
        except Exception as exc:
            self.sock.close()
            self._report_error(exc)
            return
        self.handler = handler
        reactor.add(handler)
        if self.on_connect is not None:
            self.on_connect(handler)

    def _failed(self, exc: BaseException) -> None:
        if self.reactor is not None:
            self.reactor.remove(self)       # unregisters, then handle_close closes the socket
        else:
            self.handle_close()
        self._report_error(exc)

    def _report_error(self, exc: BaseException) -> None:
        self.error = exc
        if self.on_error is not None:
            self.on_error(exc)
        else:
            log.warning("connect to %s failed: %s", self.address, exc)

    def _timed_out(self) -> None:
        self._timer = None
        if self._pending:
            self._failed(TimeoutError(f"connect to {self.address} timed out after {self.timeout} s"))

    def cancel(self) -> None:
        """Give up the attempt (no callback is called); over TLS the attempt lasts until the
        handshake is over, and cancelling it aborts the handler."""
        if self._pending:
            self.on_error = lambda exc: None
            self._failed(ConnectionAbortedError("connect cancelled"))
        elif self._securing:
            self._securing = False          # the handshake's end is reported to no one
            handler = self.handler
            if handler is not None:
                if getattr(handler, "_exc", None) is None:
                    handler._exc = ConnectionAbortedError("connect cancelled")
                handler.abort()

    def handle_close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:               # removed from outside while still connecting
            self._pending = False
            self.sock.close()


def connect_tcp(reactor, host: str, port: int, factory: Callable[[socket.socket, Any], EventHandler],
                *, ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                ssl_handshake_timeout: float | None = None, **options: Any) -> Connector:
    """Start connecting to host:port (IPv4 or IPv6); factory(sock, addr) builds the handler.

    With ssl_context the handler (any StreamHandler) runs client-side TLS, verifying
    server_hostname (default: host); on_connect is then called once the handshake succeeded,
    and on_error also receives a failed handshake (the handler's connection_lost does too)."""
    family, type_, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, type_, proto)
    connector = Connector(sock, sockaddr, factory, **options)
    if ssl_context is not None:
        _secure(connector, ssl_context, host if server_hostname is None else server_hostname,
                ssl_handshake_timeout)
    return reactor.add(connector)


def connect_unix(reactor, path: str, factory: Callable[[socket.socket, Any], EventHandler],
                 *, ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 ssl_handshake_timeout: float | None = None, **options: Any) -> Connector:
    """Start connecting to the Unix-domain stream socket at path (TLS as for connect_tcp, with
    server_hostname given explicitly when the context checks host names)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connector = Connector(sock, path, factory, **options)
    if ssl_context is not None:
        _secure(connector, ssl_context, server_hostname, ssl_handshake_timeout)
    return reactor.add(connector)


def _secure(connector: Connector, context: ssl.SSLContext, server_hostname: str | None,
            handshake_timeout: float | None) -> None:
    """Make the connector's handler speak TLS and hold on_connect until the handshake is done:
    a connection is not "made" for a client before the server proved who it is."""
    if context.check_hostname and not server_hostname:
        connector.sock.close()
        raise ValueError("the context checks host names: give server_hostname")
    plain_factory, on_connect = connector.factory, connector.on_connect
    connector.on_connect = None
    connector._securing = True

    def handshake_over(handler: EventHandler, exc: BaseException | None) -> None:
        if not connector._securing:
            return                          # cancelled
        connector._securing = False
        if exc is not None:
            connector._report_error(exc)
        elif on_connect is not None:
            on_connect(handler)

    def factory(sock: socket.socket, address: Any) -> EventHandler:
        return start_tls(plain_factory(sock, address), context, server_side=False,
                         server_hostname=server_hostname, handshake_timeout=handshake_timeout,
                         on_handshake=handshake_over)
    connector.factory = factory
