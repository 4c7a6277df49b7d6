"""The HTTP/1.1 core without sockets: both roles, every case fed whole, a byte at a time and split
at every position (h11's `tr`), so a partial read is the normal case and no split can change how
a message is framed; then a table of smuggling and malformed inputs, each refused with its status
and the core left in ERROR for good; then the sending side.

The table is shared with test_http_server.py, which sends each entry over a real socket.
"""
from __future__ import annotations

import pytest

from protocols.base import LocalProtocolError, RemoteProtocolError
from protocols.http import (CLOSED, DONE, ERROR, IDLE, MAX_CHUNK_LINE, MAX_INFORMATIONAL,
                            MUST_CLOSE, ClientConnection, ConnectionClosed, Data, EndOfMessage,
                            InformationalResponse, Request, Response, ServerConnection)

CRLF = b"\r\n"


# -- helpers ----------------------------------------------------------------------------------------

def merged(events: list) -> list:
    """Adjacent Data events joined: how a body is cut depends on the reads, nothing else does."""
    out: list = []
    for event in events:
        if type(event) is Data and out and type(out[-1]) is Data:
            out[-1] = Data(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def splits(wire: bytes):
    """(name, pieces): whole, cut in two at every position, and a byte at a time."""
    yield "whole", [wire]
    for i in range(len(wire) + 1):
        yield f"cut at {i}", [wire[:i], wire[i:]]
    yield "bytewise", [wire[i:i + 1] for i in range(len(wire))]


def answer(conn: ServerConnection) -> list:
    """Send an empty 200 for the current request; returns the next cycle's events, if any."""
    conn.send(Response(200, [(b"content-length", b"0")]))
    conn.send(EndOfMessage())
    return conn.start_next_cycle() if conn.our_state is DONE and conn.their_state is DONE else []


def drive(conn, pieces, eof: bool = False, events: list | None = None) -> list:
    """Feed pieces (an empty piece would mean EOF, so they are skipped), then EOF if asked.
    A server answers each complete request with an empty 200 and moves to the next cycle, so
    pipelined requests come out too.  Events are appended to `events` as they come, so a caller
    that catches an error still sees what came before it."""
    events = [] if events is None else events

    def take(new):
        events.extend(new)
        while (isinstance(conn, ServerConnection) and conn.our_state is IDLE
               and conn.their_state in (DONE, MUST_CLOSE)):
            new = answer(conn)
            events.extend(new)

    for piece in pieces:
        if piece:
            take(conn.receive_data(piece))
    if eof:
        take(conn.receive_data(b""))
    return events


def check(make_conn, wire: bytes, expected: list, eof: bool = False) -> None:
    """Every way of cutting wire gives the same events (Data merged)."""
    for name, pieces in splits(wire):
        try:
            got = merged(drive(make_conn(), pieces, eof))
        except RemoteProtocolError as exc:
            pytest.fail(f"{name}: {exc!r}")
        assert got == expected, name


def request_bytes(*lines: bytes, body: bytes = b"") -> bytes:
    return CRLF.join(lines) + CRLF + CRLF + body


def client_after(method: bytes = b"GET", **limits) -> ClientConnection:
    """A client that has sent a whole body-less request and waits for the response."""
    conn = ClientConnection(**limits)
    conn.send(Request(method, b"/", [(b"host", b"x")]))
    conn.send(EndOfMessage())
    return conn


# -- requests, server side ---------------------------------------------------------------------------

GET = request_bytes(b"GET /path?q=1 HTTP/1.1", b"Host: example.com", b"Accept: */*",
                    b"X-Spaces: \t a  b \t")


def test_get():
    check(ServerConnection, GET, [
        Request(b"GET", b"/path?q=1", [(b"host", b"example.com"), (b"accept", b"*/*"),
                                       (b"x-spaces", b"a  b")], b"1.1"),
        EndOfMessage()])


def test_get_then_eof_is_connection_closed():
    check(ServerConnection, GET, [Request(b"GET", b"/path?q=1", [
        (b"host", b"example.com"), (b"accept", b"*/*"), (b"x-spaces", b"a  b")]),
        EndOfMessage(), ConnectionClosed()], eof=True)


def test_post_with_content_length():
    wire = request_bytes(b"POST /form HTTP/1.1", b"Host: x", b"Content-Length: 11",
                         body=b"hello world")
    check(ServerConnection, wire, [
        Request(b"POST", b"/form", [(b"host", b"x"), (b"content-length", b"11")]),
        Data(b"hello world"), EndOfMessage()])


def test_chunked_with_extensions_and_trailers():
    wire = request_bytes(b"POST /up HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
                         body=b"5;name=value\r\nhello\r\n6 ; ext ; b=\"q\"\r\n world\r\n"
                              b"000A\r\n0123456789\r\n0;last\r\nX-Trailer: yes\r\nX-Other:  2 \r\n\r\n")
    check(ServerConnection, wire, [
        Request(b"POST", b"/up", [(b"host", b"x"), (b"transfer-encoding", b"chunked")]),
        Data(b"hello world0123456789"),
        EndOfMessage([(b"x-trailer", b"yes"), (b"x-other", b"2")])])


def test_chunked_without_trailers_then_pipelined_request():
    """The empty line that ends the trailer section is not taken for the start of anything."""
    wire = request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: Chunked",
                         body=b"3\r\nabc\r\n0\r\n\r\n") + request_bytes(b"GET /2 HTTP/1.1", b"Host: x")
    check(ServerConnection, wire, [
        Request(b"POST", b"/", [(b"host", b"x"), (b"transfer-encoding", b"Chunked")]),
        Data(b"abc"), EndOfMessage(),
        Request(b"GET", b"/2", [(b"host", b"x")]), EndOfMessage()])


def test_http10_without_keep_alive_must_close():
    wire = request_bytes(b"GET / HTTP/1.0")                 # no Host needed in 1.0
    check(ServerConnection, wire, [Request(b"GET", b"/", [], b"1.0"), EndOfMessage()])
    conn = ServerConnection()
    conn.receive_data(wire)
    assert not conn.keep_alive and conn.their_state is MUST_CLOSE
    head = conn.send(Response(200, [(b"content-length", b"0")]))
    assert b"\r\nconnection: close\r\n" in head
    conn.send(EndOfMessage())
    assert conn.our_state is MUST_CLOSE
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_http10_with_keep_alive():
    wire = request_bytes(b"GET /a HTTP/1.0", b"Connection: Keep-Alive") + request_bytes(
        b"GET /b HTTP/1.0", b"Connection: keep-alive")
    check(ServerConnection, wire, [
        Request(b"GET", b"/a", [(b"connection", b"Keep-Alive")], b"1.0"), EndOfMessage(),
        Request(b"GET", b"/b", [(b"connection", b"keep-alive")], b"1.0"), EndOfMessage()])
    conn = ServerConnection()
    conn.receive_data(wire)
    assert conn.keep_alive and conn.their_state is DONE
    head = conn.send(Response(200, [(b"content-length", b"0")]))
    assert b"\r\nconnection: keep-alive\r\n" in head


def test_connection_close_ends_the_connection_after_one_exchange():
    wire = request_bytes(b"GET / HTTP/1.1", b"Host: x", b"Connection: close") + request_bytes(
        b"GET /ignored HTTP/1.1", b"Host: x")
    check(ServerConnection, wire, [
        Request(b"GET", b"/", [(b"host", b"x"), (b"connection", b"close")]), EndOfMessage()])
    conn = ServerConnection()
    conn.receive_data(wire)
    assert conn.their_state is MUST_CLOSE
    assert b"\r\nconnection: close\r\n" in conn.send(Response(200, [(b"content-length", b"0")]))
    conn.send(EndOfMessage())
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


PIPELINE = (request_bytes(b"GET /1 HTTP/1.1", b"Host: x")
            + request_bytes(b"POST /2 HTTP/1.1", b"Host: x", b"Content-Length: 3", body=b"abc")
            + request_bytes(b"GET /3 HTTP/1.1", b"Host: x"))


def test_pipelined_requests_every_split():
    check(ServerConnection, PIPELINE, [
        Request(b"GET", b"/1", [(b"host", b"x")]), EndOfMessage(),
        Request(b"POST", b"/2", [(b"host", b"x"), (b"content-length", b"3")]), Data(b"abc"),
        EndOfMessage(),
        Request(b"GET", b"/3", [(b"host", b"x")]), EndOfMessage()])


def test_pipelined_request_comes_only_from_start_next_cycle():
    conn = ServerConnection()
    first = request_bytes(b"GET /1 HTTP/1.1", b"Host: x")
    assert conn.receive_data(PIPELINE) == [Request(b"GET", b"/1", [(b"host", b"x")]), EndOfMessage()]
    assert conn.their_state is DONE
    assert conn.trailing_data == len(PIPELINE) - len(first)
    assert conn.receive_data(b"more") == []                  # still not parsed: request 1 is open
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()                              # not answered yet
    conn.send(Response(200, [(b"content-length", b"0")]))
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()                              # answer not ended yet
    conn.send(EndOfMessage())
    assert conn.start_next_cycle() == [
        Request(b"POST", b"/2", [(b"host", b"x"), (b"content-length", b"3")]), Data(b"abc"),
        EndOfMessage()]
    assert answer(conn) == [Request(b"GET", b"/3", [(b"host", b"x")]), EndOfMessage()]
    assert answer(conn) == [] and conn.trailing_data == 4     # b"more": the start of a head
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"")                               # ... that never ends


def test_expect_100_continue():
    conn = ServerConnection()
    head = request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 5",
                         b"Expect: 100-continue")
    assert conn.receive_data(head) == [Request(b"POST", b"/", [
        (b"host", b"x"), (b"content-length", b"5"), (b"expect", b"100-continue")])]
    assert conn.they_are_waiting_for_100_continue
    assert conn.send(InformationalResponse(100)) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not conn.they_are_waiting_for_100_continue
    assert conn.receive_data(b"hello") == [Data(b"hello"), EndOfMessage()]
    answer(conn)
    assert conn.our_state is IDLE                            # kept alive


def test_expect_100_continue_every_split():
    wire = request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
                         b"Expect: 100-Continue", body=b"2\r\nhi\r\n0\r\n\r\n")
    for name, pieces in splits(wire):
        conn, waiting = ServerConnection(), []
        for piece in filter(None, pieces):
            for event in conn.receive_data(piece):
                if type(event) is Request:
                    waiting.append(conn.they_are_waiting_for_100_continue)
        assert waiting == [True], name


@pytest.mark.parametrize("wire", [
    request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 0", b"Expect: 100-continue"),
    request_bytes(b"GET / HTTP/1.1", b"Host: x", b"Expect: 100-continue"),
    request_bytes(b"POST / HTTP/1.0", b"Content-Length: 5", b"Expect: 100-continue"),
    request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 5"),
], ids=["empty-body", "no-body", "http10", "no-expect"])
def test_not_waiting_for_100_continue(wire):
    conn = ServerConnection()
    conn.receive_data(wire)
    assert not conn.they_are_waiting_for_100_continue


def test_final_response_before_the_body_cancels_100_and_keep_alive():
    """gevent#2075: once the final answer went out, no 100 may follow and the unread body may
    not be taken for the next request."""
    conn = ServerConnection()
    conn.receive_data(request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 5",
                                    b"Expect: 100-continue"))
    head = conn.send(Response(413, [(b"content-length", b"0")]))
    assert not conn.they_are_waiting_for_100_continue
    assert b"\r\nconnection: close\r\n" in head
    conn.send(EndOfMessage())
    assert conn.our_state is MUST_CLOSE


def test_leading_crlfs_before_a_request_line_are_ignored():
    """RFC 9112 2.2; checked at every split, since a CR and its LF may come in different reads."""
    wire = b"\r\n\r\n" + request_bytes(b"GET / HTTP/1.1", b"Host: x")
    check(ServerConnection, wire, [Request(b"GET", b"/", [(b"host", b"x")]), EndOfMessage()])


def test_crlf_between_pipelined_requests_is_ignored():
    wire = (request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 2", body=b"ab")
            + CRLF + request_bytes(b"GET /2 HTTP/1.1", b"Host: x"))
    check(ServerConnection, wire, [
        Request(b"POST", b"/", [(b"host", b"x"), (b"content-length", b"2")]), Data(b"ab"),
        EndOfMessage(), Request(b"GET", b"/2", [(b"host", b"x")]), EndOfMessage()])


@pytest.mark.parametrize("value", [b" 5", b"5 ", b"\t5\t", b"05"])
def test_content_length_with_surrounding_whitespace_is_accepted(value):
    """The field grammar strips OWS around a value, so " 5" is the value "5" (RFC 9110 5.5);
    what 1*DIGIT refuses is whitespace or signs *inside* it (see the corpus)."""
    wire = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:" + value + b"\r\n\r\nhello"
    events = merged(drive(ServerConnection(), [wire]))
    assert events[1:] == [Data(b"hello"[:int(value)]), EndOfMessage()]


def test_identical_duplicate_content_lengths_are_collapsed():
    wire = request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 3",
                         b"Content-Length: 3", body=b"abc")
    check(ServerConnection, wire, [Request(b"POST", b"/", [
        (b"host", b"x"), (b"content-length", b"3"), (b"content-length", b"3")]),
        Data(b"abc"), EndOfMessage()])


def test_empty_lf_only_head_never_yields_a_request():
    """B10: LF-only line endings are not line ends here.  Such a head is never parsed: the core
    waits (nothing is framed), refuses it at EOF, and refuses it once it outgrows a limit."""
    wire = b"GET / HTTP/1.1\nHost: x\n\n"
    for name, pieces in splits(wire):
        assert drive(ServerConnection(), pieces) == [], name
        with pytest.raises(RemoteProtocolError) as info:
            drive(ServerConnection(), pieces, eof=True)
        assert info.value.error_status_hint == 400, name
    conn, events = ServerConnection(max_request_line=100, max_header_bytes=200), []
    with pytest.raises(RemoteProtocolError) as info:
        for _ in range(100):
            events += conn.receive_data(b"GET / HTTP/1.1\nHost: x\n\n")
    assert info.value.error_status_hint in (414, 431) and events == []


# -- responses, client side -------------------------------------------------------------------------

def test_response_with_content_length():
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: t\r\n\r\nhello"
    check(client_after, wire, [
        Response(200, [(b"content-length", b"5"), (b"server", b"t")], b"OK"), Data(b"hello"),
        EndOfMessage()])


def test_response_chunked_with_trailers():
    wire = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nEtag: \"1\"\r\n\r\n")
    check(client_after, wire, [
        Response(201, [(b"transfer-encoding", b"chunked")], b"Created"), Data(b"abcde"),
        EndOfMessage([(b"etag", b'"1"')])])


def test_response_close_delimited_ends_at_eof():
    wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this, until EOF"
    check(client_after, wire, [
        Response(200, [(b"content-type", b"text/plain")], b"OK"),
        Data(b"all of this, until EOF"), EndOfMessage()], eof=True)
    conn = client_after()
    events = conn.receive_data(wire)
    assert EndOfMessage() not in events                        # not before EOF
    assert conn.receive_data(b"") == [EndOfMessage()]
    assert conn.their_state is MUST_CLOSE and not conn.keep_alive


def test_http10_response_without_keep_alive_must_close():
    conn = client_after()
    assert merged(conn.receive_data(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")) == [
        Response(200, [(b"content-length", b"2")], b"OK", b"1.0"), Data(b"ok"), EndOfMessage()]
    assert conn.their_state is MUST_CLOSE


def test_head_response_has_no_body():
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    check(lambda: client_after(b"HEAD"), wire, [
        Response(200, [(b"content-length", b"1000")], b"OK"), EndOfMessage()])


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status):
    wire = b"HTTP/1.1 %d Whatever\r\nContent-Length: 10\r\n\r\n" % status
    check(client_after, wire, [
        Response(status, [(b"content-length", b"10")], b"Whatever"), EndOfMessage()])


def test_keep_alive_responses_in_turn():
    conn = client_after()
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert conn.receive_data(wire) == [Response(200, [(b"content-length", b"1")], b"OK"),
                                       Data(b"a"), EndOfMessage()]
    assert conn.start_next_cycle() == [Response(404, [(b"content-length", b"0")], b"Not Found"),
                                       EndOfMessage()]


def test_100_continue_then_200():
    wire = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    check(client_after, wire, [
        InformationalResponse(100, [], b"Continue"),
        InformationalResponse(103, [(b"link", b"</a>")], b"Early Hints"),
        Response(200, [(b"content-length", b"2")], b"OK"), Data(b"ok"), EndOfMessage()])


def test_status_line_without_reason():
    check(client_after, b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", [
        Response(200, [(b"content-length", b"0")], b""), EndOfMessage()])


def test_too_many_informational_responses():
    """CVE-2021-3737: an endless stream of 100s must not keep a client looping."""
    conn = client_after()
    events = conn.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n" * MAX_INFORMATIONAL)
    assert len(events) == MAX_INFORMATIONAL
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert conn.their_state is ERROR
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("wire, eof", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", False),
    (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", False),
    (b"HTTP/2.0 200 OK\r\n\r\n", False),
    (b"HTTP/1.1 20 OK\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", True),
    (b"HTTP/1.1 200 O", True),
], ids=["cl-te", "cl-list", "204-te", "http2", "short-status", "obs-fold", "chunk-crlf",
        "eof-in-body", "eof-in-chunked", "eof-in-head"])
def test_malformed_responses(wire, eof):
    for name, pieces in splits(wire):
        conn = client_after()
        with pytest.raises(RemoteProtocolError):
            drive(conn, pieces, eof)
        assert conn.their_state is ERROR, name


def test_close_delimited_response_bounded_by_max_body():
    conn = client_after(max_body=10)
    conn.receive_data(b"HTTP/1.1 200 OK\r\n\r\n0123456789")
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(b"!")
    assert info.value.error_status_hint == 413


# -- the smuggling and malformed-input corpus ----------------------------------------------------------

def post(*headers: bytes, body: bytes = b"", first: bytes = b"POST / HTTP/1.1") -> bytes:
    return request_bytes(first, b"Host: x", *headers, body=body)


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked", body=body)


SMUGGLED = request_bytes(b"GET /admin HTTP/1.1", b"Host: x")
GOOD = request_bytes(b"GET / HTTP/1.1", b"Host: x")

# (id, wire, status, where, eof, limits); where: "head" (refused before any Request), "body"
# (after its Request), "next" (a good request is answered first, the pipelined one is refused).
CORPUS = [
    # framing: Content-Length and Transfer-Encoding (RFC 9112 6.1, 6.3)
    ("cl-and-te", post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED), 400, "head", False, {}),
    ("te-and-cl", post(b"Transfer-Encoding: chunked", b"Content-Length: 40", body=b"0\r\n\r\n" + SMUGGLED), 400, "head", False, {}),
    ("cl-plus", post(b"Content-Length: +5", body=b"hello"), 400, "head", False, {}),
    ("cl-minus", post(b"Content-Length: -1"), 400, "head", False, {}),
    ("cl-hex", post(b"Content-Length: 0x5", body=b"hello"), 400, "head", False, {}),
    ("cl-underscore", post(b"Content-Length: 5_0", body=b"hello"), 400, "head", False, {}),
    ("cl-inner-space", post(b"Content-Length: 5 0", body=b"hello"), 400, "head", False, {}),
    ("cl-empty", post(b"Content-Length: ", body=b"hello"), 400, "head", False, {}),
    ("cl-list", post(b"Content-Length: 5, 5", body=b"hello"), 400, "head", False, {}),
    ("cl-two-differ", post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"), 400, "head", False, {}),
    ("cl-20-digits", post(b"Content-Length: " + b"1" * 20), 400, "head", False, {}),
    ("cl-5000-digits", post(b"Content-Length: " + b"9" * 5000), 400, "head", False, {}),
    ("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501, "head", False, {}),
    ("te-chunked-gzip", post(b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"), 400, "head", False, {}),
    ("te-gzip", post(b"Transfer-Encoding: gzip", body=b"0\r\n\r\n"), 400, "head", False, {}),
    ("te-xchunked", post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 400, "head", False, {}),
    ("te-chunked-twice", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400, "head", False, {}),
    ("te-in-http10", request_bytes(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400, "head", False, {}),
    ("te-obs-fold", post(b"Transfer-Encoding: gzip", b" chunked", body=b"0\r\n\r\n"), 400, "head", False, {}),
    # chunks (RFC 9112 7.1)
    ("chunk-size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-size-minus", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-size-plus", chunked(b"+5\r\nhello\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-size-underscore", chunked(b"1_a\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-size-17-hex", chunked(b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-size-empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-size-nul", chunked(b"5\x00\r\nhello\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-ext-bare-lf", chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-ext-bare-cr", chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-line-too-long", chunked(b"5;" + b"e" * 2 * MAX_CHUNK_LINE + b"\r\nhello\r\n0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-data-then-xx", chunked(b"5\r\nhelloxx0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-data-then-cr-other", chunked(b"5\r\nhello\r_0\r\n\r\n"), 400, "body", False, {}),
    ("chunk-data-then-lf", chunked(b"5\r\nhello\n0\r\n\r\n"), 400, "body", False, {}),
    ("trailer-malformed", chunked(b"0\r\nnot a field\r\n\r\n"), 400, "body", False, {}),
    ("trailer-request-line", chunked(b"0\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"), 400, "body", False, {}),
    ("trailer-obs-fold", chunked(b"0\r\nX: a\r\n b\r\n\r\n"), 400, "body", False, {}),
    # header fields (RFC 9112 5, RFC 9110 5.5)
    ("obs-fold", post(b"X-A: a", b" folded"), 400, "head", False, {}),
    ("obs-fold-tab", post(b"X-A: a", b"\tfolded"), 400, "head", False, {}),
    ("space-before-colon", post(b"Content-Length : 5", body=b"hello"), 400, "head", False, {}),
    ("tab-before-colon", post(b"X-A\t: a"), 400, "head", False, {}),
    ("empty-name", post(b": a"), 400, "head", False, {}),
    ("non-token-name", post(b"X(A): a"), 400, "head", False, {}),
    ("no-colon", post(b"X-A a"), 400, "head", False, {}),
    ("bare-cr-in-value", post(b"X-A: a\rb"), 400, "head", False, {}),
    ("bare-cr-line-end", post(b"X-A: a\rContent-Length: 5", body=b"hello"), 400, "head", False, {}),
    ("nul-in-value", post(b"X-A: a\x00b"), 400, "head", False, {}),
    ("bare-lf-in-head", post(b"X-A: a\nContent-Length: 5", body=b"hello"), 400, "head", False, {}),
    ("lf-only-head-then-crlf-head", b"GET / HTTP/1.1\nHost: x\n\n" + SMUGGLED, 400, "head", False, {}),
    ("missing-host", request_bytes(b"GET / HTTP/1.1"), 400, "head", False, {}),
    ("two-hosts", request_bytes(b"GET / HTTP/1.1", b"Host: a", b"Host: b"), 400, "head", False, {}),
    # request line (RFC 9112 3)
    ("extra-space-after-method", request_bytes(b"GET  / HTTP/1.1", b"Host: x"), 400, "head", False, {}),
    ("extra-space-before-version", request_bytes(b"GET /  HTTP/1.1", b"Host: x"), 400, "head", False, {}),
    ("trailing-space", request_bytes(b"GET / HTTP/1.1 ", b"Host: x"), 400, "head", False, {}),
    ("tab-separator", request_bytes(b"GET\t/ HTTP/1.1", b"Host: x"), 400, "head", False, {}),
    ("no-version", request_bytes(b"GET /", b"Host: x"), 400, "head", False, {}),
    ("http-1.x", request_bytes(b"GET / HTTP/1.x", b"Host: x"), 400, "head", False, {}),
    ("http-lowercase", request_bytes(b"GET / http/1.1", b"Host: x"), 400, "head", False, {}),
    ("http-11.1", request_bytes(b"GET / HTTP/11.1", b"Host: x"), 400, "head", False, {}),
    ("http-2.0", request_bytes(b"GET / HTTP/2.0", b"Host: x"), 505, "head", False, {}),
    ("http-1.2", request_bytes(b"GET / HTTP/1.2", b"Host: x"), 505, "head", False, {}),
    ("http-0.9-style", b"GET /\r\n\r\n", 400, "head", False, {}),
    ("empty-request-line", b"\r\n\r\n\r\n" + b" \r\n\r\n", 400, "head", False, {}),
    # limits
    ("request-line-too-long", request_bytes(b"GET /" + b"a" * 200 + b" HTTP/1.1", b"Host: x"), 414, "head", False, {"max_request_line": 100}),
    ("request-line-too-long-no-crlf", b"GET /" + b"a" * 200, 414, "head", False, {"max_request_line": 100}),
    ("header-block-too-large", post(b"X-Big: " + b"b" * 400), 431, "head", False, {"max_header_bytes": 256}),
    ("header-block-too-large-unfinished", post(b"X-Big: " + b"b" * 400)[:-4], 431, "head", False, {"max_header_bytes": 256}),
    ("too-many-headers", post(*[b"X-%d: v" % i for i in range(9)]), 431, "head", False, {"max_headers": 8}),
    ("body-too-large-cl", post(b"Content-Length: 11", body=b"x" * 11), 413, "head", False, {"max_body": 10}),
    ("body-too-large-chunked", chunked(b"6\r\nabcdef\r\n5\r\nghijk\r\n0\r\n\r\n"), 413, "body", False, {"max_body": 10}),
    ("trailers-too-many", chunked(b"0\r\n" + b"".join(b"T-%d: v\r\n" % i for i in range(9)) + b"\r\n"), 431, "body", False, {"max_headers": 8}),
    # EOF
    ("eof-in-request-line", b"GET / HTT", 400, "head", True, {}),
    ("eof-in-head", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a", 400, "head", True, {}),
    ("eof-in-body", post(b"Content-Length: 10", body=b"hello"), 400, "body", True, {}),
    ("eof-in-chunk", chunked(b"5\r\nhel"), 400, "body", True, {}),
    ("eof-before-last-chunk", chunked(b"5\r\nhello\r\n"), 400, "body", True, {}),
    ("eof-in-trailers", chunked(b"0\r\nX-T: a\r\n"), 400, "body", True, {}),
    # a good request, then a bad one pipelined behind it
    ("pipelined-then-space-before-colon", GOOD + request_bytes(b"GET / HTTP/1.1", b"Host : x"), 400, "next", False, {}),
    ("pipelined-then-cl-te", GOOD + post(b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400, "next", False, {}),
]


def corpus_params():
    return [pytest.param(wire, status, where, eof, limits, id=name)
            for name, wire, status, where, eof, limits in CORPUS]


@pytest.mark.parametrize("wire, status, where, eof, limits", corpus_params())
def test_refused(wire, status, where, eof, limits):
    for name, pieces in splits(wire):
        conn, events = ServerConnection(**limits), []
        with pytest.raises(RemoteProtocolError) as info:
            drive(conn, pieces, eof, events)
        assert info.value.error_status_hint == status, name
        assert conn.their_state is ERROR, name
        # A Request made in the same call as the error is not returned; one made earlier is.
        requests = [event for event in events if type(event) is Request]
        assert len(requests) <= {"head": 0, "body": 1, "next": 1}[where], name
        assert events.count(EndOfMessage()) == (where == "next"), name
        for more in (GOOD, b""):                            # ERROR is for good
            with pytest.raises(RemoteProtocolError):
                conn.receive_data(more)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("wire, status", [
    (request_bytes(b"GET /" + b"a" * 9000 + b" HTTP/1.1", b"Host: x"), 414),
    (post(b"X-Big: " + b"b" * 70_000), 431),
    (post(*[b"X-%d: v" % i for i in range(101)]), 431),
    (post(b"Content-Length: %d" % (16 * 1024 * 1024 + 1)), 413),
], ids=["414", "431-bytes", "431-count", "413"])
def test_default_limits(wire, status):
    for pieces in ([wire], [wire[i:i + 1] for i in range(len(wire))]):
        conn = ServerConnection()
        with pytest.raises(RemoteProtocolError) as info:
            drive(conn, pieces)
        assert info.value.error_status_hint == status


# -- the limits are the same however the bytes arrive ------------------------------------------------

def _at_request_line_limit():
    line = b"GET /" + b"a" * 95 + b" HTTP/1.1"
    return request_bytes(line, b"Host: x"), {"max_request_line": len(line)}


def _at_header_limit():
    head = request_bytes(b"GET / HTTP/1.1", b"Host: x", b"X-Pad: ")[:-4]
    wire = head + b"p" * (256 - len(head)) + b"\r\n\r\n"
    return wire, {"max_header_bytes": len(wire) - 4}        # the head, without its blank line


def _at_chunk_line_limit():
    line = b"5;" + b"e" * (MAX_CHUNK_LINE - 2)
    return chunked(line + b"\r\nhello\r\n0\r\n\r\n"), {}


@pytest.mark.parametrize("case", [_at_request_line_limit, _at_header_limit, _at_chunk_line_limit],
                         ids=["request-line", "header-block", "chunk-line"])
def test_exactly_at_a_limit_is_accepted_at_every_split(case):
    """A line or head exactly at its limit is accepted; a limit must not count the terminator
    bytes that happen to have arrived, or a message is accepted or refused depending on how the
    reads cut it (B22: the same result whether bytes arrive at once or one at a time)."""
    wire, limits = case()
    for name, pieces in splits(wire):
        try:
            events = drive(ServerConnection(**limits), pieces)
        except RemoteProtocolError as exc:
            pytest.fail(f"{name}: {exc!r}")
        assert type(events[-1]) is EndOfMessage, name


def test_oversized_trailers_are_refused_whole_or_split():
    """B8: a trailer section is bounded like a head (431), also when it arrives in one read."""
    wire = chunked(b"0\r\nX-T: " + b"t" * 400 + b"\r\n\r\n")
    for name, pieces in splits(wire):
        with pytest.raises(RemoteProtocolError) as info:
            drive(ServerConnection(max_header_bytes=256), pieces)
        assert info.value.error_status_hint == 431, name


@pytest.mark.timeout(20)
def test_head_byte_by_byte_is_linear():
    """A 60 KB head a byte at a time: the search for its end resumes where it stopped."""
    wire = post(*[b"X-%d: %s" % (i, b"v" * 600) for i in range(95)])
    conn, events = ServerConnection(), []
    for i in range(len(wire)):
        events += conn.receive_data(wire[i:i + 1])
    assert type(events[0]) is Request and len(events[0].headers) == 96


# -- sending -----------------------------------------------------------------------------------------

def server_for(wire: bytes) -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(wire)
    return conn


GET11 = request_bytes(b"GET / HTTP/1.1", b"Host: x")
GET10 = request_bytes(b"GET / HTTP/1.0")
HEAD11 = request_bytes(b"HEAD / HTTP/1.1", b"Host: x")


def response_events(wire: bytes, method: bytes = b"GET", eof: bool = False) -> list:
    """What our own client makes of bytes the server side produced."""
    return merged(drive(client_after(method), [wire], eof))


def test_response_without_length_to_http11_is_chunked():
    conn = server_for(GET11)
    wire = conn.send(Response(200, [(b"content-type", b"text/plain")]))
    assert wire == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
    assert conn.send(Data(b"hello")) == b"5\r\nhello\r\n"
    assert conn.send(Data(b"")) == b""                     # an empty chunk would end the body
    wire += conn.send(Data(b"hello")) + conn.send(Data(b" world"))
    wire += conn.send(EndOfMessage([(b"x-sum", b"1")]))
    assert wire.endswith(b"0\r\nx-sum: 1\r\n\r\n")
    assert response_events(wire) == [
        Response(200, [(b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked")], b"OK"),
        Data(b"hello world"), EndOfMessage([(b"x-sum", b"1")])]
    assert conn.our_state is DONE


def test_response_without_length_to_http10_is_close_delimited():
    conn = server_for(GET10)
    wire = conn.send(Response(200, [(b"connection", b"keep-alive")]))
    assert wire == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    wire += conn.send(Data(b"raw bytes")) + conn.send(EndOfMessage())
    assert wire.endswith(b"\r\n\r\nraw bytes")
    assert conn.our_state is MUST_CLOSE
    assert response_events(wire, eof=True) == [
        Response(200, [(b"connection", b"close")], b"OK"), Data(b"raw bytes"), EndOfMessage()]


def test_response_with_length_to_http10_keep_alive():
    conn = server_for(request_bytes(b"GET / HTTP/1.0", b"Connection: keep-alive"))
    wire = conn.send(Response(200, [(b"content-length", b"2")]))
    assert wire == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"
    assert conn.send(Data(b"ok")) + conn.send(EndOfMessage()) == b"ok"
    assert conn.our_state is DONE


def test_response_to_head_drops_the_body():
    conn = server_for(HEAD11)
    wire = conn.send(Response(200, [(b"content-length", b"5")]))
    assert wire == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    assert conn.send(Data(b"hello")) == b""
    assert conn.send(EndOfMessage()) == b""
    assert conn.our_state is DONE


def test_response_to_head_without_length_is_not_chunked():
    conn = server_for(HEAD11)
    wire = conn.send(Response(200, []))
    assert b"transfer-encoding" not in wire and conn.send(Data(b"x")) == b""


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_status_drops_the_body(status):
    conn = server_for(GET11)
    assert b"transfer-encoding" not in conn.send(Response(status, []))
    assert conn.send(Data(b"x")) == b"" and conn.send(EndOfMessage()) == b""


def test_body_longer_than_content_length():
    conn = server_for(GET11)
    conn.send(Response(200, [(b"content-length", b"3")]))
    conn.send(Data(b"ab"))
    with pytest.raises(LocalProtocolError):
        conn.send(Data(b"cd"))


def test_body_shorter_than_content_length():
    conn = server_for(GET11)
    conn.send(Response(200, [(b"content-length", b"3")]))
    conn.send(Data(b"ab"))
    with pytest.raises(LocalProtocolError):
        conn.send(EndOfMessage())


@pytest.mark.parametrize("value", [b"+3", b"3, 3", b" 3", b"0x3"])
def test_bad_outgoing_content_length(value):
    with pytest.raises(LocalProtocolError):
        server_for(GET11).send(Response(200, [(b"content-length", value)]))


@pytest.mark.parametrize("name, value", [
    (b"x-a", b"a\r\nSet-Cookie: evil"), (b"x-a", b"a\nb"), (b"x-a", b"a\rb"), (b"x-a", b"a\x00b"),
    (b"x a", b"v"), (b"x-a\r\nevil", b"v"), (b"", b"v"),
], ids=["crlf-value", "lf-value", "cr-value", "nul-value", "space-name", "crlf-name", "empty-name"])
def test_response_header_injection_is_refused(name, value):
    """B19: application data never becomes a header line."""
    with pytest.raises(LocalProtocolError):
        server_for(GET11).send(Response(200, [(name, value)]))


@pytest.mark.parametrize("reason", [b"OK\r\nSet-Cookie: evil=1", b"OK\nX: y", b"OK\rX"],
                         ids=["crlf", "lf", "cr"])
def test_reason_phrase_injection_is_refused(reason):
    """B19 (Tornado CVE-2025-67724): a reason phrase is application data too."""
    conn = server_for(GET11)
    try:
        wire = conn.send(Response(200, [(b"content-length", b"0")], reason))
    except LocalProtocolError:
        return
    pytest.fail(f"sent {wire!r}")


def test_informational_response():
    conn = server_for(request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 1",
                                    b"Expect: 100-continue"))
    assert conn.send(InformationalResponse(103, [(b"link", b"</a>")], b"Early Hints")) == (
        b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
    assert conn.our_state is IDLE                           # the final response is still to come
    with pytest.raises(LocalProtocolError):
        conn.send(InformationalResponse(200))


def test_response_needs_a_request():
    with pytest.raises(LocalProtocolError):
        ServerConnection().send(Response(200, []))
    conn = server_for(GET11)
    conn.send(Response(200, [(b"content-length", b"0")]))
    with pytest.raises(LocalProtocolError):
        conn.send(Response(200, [(b"content-length", b"0")]))      # one answer per request
    with pytest.raises(LocalProtocolError):
        conn.send(Request(b"GET", b"/", []))                     # a server sends no requests


# -- client sending ----------------------------------------------------------------------------------

def server_events(wire: bytes) -> list:
    return merged(drive(ServerConnection(), [wire]))


def test_client_sends_a_request_without_body():
    conn = ClientConnection()
    wire = conn.send(Request(b"GET", b"/x?y=1", [(b"host", b"example.com")]))
    wire += conn.send(EndOfMessage())
    assert wire == b"GET /x?y=1 HTTP/1.1\r\nhost: example.com\r\n\r\n"
    assert conn.our_state is DONE
    assert server_events(wire) == [Request(b"GET", b"/x?y=1", [(b"host", b"example.com")]),
                                   EndOfMessage()]
    with pytest.raises(LocalProtocolError):                 # no body was announced
        client_after().send(Data(b"x"))


def test_client_sends_a_body_with_content_length():
    conn = ClientConnection()
    wire = conn.send(Request(b"POST", b"/", [(b"host", b"x"), (b"content-length", b"5")]))
    wire += conn.send(Data(b"hel")) + conn.send(Data(b"lo")) + conn.send(EndOfMessage())
    assert wire.endswith(b"\r\n\r\nhello")
    assert server_events(wire)[1:] == [Data(b"hello"), EndOfMessage()]


def test_client_sends_a_chunked_body():
    conn = ClientConnection()
    wire = conn.send(Request(b"PUT", b"/", [(b"host", b"x"), (b"transfer-encoding", b"chunked")]))
    wire += conn.send(Data(b"hello")) + conn.send(EndOfMessage([(b"x-t", b"1")]))
    assert wire.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n")
    assert server_events(wire)[1:] == [Data(b"hello"), EndOfMessage([(b"x-t", b"1")])]


def test_client_connection_close():
    conn = ClientConnection()
    conn.send(Request(b"GET", b"/", [(b"host", b"x"), (b"connection", b"close")]))
    conn.send(EndOfMessage())
    assert conn.our_state is MUST_CLOSE
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


@pytest.mark.parametrize("method, target, headers", [
    (b"GET", b"/a b", []), (b"GET", b"/a\r\nX: y", []), (b"GE T", b"/", []),
    (b"GET\r\n", b"/", []), (b"GET", b"", []), (b"GET", b"/", [(b"x", b"a\r\nb")]),
], ids=["space-in-target", "crlf-in-target", "space-in-method", "crlf-in-method", "empty-target",
        "crlf-in-value"])
def test_client_refuses_injection(method, target, headers):
    """CVE-2019-9740, CVE-2020-26116: nothing we send can start a new line."""
    with pytest.raises(LocalProtocolError):
        ClientConnection().send(Request(method, target, headers))


def test_client_one_request_at_a_time():
    conn = ClientConnection()
    conn.send(Request(b"GET", b"/", [(b"host", b"x")]))
    with pytest.raises(LocalProtocolError):
        conn.send(Request(b"GET", b"/", [(b"host", b"x")]))
    with pytest.raises(LocalProtocolError):
        conn.send(Response(200, []))


def test_eof_between_messages_is_closed_state():
    conn = ServerConnection()
    assert conn.receive_data(b"") == [ConnectionClosed()]
    assert conn.their_state is CLOSED
