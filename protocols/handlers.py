"""The thin glue between protocol cores and the reactor: move bytes, turn errors into closes.

Each handler owns one core and does nothing a core could do: it feeds what the socket read to
the core and writes what the core produced.  So the cores stay testable without sockets, and
this file stays short.
"""
from __future__ import annotations

import email.utils
import logging
import time

from reactor import StreamHandler
from reactor.timers import Timer

from .base import LocalProtocolError, RemoteProtocolError
from .framing import MAX_LINE, LineFramer
from .http import (DONE, IDLE, MUST_CLOSE, ConnectionClosed, Data, EndOfMessage, InformationalResponse,
                   Request, Response, ServerConnection, reason_phrase)

log = logging.getLogger(__name__)


class LineHandler(StreamHandler):
    """A stream of lines: override line_received; overlong lines close the connection."""

    max_line: int = MAX_LINE
    keepends: bool = False

    def connection_made(self) -> None:
        self.framer = LineFramer(self.max_line, self.keepends)

    def data_received(self, data: bytes) -> None:
        try:
            lines = self.framer.receive_data(data)
        except RemoteProtocolError as exc:
            log.warning("%r: %s, closing", self, exc)
            self.abort()
            return
        for line in lines:
            if self.closing:
                return
            self.line_received(line)

    def eof_received(self) -> bool | None:
        rest = self.framer.close()
        if rest and not self.closing:
            self.line_received(rest)
        return None

    def line_received(self, line: bytes) -> None:
        """One line arrived (without its newline unless keepends)."""


# -- HTTP/1.1 server --------------------------------------------------------------------------------

_date_cache = [0, b"", {}]


def http_date() -> bytes:
    """The Date header value, formatted once per second."""
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0], _date_cache[1] = now, email.utils.formatdate(now, usegmt=True).encode()
        _date_cache[2] = {}
    return _date_cache[1]


def _standard_fields(server: bytes, _time=time.time) -> bytes:
    """b"date: ...\\r\\nserver: ...\\r\\n", built once per second per server name (one call a
    response: it runs for every request)."""
    if int(_time()) == _date_cache[0]:
        lines = _date_cache[2].get(server)
        if lines is not None:
            return lines
    date = http_date()
    lines = _date_cache[2][server] = b"date: %s\r\nserver: %s\r\n" % (date, server)
    return lines


class HTTPServerHandler(StreamHandler):
    """One HTTP/1.1 server connection: override request_received(request, body) and answer with
    respond(), or with send_head() / send_body() / end_response() for a streamed body.

    Requests are answered strictly in order: the next pipelined request is parsed only when the
    response to this one has ended.  Deadlines: a request head must be complete header_timeout
    seconds after its first byte, a body body_timeout seconds after its head (neither is reset
    by each byte: a slowloris gains nothing), and an idle kept-alive connection is closed after
    keep_alive_timeout.  A framing error is answered with its status, then a lingering close."""

    server_header: bytes = b"reactor"
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 15.0
    send_timeout: float = 30.0              # a response that stops moving this long: reset
    max_pipelined: int = 64 * 1024          # unparsed bytes held before reading pauses
    limits: dict = {}                        # ServerConnection limits (max_body, ...)

    def connection_made(self) -> None:
        self.conn = ServerConnection(**self.limits)
        self._request: Request | None = None
        self._body: list[bytes] = []
        # The phase decides which deadline applies; it is stamped with the time only when a
        # callback ends in it (one attribute read per request, no timer churn).
        self._phase, self._phase_since = "idle", None
        self._deadline_timer: Timer | None = None
        self._held = False                   # reading paused by us for pipelined backlog
        self._handling = False               # inside _handle: a finished response only flags
        self._next_cycle = False             # ... that the next cycle is due (no recursion)
        self._cycle_deferred = False         # the next cycle waits for the peer to read
        self._timeouts = {"idle": self.keep_alive_timeout, "head": self.header_timeout,
                          "body": self.body_timeout, "app": self.send_timeout}
        self._progress = -1                  # bytes_out when the app phase was last checked
        self._stamp()

    # -- what applications override and call ------------------------------------------------------

    def request_received(self, request: Request, body: bytes) -> None:
        """A complete request arrived: answer it (now or later) with respond() or send_head()."""
        self.respond(404, [(b"content-type", b"text/plain")], b"Not Found\n")

    def respond(self, status: int, headers: list, body: bytes = b"", reason: bytes = b"") -> None:
        """Send a whole response in one write (Content-Length, Date and Server added)."""
        try:
            data = self.conn.respond(status, headers, body, reason,
                                     _standard_fields(self.server_header))
        except LocalProtocolError as exc:
            log.error("%r: cannot send response: %s", self, exc)
            self.abort()
            return
        self.write(data)
        self._response_done()

    def send_head(self, status: int, headers: list, reason: bytes = b"") -> None:
        """Start a response whose body follows in send_body() calls (chunked unless the
        headers give a Content-Length)."""
        self.write(self.conn.send(Response(status, [*headers, (b"date", http_date()),
                                                    (b"server", self.server_header)], reason)))

    def send_body(self, data: bytes) -> None:
        """Send a piece of the body."""
        if data:
            self.write(self.conn.send(Data(data)))

    def end_response(self) -> None:
        """The body is complete: the next pipelined request, if any, is parsed now."""
        self.write(self.conn.send(EndOfMessage()))
        self._response_done()

    # -- moving bytes ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._phase == "idle":
            # The common request (one whole body-less head in one read): straight to the
            # application, without the event loop of _handle.  The core decides what qualifies.
            request = self.conn.receive_simple(data)
            if request is not None:
                self._answer(request)
                return
            receive = self.conn.receive_general      # receive_simple said no: not again
        else:
            receive = self.conn.receive_data
        try:
            events = receive(data)
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        if events:
            self._handle(events)
        elif self._phase == "idle":          # the first bytes of a head: its deadline starts
            self._phase, self._phase_since = "head", None
        if self._phase_since is None:
            self._stamp()
        state = self.conn.their_state
        if (state is DONE and self.conn.trailing_data > self.max_pipelined
                or state is MUST_CLOSE and self.conn.trailing_data):   # nothing more is parsed
            self._held = True
            self.pause_reading()

    def _answer(self, request: Request) -> None:
        """request_received for a request that came whole, then the next cycle (as _handle)."""
        self._request = request
        self._phase, self._phase_since = "app", None
        self._handling = True
        try:
            self.request_received(request, b"")
        except Exception as exc:
            self._application_error(exc)
        self._handling = False
        if self._next_cycle:
            self._next_cycle = False
            events = self._start_next_cycle()
            if events:
                self._handle(events)
        if self._phase_since is None and not self.closing:
            self._stamp()

    def _handle(self, events: list) -> None:
        """Process events.  A response that ends in here only flags the next cycle, which this
        loop then starts: a thousand pipelined requests iterate, they do not recurse."""
        self._handling = True
        try:
            while events:
                self._handle_batch(events)
                events = []
                if self._next_cycle:
                    self._next_cycle = False
                    events = self._start_next_cycle()
        finally:
            self._handling = False
        if self._phase_since is None and not self.closing:
            self._stamp()

    def _handle_batch(self, events: list) -> None:
        for event in events:
            kind = type(event)
            if kind is Request:
                self._request, self._body = event, []
                if self.conn.they_are_waiting_for_100_continue:
                    self.write(self.conn.send(InformationalResponse(100)))
                self._phase, self._phase_since = "body", None
            elif kind is Data:
                self._body.append(event.data)
            elif kind is EndOfMessage:
                self._phase, self._phase_since = "app", None
                body = b"".join(self._body) if self._body else b""
                self._body = []
                try:
                    self.request_received(self._request, body)
                except Exception as exc:
                    self._application_error(exc)
                return                       # nothing more is parsed until the response ends
            elif kind is ConnectionClosed:
                self.close()
                return

    def eof_received(self) -> bool | None:
        try:
            events = self.conn.receive_data(b"")
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return True
        if events:
            self._handle(events)
        # A client may half-close after its request: keep our side open to answer it.
        return self._phase == "app"

    def _response_done(self) -> None:
        conn = self.conn
        if conn.our_state is not DONE or conn.their_state is not DONE or self.closing:
            self.close()                     # Connection: close, or a body we never read
        elif self._write_paused:
            self._cycle_deferred = True      # a client that pipelines and does not read waits
        elif self._handling:
            self._next_cycle = True
        else:
            self._handle(self._start_next_cycle())

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._cycle_deferred:
            self._cycle_deferred = False
            self.reactor.call_soon(self._resume_cycle)

    def _resume_cycle(self) -> None:
        if not self.closing:
            self._handle(self._start_next_cycle())

    def _application_error(self, exc: Exception) -> None:
        """request_received raised: a 500 if no byte of the response went out, else a reset."""
        log.error("%r: error while answering a request", self, exc_info=exc)
        if self.closing:
            return
        if self.conn.our_state is IDLE:
            self.conn.keep_alive = False
            self.respond(500, [(b"content-type", b"text/plain")], b"Internal Server Error\n")
        else:
            self.abort()

    def _start_next_cycle(self) -> list:
        """Parse the next pipelined request, if its bytes are here."""
        conn = self.conn
        self._phase, self._phase_since = "idle", None
        if self._held:
            self._held = False
            self.resume_reading()
        try:
            events = conn.start_next_cycle()
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return []
        if not events:
            if conn.trailing_data:
                self._phase = "head"
            elif self._eof:
                self.close()
        return events

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        log.info("%r: bad request: %s", self, exc)
        if self.conn.our_state is IDLE and not self.closing:
            status = exc.error_status_hint
            body = f"{status} {reason_phrase(status).decode()}: {exc}\n".encode()
            self.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                       b"connection: close\r\ndate: %s\r\nserver: %s\r\n\r\n%s" % (
                           status, reason_phrase(status), len(body), http_date(),
                           self.server_header, body))
            self.close()                     # flush, half-close, drain: a lingering close
        else:
            self.abort()

    # -- deadlines --------------------------------------------------------------------------------

    def _stamp(self) -> None:
        """The current phase starts now: arm its deadline (none while the app answers)."""
        now = self._phase_since = self.reactor.now
        timeout = self._timeouts[self._phase]
        if timeout is not None:
            timer = self._deadline_timer
            if timer is None or timer.when > now + timeout:
                self._arm(now + timeout)

    def _arm(self, deadline: float) -> None:
        """One timer per connection: re-armed only when the new deadline is earlier than the
        armed one; a timer that fires early looks at the current phase and re-arms."""
        timer = self._deadline_timer
        if timer is not None:                # cleared when it fires
            if timer.when <= deadline:
                return
            timer.cancel()
        self._deadline_timer = self.reactor.call_at(deadline, self._deadline_check)

    def _deadline_check(self) -> None:
        self._deadline_timer = None
        if self.closing:
            return
        if self._phase == "app":
            # The application is answering.  Fine while it thinks (nothing queued) or while the
            # peer takes our bytes; a peer that stopped reading would hold the connection and
            # its queued response forever.
            if self.write_buffer_size and self.bytes_out == self._progress:
                log.info("%r: peer stopped reading for %.0f s, resetting", self, self.send_timeout)
                self._exc = TimeoutError("the peer stopped reading the response")
                self.abort()
                return
            self._progress = self.bytes_out
            self._arm(self.reactor.time() + self.send_timeout)
            return
        timeout = self._timeouts[self._phase]
        if self._phase_since is None:
            self._arm(self.reactor.time() + timeout)
            return
        deadline = self._phase_since + timeout
        if self.reactor.time() < deadline:
            self._arm(deadline)
        elif self._phase == "idle":
            self.close()
        else:
            self._protocol_error(RemoteProtocolError(f"request {self._phase} not received in time", 408))

    def handle_close(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        super().handle_close()
