"""One connection of the HTTP client: the handler that moves its bytes through a
ClientConnection, and the exchange (one request and its response) it carries.

Why it has this shape
---------------------
`_ClientHandler` is a StreamHandler and nothing more than the glue between the socket and the
sans-I/O core (protocols/http.py): it sends a request (streaming a body that is not in memory,
paced by the write buffer's high-water mark), feeds what arrives to the core, and at the end of
the response hands the connection back to its pool, but only when both sides of the exchange
are DONE and no byte arrived past the response's end.  Anything else (a protocol error, a
timeout, a body longer than announced, a cancelled request, bytes on an idle connection) aborts
the connection, so it is never reused.  Reading goes on while an upload is held back, so an
early answer (413) is seen, and every send that moves bytes counts as activity for the read
timeout, so a slow but steady upload is not cut off.  A body framed by the connection's close
also ends at a TLS EOF without close_notify (Python's own servers never send one; urllib and
http.client accept it there, and only there).  Small body pieces are joined as they come, so
a body of a million 2-byte chunks costs its bytes, not a million objects.  The same class runs
under TLS: reactor/tls.py slides its layer in below it (its private names are kept apart from
the TLS layer's).
"""
from __future__ import annotations

import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any, Iterator

from reactor import StreamHandler

from .base import RemoteProtocolError
from .client_request import (URL, ConnectError, ConnectTimeout, HTTPClientError, InvalidRequest,
                             InvalidResponse)
from .http import BODY, DONE, ClientConnection, Data, EndOfMessage, Request
from .http import Response as _ResponseHead

if TYPE_CHECKING:
    from .client_conn import ConnectionPool

log = logging.getLogger(__name__)


class _Exchange:
    """One request/response on one connection (one hop of a call), and the call's context."""

    __slots__ = (
        # the call: shared by every hop of it
        "client", "future", "auth", "jar", "extract_into", "history", "allow_redirects",
        "max_redirects", "allow_downgrade", "connect_timeout", "read_timeout", "origin_host",
        "extra", "drop", "explicit_cookie",
        # this hop
        "method", "url", "body", "headers", "handler", "head", "data", "timer", "last",
        "received", "reused", "retried", "done", "addresses", "connector")

    def __init__(self) -> None:
        self.handler: _ClientHandler | None = None
        self.head: _ResponseHead | None = None
        self.data: bytes | bytearray | None = None      # the body so far: one piece, or joined
        self.connector = None            # the Connector while this hop's connection is made
        self.timer = None
        self.last = 0.0
        self.received = False            # a byte of the response arrived on this hop
        self.reused = self.retried = self.done = False
        self.addresses: list | None = None


class _ClientHandler(StreamHandler):
    """One connection: feeds the socket's bytes to a ClientConnection and reports to the client."""

    def __init__(self, sock: socket.socket, address: Any, client: ConnectionPool, key: tuple) -> None:
        super().__init__(sock, address)
        self.client, self.key = client, key
        self.conn = ClientConnection(max_body=client.max_body)
        self.exchange: _Exchange | None = None
        self.idle_since = 0.0
        self.connecting: _Exchange | None = None     # the exchange waiting for the TLS handshake
        self._body: Iterator[bytes] | None = None

    # -- sending ---------------------------------------------------------------------------------

    def start(self, ex: _Exchange) -> None:
        """Send ex's request on this (idle) connection."""
        self.exchange, ex.handler = ex, self
        ex.head, ex.data, ex.received = None, None, False
        reactor = self.reactor
        ex.last = reactor.now
        if ex.read_timeout is not None:
            ex.timer = reactor.call_later(ex.read_timeout, self.client._read_check, ex)
        conn, body = self.conn, ex.body
        try:
            head = conn.send(Request(ex.method, ex.url.target_bytes, ex.headers))
            if body is None:
                conn.send(EndOfMessage())
                self.write(head)
            elif type(body) is bytes:
                data = conn.send(Data(body))
                end = conn.send(EndOfMessage())
                if len(body) <= 16384:
                    self.write(head + data + end)
                else:
                    self.write(head)
                    self.write(data)
                    if end:
                        self.write(end)
            else:
                self._body = iter(body)
                self.write(head)
                if self.exchange is ex:
                    self._pump()
        except Exception as exc:        # the body broke its own framing (a file shrank), or
            self._body_failed(exc)      # reading it failed

    def _pump(self) -> None:
        """Send the streamed body while the kernel keeps up; resume_writing calls again."""
        ex, body = self.exchange, self._body
        if ex is None or body is None:
            return
        ex.last = self.reactor.now
        conn = self.conn
        while self.write_buffer_size <= self.high_water:
            if self.closing or self.exchange is not ex:
                return
            piece = next(body, None)
            if piece is None:
                self._body = None
                end = conn.send(EndOfMessage())
                if end:
                    self.write(end)
                return
            if piece:
                self.write(conn.send(Data(piece)))

    def handle_send(self) -> None:
        sent = self.bytes_out
        super().handle_send()
        ex = self.exchange
        if ex is not None and self.bytes_out != sent:
            ex.last = self.reactor.now  # the upload moves: the server is reading, not silent

    def pause_writing(self) -> None:
        """Our only producer is _pump, which watches the buffer itself: keep reading, so an
        early answer (413) is seen while the upload is held back."""

    def resume_writing(self) -> None:
        if self._body is not None:
            try:
                self._pump()
            except Exception as exc:
                self._body_failed(exc)

    def _body_failed(self, exc: Exception) -> None:
        ex = self.exchange
        url = ex.url.url if ex is not None else None
        err = InvalidRequest(f"cannot send the request body: {exc}", url)
        err.__cause__ = exc
        self._abandon(err)

    # -- receiving -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:                  # bytes while idle: nothing was asked, so it is broken
            log.warning("%r: %d unsolicited bytes on an idle connection; dropping it", self, len(data))
            self.abort()
            return
        ex.received = True
        ex.last = self.reactor.now
        try:
            events = self.conn.receive_data(data)
        except RemoteProtocolError as exc:
            if ex.reused and ex.head is None and self.client._replayable(ex):
                # No status line where this response should start: on a reused connection that
                # is the late excess of the previous response (longer than announced), not an
                # answer.  Drop the connection; send once more on a new one, as for a stale one.
                log.warning("%r: %s on a reused connection; retrying once", self, exc)
                self.exchange = None
                self._body = None
                self.abort()
                self.client._retry(ex)
                return
            self._abandon(InvalidResponse(f"invalid response from {ex.url.host_header}: {exc}",
                                          ex.url.url))
            return
        for event in events:
            kind = type(event)
            if kind is Data:
                _add_data(ex, event.data)
            elif kind is _ResponseHead:
                ex.head = event
            elif kind is EndOfMessage:
                self._complete(ex)
                return

    def eof_received(self) -> bool | None:
        ex = self.exchange
        if ex is not None and ex.received:
            try:
                events = self.conn.receive_data(b"")
            except RemoteProtocolError as exc:
                self._abandon(InvalidResponse(f"invalid response from {ex.url.host_header}: {exc}",
                                           ex.url.url))
                return None
            for event in events:
                if type(event) is Data:
                    _add_data(ex, event.data)
                elif type(event) is EndOfMessage:
                    self._complete(ex)
        return None                     # close; connection_lost reports what is left

    def _ended_by_close(self, ex: _Exchange) -> bool:
        """At a TLS EOF without close_notify: True if that ends ex's body, which only a body
        framed by the connection's close does (a short Content-Length or chunked body raises)."""
        conn = self.conn
        if ex.head is None or conn.their_state != BODY:
            return False
        try:
            events = conn.receive_data(b"")
        except RemoteProtocolError:
            return False
        for event in events:
            if type(event) is Data:
                _add_data(ex, event.data)
        return any(type(event) is EndOfMessage for event in events)

    def _complete(self, ex: _Exchange) -> None:
        """The response ended: reuse the connection if both sides are done and clean."""
        self.exchange = None
        conn = self.conn
        if conn.trailing_data:
            self.exchange = ex
            self._abandon(InvalidResponse(
                f"response from {ex.url.host_header} is longer than announced "
                f"({conn.trailing_data} bytes after its end)", ex.url.url))
            return
        if conn.our_state is DONE and conn.their_state is DONE:
            conn.start_next_cycle()
            self.client._release(self)
        elif conn.our_state is DONE:
            self.close()                # the server said close (or framed by close)
        else:
            self._body = None           # answered before our body was sent: stop sending
            self.abort()
        _deliver(ex)

    # -- failing ---------------------------------------------------------------------------------

    def _abandon(self, exc: HTTPClientError) -> None:
        """This exchange failed with exc: drop the connection, never reuse it."""
        ex, self.exchange = self.exchange, None
        self._body = None
        self.abort()
        if ex is not None:
            self.client._failed(ex, exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        ex, self.exchange = self.exchange, None
        pending, self.connecting = self.connecting, None
        self._body = None
        self.client._lost(self)
        if ex is not None and not ex.done:
            if isinstance(exc, ssl.SSLEOFError) and self._ended_by_close(ex):
                _deliver(ex)
            else:
                self.client._exchange_lost(ex, self, exc)
        elif pending is not None and not pending.done:      # the TLS handshake did not finish
            self.client._failed(pending, _connect_error(
                exc or ConnectionError("closed during the TLS handshake"), pending.url))

    def usable(self, now: float, idle_timeout: float) -> bool:
        return (self.exchange is None and not self.closing and self.conn.our_state == "IDLE"
                and now - self.idle_since < idle_timeout)


def _add_data(ex: _Exchange, data: bytes) -> None:
    """Keep a piece of the body: the first as it is, the rest joined into one bytearray."""
    got = ex.data
    if got is None:
        ex.data = data
    elif type(got) is bytearray:
        got += data
    else:
        ex.data = got = bytearray(got)
        got += data


def _deliver(ex: _Exchange) -> None:
    """Hand a complete response to the client; whatever goes wrong there still ends the call
    (a future left pending would hang a blocking caller for good)."""
    try:
        ex.client._response(ex)
    except Exception as exc:
        err = InvalidResponse(f"cannot handle the response from {ex.url.host_header}: {exc}",
                              ex.url.url)
        err.__cause__ = exc
        ex.client._failed(ex, err, force=True)


def _connect_error(exc: BaseException, url: URL) -> HTTPClientError:
    if isinstance(exc, HTTPClientError):
        return exc
    if isinstance(exc, TimeoutError):
        err: HTTPClientError = ConnectTimeout(f"connecting to {url.host_header} timed out ({exc})", url.url)
    elif isinstance(exc, ConnectionRefusedError):
        err = ConnectError(f"connection to {url.host_header} refused", url.url)
    else:
        err = ConnectError(f"cannot connect to {url.host_header}: {exc}", url.url)
    err.__cause__ = exc
    return err
