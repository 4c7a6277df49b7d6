"""HTTP/1.1 as a sans-I/O state machine: bytes in, events out; events in, bytes out.

Why it has this shape
---------------------
One parser serves the server (it reads requests, writes responses) and the client (the
reverse), because request smuggling lives in the gaps between two parsers that disagree.  The
rules are strict on purpose (RFC 9112, and the CVEs listed in shared/notes/reliability.md):

  * lines end in CRLF; a bare CR or LF inside the head is an error, not a line end;
  * field names are RFC 9110 tokens right before the colon (no whitespace, no obs-fold);
    field values hold no CR, LF, NUL or other control byte but HTAB;
  * Content-Length is `1*DIGIT` (Python's int() would take "+5", " 5", "5_0"); a list, or two
    headers that differ, is refused; Content-Length with Transfer-Encoding is refused;
  * Transfer-Encoding must be exactly `chunked`: another coding is 501, chunked not last 400;
  * a chunk size is 1-16 hex digits, its line is bounded, the CRLF after the data is checked,
    trailers are parsed like headers and bounded like them.

Every buffer has a bound, with the status a server should answer (414, 431, 413); errors are
RemoteProtocolError (the peer's fault, with `error_status_hint`) or LocalProtocolError (ours), and
leave the connection in ERROR: it is never reused.

Events are returned eagerly from `receive_data` (one call per recv, no per-event method call),
and parsing stops at the end of each message until `start_next_cycle()`, which returns the
events of pipelined bytes already buffered: a server answers requests strictly in order, and
never parses request N+1 while N is being answered (Twisted CVE-2023-46137).  `receive_data(b"")`
means the peer closed.  The head is parsed in one pass over the whole block once its blank line
has arrived; the search for it resumes where the last one stopped, so a head that arrives a byte
at a time costs O(n), not O(n^2).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .base import LocalProtocolError, RemoteProtocolError

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_BODY = 16 * 1024 * 1024
MAX_CHUNK_LINE = 1024
MAX_INFORMATIONAL = 10          # 1xx responses before the real one (CVE-2021-3737)

Headers = list  # list[tuple[bytes, bytes]]: lower-cased names, values as sent, in order

# -- events ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    """A request head."""
    method: bytes
    target: bytes
    headers: Headers = field(default_factory=list)
    http_version: bytes = b"1.1"


@dataclass(slots=True)
class InformationalResponse:
    """A 1xx response head (100 Continue, ...)."""
    status_code: int
    headers: Headers = field(default_factory=list)
    reason: bytes = b""
    http_version: bytes = b"1.1"


@dataclass(slots=True)
class Response:
    """A final response head."""
    status_code: int
    headers: Headers = field(default_factory=list)
    reason: bytes = b""
    http_version: bytes = b"1.1"


@dataclass(slots=True)
class Data:
    """A piece of a message body."""
    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    """The body is complete; headers holds the trailers of a chunked body."""
    headers: Headers = field(default_factory=list)


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed its side, between messages."""


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of a (lower-case) header, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _items(values: list[bytes] | None) -> list[bytes]:
    """Comma-separated items across repeated values, lower-cased and stripped."""
    if not values:
        return []
    return [item.strip().lower() for value in values for item in value.split(b",") if item.strip()]


def get_list(headers: Headers, name: bytes) -> list[bytes]:
    """All comma-separated items of a header, across repeats, lower-cased and stripped."""
    items = []
    for key, value in headers:
        if key == name:
            items += [item.strip().lower() for item in value.split(b",") if item.strip()]
    return items


# -- states ---------------------------------------------------------------------------------------

IDLE, BODY, DONE, MUST_CLOSE, CLOSED, ERROR = "IDLE", "BODY", "DONE", "MUST_CLOSE", "CLOSED", "ERROR"

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
# A whole header block (each line with its CRLF) is validated by one regex and taken apart by
# one findall: two C calls per head, whatever the number of fields.
_HEADER_BLOCK = re.compile(rb"(?:" + _TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
# (Greedy, then one step back to the value's last non-blank byte: a lazy `*?` here costs a
# retry at every byte of every value.)
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:[^\r]*[^\r \t])?)[ \t]*\r\n")
# The fields that decide framing and connection handling, collected in the same pass.
_SPECIAL = frozenset({b"host", b"connection", b"content-length", b"transfer-encoding", b"expect"})
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])")
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
# The common request, recognised by one C call: HTTP/1.1 and a valid header block; the field
# loop of receive_simple() then hands anything with a field that changes framing or connection
# handling (Content-Length, Transfer-Encoding, Connection, Expect) or without exactly one Host
# to the general parser.  Everything it accepts the general parser accepts with the same result
# (tests/protocols/test_http_fast.py checks that they agree).
_SIMPLE_REQUEST = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/1\.1\r\n(" + _HEADER_BLOCK.pattern
                             + rb")\r\n")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _reason(status: int, reason: bytes) -> bytes:
    """The reason phrase to send: the standard one, or the caller's if it holds no CR, LF or
    other control byte (a reason with CRLF would let an application inject headers)."""
    if not reason:
        return _REASONS.get(status, b"")
    if _FIELD_VALUE_BAD.search(reason):
        raise LocalProtocolError(f"invalid reason phrase {reason!r}")
    return reason
_REASONS = {100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created",
            202: b"Accepted", 204: b"No Content", 206: b"Partial Content",
            301: b"Moved Permanently", 302: b"Found", 303: b"See Other", 304: b"Not Modified",
            307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request",
            401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
            405: b"Method Not Allowed", 408: b"Request Timeout", 411: b"Length Required",
            413: b"Content Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
            417: b"Expectation Failed", 418: b"I'm a teapot", 422: b"Unprocessable Content",
            429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
            503: b"Service Unavailable", 504: b"Gateway Timeout",
            505: b"HTTP Version Not Supported"}


_STATUS_LINES: dict[int, bytes] = {}                       # status -> its line as respond() sends it

# Header fields already checked by respond(): most responses repeat the same few.
_valid_fields: dict[tuple[bytes, bytes], bytes] = {}     # field -> its line as sent


def _partial_terminator(buf: bytearray) -> int:
    """How many bytes at the end of buf could be the start of a CRLF or CRLFCRLF."""
    for tail in (b"\r\n\r", b"\r\n", b"\r"):
        if buf.endswith(tail):
            return len(tail)
    return 0


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase for a status code (b"" if unknown)."""
    return _REASONS.get(status, b"")


class _Connection:
    """What both roles share: the receive buffer, head and body parsing, body framing."""

    def __init__(self, *, max_request_line: int = MAX_REQUEST_LINE,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_headers: int = MAX_HEADERS,
                 max_body: int = MAX_BODY) -> None:
        self.max_request_line, self.max_header_bytes = max_request_line, max_header_bytes
        self.max_headers, self.max_body = max_headers, max_body
        self._buf = bytearray()
        self._scan = 0                  # where the search for the end of the head resumes
        self._eof = False
        self.their_state = IDLE
        self.our_state = IDLE
        self.keep_alive = True
        # receiving a body: "length" (bytes left), "chunked", "close" (until EOF)
        self._body_kind = ""
        self._left = 0
        self._chunk_state = ""          # "size", "data", "crlf", "trailer"
        self._received = 0
        # sending a body
        self._send_kind = ""
        self._send_left = 0

    @property
    def trailing_data(self) -> int:
        """Bytes received but not parsed yet (pipelined messages wait here)."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> list:
        """Feed what the socket read (b"" when the peer closed); returns the events it made."""
        if self.their_state is ERROR:
            raise RemoteProtocolError("cannot receive after a protocol error")
        if (self.their_state is IDLE and not self._buf and data[-4:] == b"\r\n\r\n"
                and len(data) <= self.max_header_bytes and data[:2] != b"\r\n"
                and data.find(b"\r\n\r\n") == len(data) - 4):
            # The common case: exactly one whole head in one read, nothing buffered.  Parsed
            # in place: no copy through the buffer, and a body-less message ends right here.
            events: list = []
            try:
                self._take_head(data[:-2], events)
                if self._body_kind == "length" and not self._left:
                    self._message_done(events, [])
            except RemoteProtocolError:
                self.their_state = ERROR
                raise
            return events
        if data:
            self._buf += data
        else:
            self._eof = True
        try:
            return self._parse()
        except RemoteProtocolError:
            self.their_state = ERROR
            raise

    def _parse(self) -> list:
        events: list = []
        while True:
            state = self.their_state
            if state is IDLE:
                if not self._parse_head(events):
                    break
            elif state is BODY:
                if not self._parse_body(events):
                    break
            else:
                break
        if self._eof and self.their_state is IDLE and not self._buf:
            self.their_state = CLOSED
            events.append(ConnectionClosed())
        return events

    # -- heads ---------------------------------------------------------------------------------

    def _parse_head(self, events: list) -> bool:
        buf = self._buf
        if buf[:1] == b"\r":                   # RFC 9112 2.2: ignore CRLF before a request line
            while buf[:2] == b"\r\n":
                del buf[:2]
            self._scan = 0
            if buf == b"\r":
                return False
        end = buf.find(b"\r\n\r\n", max(0, self._scan - 3))
        if end < 0:
            self._scan = len(buf)
            # Line-end bytes that arrived are not counted against a limit, so a message exactly
            # at its limit is accepted however the reads cut it.
            size = len(buf) - _partial_terminator(buf)
            if buf.find(b"\r\n") < 0 and size > self.max_request_line:
                raise RemoteProtocolError("request line too long", 414)
            if size > self.max_header_bytes:
                raise RemoteProtocolError("header block too large", 431)
            if self._eof and buf:
                raise RemoteProtocolError("connection closed in the middle of a head")
            return False
        if end > self.max_header_bytes:
            raise RemoteProtocolError("header block too large", 431)
        head = bytes(buf[:end + 2])                 # each line with its CRLF
        del buf[:end + 4]
        self._scan = 0
        self._take_head(head, events)
        return True

    def _take_head(self, head: bytes, events: list) -> None:
        """Parse a head (every line with its CRLF, without the blank line) into an event."""
        first = head.find(b"\r\n")
        block = head[first + 2:]
        if block and _HEADER_BLOCK.fullmatch(block) is None:
            for line in block.split(b"\r\n")[:-1]:
                if _HEADER.fullmatch(line) is None:
                    if line[:1] in (b" ", b"\t"):
                        raise RemoteProtocolError("obsolete line folding")
                    raise RemoteProtocolError("malformed header field")
            raise RemoteProtocolError("malformed header block")
        pairs = _FIELD.findall(block)
        if len(pairs) > self.max_headers:
            raise RemoteProtocolError("too many header fields", 431)
        headers, special = [], {}
        for name, value in pairs:
            name = name.lower()
            headers.append((name, value))
            if name in _SPECIAL:
                if name in special:
                    special[name].append(value)
                else:
                    special[name] = [value]
        self._head_received(head[:first], headers, special, events)

    @staticmethod
    def _content_length(values: list[bytes] | None) -> int | None:
        if not values:
            return None
        if any(value != values[0] for value in values) or not _DIGITS.fullmatch(values[0]):
            raise RemoteProtocolError("bad Content-Length")
        return int(values[0])

    def _body_framing(self, special: dict, http_version: bytes, may_close_delimit: bool) -> None:
        """Decide how the body that follows this head is framed (RFC 9112 6.3)."""
        has_te = b"transfer-encoding" in special
        codings = _items(special[b"transfer-encoding"]) if has_te else ()
        length = self._content_length(special[b"content-length"]) if b"content-length" in special else None
        if has_te:                          # present at all, even empty: it decides (RFC 9112 6.1)
            if not codings or any(not item.strip() for value in special[b"transfer-encoding"]
                                  for item in value.split(b",")):
                # empty list elements are legal (RFC 9110 5.6.1) but not worth a framing
                # disagreement with a front-end: Transfer-Encoding is taken exactly or refused
                raise RemoteProtocolError("empty Transfer-Encoding element")
            if length is not None:
                raise RemoteProtocolError("both Content-Length and Transfer-Encoding")
            if http_version == b"1.0":
                raise RemoteProtocolError("Transfer-Encoding in HTTP/1.0")
            if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                raise RemoteProtocolError("chunked is not the final transfer coding, once")
            if codings != [b"chunked"]:
                raise RemoteProtocolError("unsupported transfer coding", 501)
            self._body_kind, self._chunk_state = "chunked", "size"
        elif length is not None:
            if length > self.max_body:
                raise RemoteProtocolError("body too large", 413)
            self._body_kind, self._left = "length", length
        elif may_close_delimit:
            self._body_kind = "close"
            self.keep_alive = False
        else:
            self._body_kind, self._left = "length", 0
        self._received = 0

    # -- bodies --------------------------------------------------------------------------------

    def _parse_body(self, events: list) -> bool:
        kind, buf = self._body_kind, self._buf
        if kind == "length":
            if self._left:
                if not buf:
                    if self._eof:
                        raise RemoteProtocolError("connection closed in the middle of a body")
                    return False
                take = min(self._left, len(buf))
                events.append(Data(bytes(buf[:take]) if take < len(buf) else bytes(buf)))
                del buf[:take]
                self._left -= take
                if self._left:
                    return False
            self._message_done(events, [])
            return True
        if kind == "close":
            if buf:
                self._received += len(buf)
                if self._received > self.max_body:
                    raise RemoteProtocolError("body too large", 413)
                events.append(Data(bytes(buf)))
                del buf[:]
            if self._eof:
                self._message_done(events, [])
                return True
            return False
        return self._parse_chunked(events)

    def _parse_chunked(self, events: list) -> bool:
        buf = self._buf
        while True:
            state = self._chunk_state
            if state == "size":
                end = buf.find(b"\r\n", 0, MAX_CHUNK_LINE + 2)
                if end < 0:
                    if len(buf) - _partial_terminator(buf) > MAX_CHUNK_LINE:
                        raise RemoteProtocolError("chunk size line too long")
                    break
                m = _CHUNK_LINE.fullmatch(buf, 0, end)
                if m is None:
                    raise RemoteProtocolError("bad chunk size")
                size = int(m.group(1), 16)
                del buf[:end + 2]
                self._received += size
                if self._received > self.max_body:
                    raise RemoteProtocolError("body too large", 413)
                self._left = size
                self._chunk_state = "data" if size else "trailer"
            elif state == "data":
                if not buf:
                    break
                take = min(self._left, len(buf))
                events.append(Data(bytes(buf[:take])))
                del buf[:take]
                self._left -= take
                if self._left:
                    break
                self._chunk_state = "crlf"
            elif state == "crlf":
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise RemoteProtocolError("missing CRLF after chunk data")
                del buf[:2]
                self._chunk_state = "size"
            else:                                   # trailer section, ends at an empty line
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    self._message_done(events, [])
                    return True
                end = buf.find(b"\r\n\r\n")
                if end < 0 and len(buf) - _partial_terminator(buf) > self.max_header_bytes or (
                        end > self.max_header_bytes):
                    raise RemoteProtocolError("trailers too large", 431)
                if end < 0:
                    break
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[:end + 4]
                if len(lines) > self.max_headers:
                    raise RemoteProtocolError("too many trailer fields", 431)
                trailers = []
                for line in lines:
                    m = _HEADER.fullmatch(line)
                    if m is None:
                        raise RemoteProtocolError("malformed trailer field")
                    trailers.append((m.group(1).lower(), m.group(2)))
                self._message_done(events, trailers)
                return True
        if self._eof:
            raise RemoteProtocolError("connection closed in the middle of a chunked body")
        return False

    def _message_done(self, events: list, trailers: Headers) -> None:
        events.append(EndOfMessage(trailers))
        self.their_state = DONE if self.keep_alive else MUST_CLOSE

    # -- sending -------------------------------------------------------------------------------

    @staticmethod
    def _head_bytes(first_line: bytes, headers: Headers) -> bytearray:
        out = bytearray(first_line)
        for name, value in headers:
            if not _TOKEN_RE.fullmatch(name) or _FIELD_VALUE_BAD.search(value):
                raise LocalProtocolError(f"invalid header {name!r}: {value!r}")
            out += b"\r\n" + name + b": " + value
        out += b"\r\n\r\n"
        return out

    def _send_framing(self, headers: Headers, http_version: bytes, no_body: bool) -> Headers:
        """Choose how our body is framed; returns the headers to send.  Names are lower-cased;
        Transfer-Encoding and Connection are the framer's to write (an application's are taken
        as wishes: close is honoured); two Content-Lengths that differ, or one with
        Transfer-Encoding, are refused."""
        headers = [(name.lower(), value) for name, value in headers]
        lengths = {value for name, value in headers if name == b"content-length"}
        codings = [value for name, value in headers if name == b"transfer-encoding"]
        if len(lengths) > 1 or (lengths and codings):
            raise LocalProtocolError("conflicting Content-Length / Transfer-Encoding")
        if b"close" in get_list(headers, b"connection"):
            self.keep_alive = False
        headers = [(name, value) for name, value in headers
                   if name != b"transfer-encoding" and name != b"connection"]
        if lengths:
            length = next(iter(lengths))
            if not _DIGITS.fullmatch(length):
                raise LocalProtocolError("bad Content-Length")
            headers = [(n, v) for n, v in headers if n != b"content-length"] + [(b"content-length", length)]
        if no_body:
            self._send_kind, self._send_left = "none", 0
        elif lengths:
            self._send_kind, self._send_left = "length", int(next(iter(lengths)))
        elif http_version == b"1.1":
            self._send_kind = "chunked"
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            self._send_kind = "close"
            self.keep_alive = False
        if not self.keep_alive:
            headers.append((b"connection", b"close"))
        return headers

    def _send_data(self, data: bytes) -> bytes:
        kind = self._send_kind
        if kind == "length":
            if len(data) > self._send_left:
                raise LocalProtocolError("body longer than its Content-Length")
            self._send_left -= len(data)
            return data
        if kind == "chunked":
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if kind == "none":
            return b""
        return data

    def _send_end(self, trailers: Headers) -> bytes:
        kind = self._send_kind
        if kind == "length" and self._send_left:
            raise LocalProtocolError(f"body {self._send_left} bytes shorter than its Content-Length")
        self.our_state = DONE if self.keep_alive else MUST_CLOSE
        if kind == "chunked":
            return bytes(self._head_bytes(b"0", trailers)) if trailers else b"0\r\n\r\n"
        return b""

    def _reset_cycle(self) -> None:
        self.their_state = self.our_state = IDLE
        self._body_kind = self._send_kind = ""


class ServerConnection(_Connection):
    """The server's side: receives requests, sends responses."""

    def __init__(self, **limits: int) -> None:
        super().__init__(**limits)
        self.request: Request | None = None
        self.they_are_waiting_for_100_continue = False

    def receive_simple(self, data: bytes) -> Request | None:
        """The common case in one call: if data is exactly one whole request with no body and
        nothing is buffered, take it and return its Request (the exchange is then at
        their_state DONE, as after Request and EndOfMessage events); otherwise take nothing and
        return None, and the caller feeds data to receive_data()."""
        if self.their_state is IDLE and not self._buf and len(data) <= self.max_header_bytes:
            m = _SIMPLE_REQUEST.fullmatch(data)
            if m is not None and m.start(3) - 2 <= self.max_request_line:
                method, target, block = m.groups()
                pairs = _FIELD.findall(block)
                if len(pairs) <= self.max_headers:
                    headers, hosts = [], 0
                    for name, value in pairs:
                        name = name.lower()
                        if name in _SPECIAL:
                            if name != b"host":
                                return None
                            hosts += 1
                        headers.append((name, value))
                    if hosts != 1:
                        return None
                    self.request = request = Request(method, target, headers)
                    self.keep_alive = True
                    self._body_kind, self._left, self._received = "length", 0, 0
                    self.they_are_waiting_for_100_continue = False
                    self.their_state = DONE
                    return request
        return None

    def receive_data(self, data: bytes) -> list:
        request = self.receive_simple(data)
        if request is not None:
            return [request, EndOfMessage([])]
        return super().receive_data(data)

    # For a caller that has just tried receive_simple(data) itself: the general parser alone.
    receive_general = _Connection.receive_data

    def _head_received(self, first: bytes, headers: Headers, special: dict, events: list) -> None:
        if len(first) > self.max_request_line:
            raise RemoteProtocolError("request line too long", 414)
        m = _REQUEST_LINE.fullmatch(first)
        if m is None:
            raise RemoteProtocolError("malformed request line")
        method, target, major, minor = m.groups()
        if major != b"1" or minor not in (b"0", b"1"):
            raise RemoteProtocolError("HTTP version not supported", 505)
        version = b"1." + minor
        hosts = special.get(b"host")
        if (hosts and len(hosts) > 1) or (version == b"1.1" and not hosts):
            raise RemoteProtocolError("a Host header is required, once")
        connection = _items(special[b"connection"]) if b"connection" in special else ()
        if version == b"1.1":
            self.keep_alive = b"close" not in connection
        else:
            self.keep_alive = b"keep-alive" in connection
        if b"content-length" in special or b"transfer-encoding" in special:
            self._body_framing(special, version, may_close_delimit=False)
        else:                                     # no body: the common GET
            self._body_kind, self._left, self._received = "length", 0, 0
        self.request = Request(method, target, headers, version)
        events.append(self.request)
        self.they_are_waiting_for_100_continue = version == b"1.1" and b"expect" in special and (
            self._left > 0 or self._body_kind == "chunked") and (
            b"100-continue" in _items(special[b"expect"]))
        self.their_state = BODY

    def send(self, event) -> bytes:
        """Bytes for a response event (InformationalResponse, Response, Data, EndOfMessage)."""
        kind = type(event)
        if kind is Data:
            return self._send_data(event.data)
        if kind is Response:
            if self.request is None or self.our_state is not IDLE:
                raise LocalProtocolError("no request to respond to")
            self.they_are_waiting_for_100_continue = False
            status = event.status_code
            if not 200 <= status <= 999:
                raise LocalProtocolError("a final response needs a status of 200 or more")
            if self.their_state is not DONE and self.their_state is not MUST_CLOSE:
                self.keep_alive = False       # answered before the body was read: cannot reuse
            no_body = self.request.method == b"HEAD" or status in (204, 304) or status < 200
            headers = self._send_framing(list(event.headers), self.request.http_version, no_body)
            if self.keep_alive and self.request.http_version == b"1.0":
                headers.append((b"connection", b"keep-alive"))
            self.our_state = BODY
            return bytes(self._head_bytes(b"HTTP/1.1 %d %s" % (status, _reason(status, event.reason)),
                                          headers))
        if kind is EndOfMessage:
            return self._send_end(event.headers)
        if kind is InformationalResponse:
            if not 100 <= event.status_code < 200:
                raise LocalProtocolError("informational responses are 1xx")
            self.they_are_waiting_for_100_continue = False
            return bytes(self._head_bytes(
                b"HTTP/1.1 %d %s" % (event.status_code, _reason(event.status_code, event.reason)),
                list(event.headers)))
        raise LocalProtocolError(f"a server cannot send {kind.__name__}")

    def respond(self, status: int, headers: Headers, body: bytes, reason: bytes = b"",
                trusted: bytes = b"") -> bytes:
        """A whole response, head and body, in one call: send(Response) + send(Data) +
        send(EndOfMessage) for a body already in memory, framed by Content-Length.  `trusted` is
        pre-formatted header lines the caller vouches for (Date, Server), spared validation."""
        request = self.request
        if request is None or self.our_state is not IDLE or status < 200:
            raise LocalProtocolError("no request to respond to, or a 1xx status")
        self.they_are_waiting_for_100_continue = False
        if self.their_state is not DONE and self.their_state is not MUST_CLOSE:
            self.keep_alive = False
        if reason:
            out = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status, reason))]
        else:
            line = _STATUS_LINES.get(status)
            if line is None:
                line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
                if 200 <= status <= 999:
                    _STATUS_LINES[status] = line
            out = [line]
        head_only = request.method == b"HEAD" or status == 304
        if status != 204 and (body or not head_only):
            out.append(b"content-length: %d\r\n" % len(body))
        valid = _valid_fields
        for field in headers:
            sent = valid.get(field)
            if sent is None:
                name, value = field
                if not _TOKEN_RE.fullmatch(name) or _FIELD_VALUE_BAD.search(value):
                    raise LocalProtocolError(f"invalid header {name!r}: {value!r}")
                name = name.lower()
                if name == b"content-length" or name == b"transfer-encoding":
                    raise LocalProtocolError("respond() frames the body itself")
                sent = b"" if name == b"connection" else b"%s: %s\r\n" % (name, value)
                if len(valid) < 4096:
                    valid[field] = sent
            if sent:
                out.append(sent)
            elif b"close" in _items([field[1]]):
                self.keep_alive = False             # the caller's Connection: close is honoured
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        elif request.http_version == b"1.0":
            out.append(b"connection: keep-alive\r\n")
        out.append(trusted)
        out.append(b"\r\n")
        if body and not head_only and status != 204:
            out.append(body)
        self.our_state = DONE if self.keep_alive else MUST_CLOSE
        return b"".join(out)

    def start_next_cycle(self) -> list:
        """After a complete exchange on a kept-alive connection: parse what is buffered."""
        if self.our_state is not DONE or self.their_state is not DONE:
            raise LocalProtocolError("the exchange is not complete, or the connection must close")
        self.their_state = self.our_state = IDLE
        self._body_kind = self._send_kind = ""
        self.request = None
        if not self._buf and not self._eof:
            return []
        try:
            return self._parse()
        except RemoteProtocolError:
            self.their_state = ERROR
            raise


# The common response, recognised by one C call: HTTP/1.1, a final status, exactly one
# Content-Length and no Transfer-Encoding or Connection field.  ClientConnection.receive_data
# takes it in one step when one read holds the whole head and exactly the announced body;
# anything else goes to the general parser, which agrees with it on everything it accepts
# (tests/protocols/test_client_core.py feeds both the same corpus).
_PLAIN_RESPONSE_FIELD = (rb"(?!(?i:content-length|transfer-encoding|connection):)" + _TOKEN
                         + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n")
_TARGET_BAD = re.compile(rb"[\x00-\x20\x7f]")
# Request fields that make ClientConnection.send choose the framing (and honour a close).
_REQUEST_FRAMING = frozenset({b"connection", b"content-length", b"transfer-encoding"})
_SIMPLE_RESPONSE = re.compile(
    rb"HTTP/1\.1 ([2-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\r\n"
    rb"((?:" + _PLAIN_RESPONSE_FIELD + rb")*(?i:content-length):[ \t]*([0-9]{1,19})[ \t]*\r\n"
    rb"(?:" + _PLAIN_RESPONSE_FIELD + rb")*)\r\n")


class ClientConnection(_Connection):
    """The client's side: sends requests, receives responses."""

    def __init__(self, **limits: int) -> None:
        super().__init__(**limits)
        self._method = b""
        self._informational = 0

    def receive_data(self, data: bytes) -> list:
        if self.their_state is IDLE and not self._buf and not self._eof and self._method != b"HEAD":
            m = _SIMPLE_RESPONSE.match(data)
            if m is not None:
                end, length, status = m.end(), int(m.group(4)), int(m.group(1))
                if (len(data) - end == length and end - 4 <= self.max_header_bytes
                        and length <= self.max_body and status != 204 and status != 304):
                    pairs = _FIELD.findall(m.group(3))
                    if len(pairs) <= self.max_headers:
                        events: list = [Response(status, [(name.lower(), value) for name, value in pairs],
                                                 m.group(2) or b"", b"1.1")]
                        if length:
                            events.append(Data(data[end:]))
                        events.append(EndOfMessage([]))
                        self._body_kind, self._left, self._received = "length", 0, 0
                        self.their_state = DONE if self.keep_alive else MUST_CLOSE
                        return events
        return super().receive_data(data)

    def send(self, event) -> bytes:
        """Bytes for a request event (Request, Data, EndOfMessage)."""
        kind = type(event)
        if kind is Data:
            return self._send_data(event.data)
        if kind is Request:
            if self.our_state is not IDLE:
                raise LocalProtocolError("a request is already in progress")
            if event.http_version not in (b"1.0", b"1.1"):
                raise LocalProtocolError("HTTP version must be 1.0 or 1.1")
            if (not _TOKEN_RE.fullmatch(event.method) or not event.target
                    or _TARGET_BAD.search(event.target)):
                raise LocalProtocolError("invalid method or target")
            self._method = event.method
            self._informational = 0
            headers = list(event.headers)
            framing = [low for name, _ in headers if (low := name.lower()) in _REQUEST_FRAMING]
            if not framing:
                self._send_kind, self._send_left = "length", 0    # no body (RFC 9112 6.3)
            elif b"content-length" in framing or b"transfer-encoding" in framing:
                headers = self._send_framing(headers, event.http_version, no_body=False)
            else:                                                 # Connection only: no body
                headers = self._send_framing(headers, event.http_version, no_body=True)
                self._send_kind, self._send_left = "length", 0
            self.our_state = BODY
            return bytes(self._head_bytes(b"%s %s HTTP/%s" % (event.method, event.target,
                                                             event.http_version), headers))
        if kind is EndOfMessage:
            return self._send_end(event.headers)
        raise LocalProtocolError(f"a client cannot send {kind.__name__}")

    def _head_received(self, first: bytes, headers: Headers, special: dict, events: list) -> None:
        m = _STATUS_LINE.fullmatch(first)
        if m is None:
            raise RemoteProtocolError("malformed status line")
        major, minor, status, reason = m.groups()
        if major != b"1":
            raise RemoteProtocolError("HTTP version not supported", 505)
        status, version = int(status), b"1." + minor
        if status < 200:
            self._informational += 1
            if self._informational > MAX_INFORMATIONAL:
                raise RemoteProtocolError("too many informational responses")
            events.append(InformationalResponse(status, headers, reason or b"", version))
            return                                    # still IDLE: the real response follows
        connection = _items(special.get(b"connection"))
        if b"close" in connection or (version == b"1.0" and b"keep-alive" not in connection):
            self.keep_alive = False
        events.append(Response(status, headers, reason or b"", version))
        if self._method == b"HEAD" or status in (204, 304):
            self._body_kind, self._left = "length", 0
            if b"transfer-encoding" in special and status in (204, 304):
                raise RemoteProtocolError("a body-less response with Transfer-Encoding")
        else:
            self._body_framing(special, version, may_close_delimit=True)
        self.their_state = BODY

    def start_next_cycle(self) -> list:
        """After a complete exchange on a kept-alive connection: ready for the next request."""
        if self.our_state is not DONE or self.their_state is not DONE:
            raise LocalProtocolError("the exchange is not complete, or the connection must close")
        self._reset_cycle()
        if not self._buf and not self._eof:
            return []
        try:
            return self._parse()
        except RemoteProtocolError:
            self.their_state = ERROR
            raise
