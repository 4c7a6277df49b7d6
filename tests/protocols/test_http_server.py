"""HTTPServerHandler over loopback, with stdlib clients (http.client) and raw sockets as peers.

What the core tests cannot show is shown here: the bytes a refused peer really reads (the status,
`connection: close`, then EOF, not a reset), deadlines on real connections (a FakeClock-driven
reactor in the test thread, so "0.3 s after the first byte" is exact), and what a client that
pipelines without reading can make the server hold.
"""
from __future__ import annotations

import email.utils
import http.client
import socket
import threading
import time

import pytest

from protocols.handlers import HTTPServerHandler
from protocols.http import DONE, ClientConnection, EndOfMessage, Request, Response
from reactor import Reactor, listen_tcp
from reactor.testing import FakeClock, drain_socket, run_until

from .test_http import CORPUS, request_bytes


class Echo(HTTPServerHandler):
    """Answers each request at once with its method, target and body."""

    def request_received(self, request, body):
        self.respond(200, [(b"content-type", b"text/plain")],
                     b"%s %s %s" % (request.method, request.target, body))


class Held(HTTPServerHandler):
    """Answers nothing until the test calls release() on the reactor thread."""

    max_pipelined = 4096

    def connection_made(self):
        super().connection_made()
        self.requests = []

    def request_received(self, request, body):
        self.requests.append(request.target)

    def release(self):
        self.respond(200, [], b"released")


def only_connection(rt, listener):
    """The one handler the listener has built (waits for the accept)."""
    rt.wait_for(lambda: len(listener.connections) == 1)
    return rt.call(lambda: next(iter(listener.connections)))


def read_to_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until its FIN (a reset raises)."""
    sock.settimeout(timeout)
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def parse_responses(wire: bytes, eof: bool = True) -> list[tuple[Response, bytes]]:
    """The responses (head, body) in wire, parsed by our client core; eof: wire ends at a FIN."""
    client, out = ClientConnection(), []
    client.send(Request(b"GET", b"/", [(b"host", b"x")]))
    client.send(EndOfMessage())
    events = client.receive_data(wire) + (client.receive_data(b"") if eof else [])
    while events and type(events[0]) is Response:
        assert type(events[-1]) is EndOfMessage, events
        out.append((events[0], b"".join(event.data for event in events[1:-1])))
        if client.their_state is not DONE:
            break
        events = client.start_next_cycle()
        client.send(Request(b"GET", b"/", [(b"host", b"x")]))
        client.send(EndOfMessage())
    return out


def read_responses(sock: socket.socket, n: int, timeout: float = 10.0) -> list[tuple[int, bytes]]:
    """Read exactly n responses to GETs/POSTs off a kept-alive socket: [(status, body), ...]."""
    sock.settimeout(timeout)
    client, out, events = ClientConnection(), [], []
    for i in range(n):
        client.send(Request(b"GET", b"/", [(b"host", b"x")]))
        client.send(EndOfMessage())
        while not events or type(events[-1]) is not EndOfMessage:
            data = sock.recv(65536)
            if not data:
                raise EOFError(f"EOF after {len(out)} of {n} responses")
            events += client.receive_data(data)
        out.append((events[0].status_code, b"".join(e.data for e in events[1:-1])))
        events = client.start_next_cycle() if i + 1 < n else []
    return out


# -- keep-alive and pipelining --------------------------------------------------------------------

def test_keep_alive_with_http_client(serve_in_thread, rt):
    host, port = serve_in_thread(Echo)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/one")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"GET /one ")
        sock = conn.sock
        for i in range(5):
            conn.request("POST", f"/post/{i}", body=b"x" * i)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"POST /post/%d %s" % (i, b"x" * i))
            assert conn.sock is sock                           # the same connection each time
        assert rt.call(lambda: len(serve_in_thread.listener.connections)) == 1
    finally:
        conn.close()


def test_16_pipelined_requests_in_one_send(serve_in_thread):
    addr = serve_in_thread(Echo)
    wire = b"".join(
        request_bytes(b"GET /%d HTTP/1.1" % i, b"Host: x") if i % 2 else
        request_bytes(b"POST /%d HTTP/1.1" % i, b"Host: x", b"Content-Length: 2", body=b"%02d" % i)
        for i in range(16))
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(wire)
        got = read_responses(sock, 16)
    assert got == [(200, b"GET /%d " % i if i % 2 else b"POST /%d %02d" % (i, i)) for i in range(16)]


@pytest.mark.timeout(30)
def test_many_pipelined_requests_in_one_read(serve_in_thread):
    """B17: 1,000 pipelined requests arrive in one or two reads; each is answered, in order."""
    addr = serve_in_thread(Echo)
    n = 1000
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"".join(request_bytes(b"GET /%d HTTP/1.1" % i, b"Host: x") for i in range(n)))
        got = read_responses(sock, n)
    assert got == [(200, b"GET /%d " % i) for i in range(n)]


def test_slow_first_request_holds_the_pipeline(serve_in_thread, rt):
    """B17: while request 1 is unanswered, request 2 is not parsed, and reading stops once
    max_pipelined bytes wait (so at most max_pipelined + one recv are held); the client's
    sendall blocks.  (Answering the backlog in order: test_many_pipelined_requests_in_one_read.)"""
    addr = serve_in_thread(Held)
    listener = serve_in_thread.listener
    # 20 MB: more than the kernel's buffers on both sides can take, so sendall must block.
    wire = request_bytes(b"GET /0 HTTP/1.1", b"Host: x") + request_bytes(
        b"GET /next HTTP/1.1", b"Host: x") * 600_000
    sock = socket.create_connection(addr, timeout=10)
    sender = threading.Thread(target=lambda: _send_quietly(sock, wire), daemon=True)
    sender.start()
    try:
        handler = only_connection(rt, listener)
        rt.wait_for(lambda: handler.requests and not handler.is_reading, timeout=10)
        state = rt.call(lambda: (handler.requests[:], handler.conn.trailing_data, handler.is_reading))
        assert state[0] == [b"/0"]                             # /1 is not parsed yet
        assert state[1] <= Held.max_pipelined + Held.max_read
        assert sender.is_alive()                               # the client is held back
    finally:
        sock.shutdown(socket.SHUT_RDWR)                        # wakes the blocked sendall
        sock.close()
        sender.join(5)


def _send_quietly(sock, wire):
    try:
        sock.sendall(wire)
    except OSError:
        pass


class Big(HTTPServerHandler):
    """Answers each request with 128 KiB."""

    body = b"b" * (128 * 1024)

    def request_received(self, request, body):
        self.respond(200, [], self.body)


@pytest.mark.timeout(30)
def test_pipelining_client_that_never_reads_is_bounded(serve_in_thread, rt):
    """Waitress GHSA-9298-4cf8-g4wj, Twisted CVE-2024-41671: 100 tiny pipelined requests (one
    read) ask for 12.8 MB.  A client that never reads must not make the server queue them all:
    past high_water the next pipelined request waits, so what is queued stays under high_water
    plus one response, and the input held stays under max_pipelined plus one recv."""
    addr = serve_in_thread(Big)
    n = 100
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"".join(request_bytes(b"GET /%d HTTP/1.1" % i, b"Host: x") for i in range(n)))
        handler = only_connection(rt, serve_in_thread.listener)
        rt.wait_for(lambda: handler.write_buffer_size > handler.high_water or handler.closing)
        queued, trailing, closing = rt.call(
            lambda: (handler.write_buffer_size, handler.conn.trailing_data, handler.closing))
        assert not closing
        assert trailing <= Big.max_pipelined + Big.max_read
        assert queued <= Big.high_water + len(Big.body) + 1024
        got = read_responses(sock, n, timeout=20)              # and nothing was lost
    assert got == [(200, Big.body)] * n


# -- refused requests over a real socket ------------------------------------------------------------

def corpus_params():
    return [pytest.param(wire, status, where, eof, limits, id=name)
            for name, wire, status, where, eof, limits in CORPUS]


@pytest.mark.parametrize("wire, status, where, eof, limits", corpus_params())
def test_refused_over_a_socket(serve_in_thread, wire, status, where, eof, limits):
    """Each corpus entry: the status, `connection: close`, then a FIN (a lingering close, so no
    reset eats the answer); and the server goes on serving others."""
    handler = type("Limited", (Echo,), {"limits": limits})
    addr = serve_in_thread(handler)
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(wire)
        if eof:
            sock.shutdown(socket.SHUT_WR)
        answer = read_to_eof(sock)                             # ConnectionResetError fails here
    responses = parse_responses(answer)
    assert [head.status_code for head, _ in responses] == [200] * (where == "next") + [status]
    head, body = responses[-1]
    assert (b"connection", b"close") in head.headers
    assert body.startswith(b"%d " % status)
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(request_bytes(b"GET /still HTTP/1.1", b"Host: x"))
        assert read_responses(sock, 1) == [(200, b"GET /still ")]



# One of each kind: refused at the head, in the body, at EOF, at a limit, behind a good request.
SOME_OF_THE_CORPUS = [param for param in corpus_params() if param.id in (
    "cl-and-te", "chunk-size-0x", "eof-in-body", "body-too-large-chunked", "pipelined-then-cl-te")]


@pytest.mark.parametrize("wire, status, where, eof, limits", SOME_OF_THE_CORPUS)
def test_refused_leaves_a_connection_opened_before_it_serving(serve_in_thread, rt, wire, status,
                                                               where, eof, limits):
    """A kept-alive connection, answered once before the bad request arrives on another, is
    answered again after that one was refused and closed: the refusal touched only its own."""
    handler = type("Limited", (Echo,), {"limits": limits})
    addr = serve_in_thread(handler)
    listener = serve_in_thread.listener
    with socket.create_connection(addr, timeout=5) as good:
        good.sendall(request_bytes(b"GET /before HTTP/1.1", b"Host: x"))
        assert read_responses(good, 1) == [(200, b"GET /before ")]
        [good_handler] = rt.call(lambda: list(listener.connections))
        with socket.create_connection(addr, timeout=5) as bad:
            rt.wait_for(lambda: len(listener.connections) == 2)
            [bad_handler] = rt.call(lambda: list(listener.connections - {good_handler}))
            bad.sendall(wire)
            if eof:
                bad.shutdown(socket.SHUT_WR)
            answer = read_to_eof(bad)
        assert parse_responses(answer)[-1][0].status_code == status
        rt.wait_for(lambda: bad_handler not in listener.connections)   # gone, server-side too
        good.sendall(request_bytes(b"POST /after HTTP/1.1", b"Host: x", b"Content-Length: 5",
                                   body=b"hello"))
        assert read_responses(good, 1) == [(200, b"POST /after hello")]


def test_expect_100_with_too_large_body_gets_413_and_no_100(serve_in_thread):
    """B18: the body will not be read, so no 100 Continue is sent: the answer is the 413."""
    addr = serve_in_thread(type("Small", (Echo,), {"limits": {"max_body": 100}}))
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 101",
                                   b"Expect: 100-continue"))
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b" 100 " not in answer.split(b"\r\n")[0]
    assert b"100 Continue" not in answer


@pytest.mark.timeout(30)
def test_413_reaches_a_client_that_is_still_sending_its_body(serve_in_thread):
    """Issue 3's lingering close at the HTTP level: the client announces 50 MB and keeps sending
    while the server has already refused it (max_body 100).  It reads the whole 413 and then the
    FIN; a server that closed with the body unread in its buffer would send a reset instead,
    which eats the answer (ECONNRESET here) before or while it is read."""
    addr = serve_in_thread(type("Small", (Echo,), {"limits": {"max_body": 100}}))
    answered = threading.Event()
    sent, send_error = [0], []

    def send_body(sock):
        piece, deadline = b"x" * 65536, time.monotonic() + 10
        try:
            while not answered.is_set() and sent[0] < (64 << 20) and time.monotonic() < deadline:
                sock.sendall(piece)
                sent[0] += len(piece)
        except OSError as exc:
            send_error.append(exc)

    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(request_bytes(b"POST /upload HTTP/1.1", b"Host: x",
                                   b"Content-Length: 50000000", body=b"x" * 1000))
        sender = threading.Thread(target=send_body, args=(sock,), daemon=True)
        sender.start()
        try:
            answer = read_to_eof(sock, timeout=10)          # ConnectionResetError fails here
        finally:
            answered.set()
            sender.join(15)
    [(head, body)] = parse_responses(answer)
    assert head.status_code == 413 and (b"connection", b"close") in head.headers
    assert body.startswith(b"413 ")
    assert sent[0] > 0                                     # the client really was still sending
    # The sender stops once the answer and the FIN were read; the linger (2 s) outlasts that.
    assert not send_error, send_error


# -- deadlines, on a FakeClock ------------------------------------------------------------------------

@pytest.fixture
def fake():
    """(reactor on a FakeClock, clock, serve(handler_cls) -> (listener, client socket, handler))."""
    clock = FakeClock()
    reactor = Reactor(clock=clock)
    socks = []

    def serve(handler_cls):
        listener = listen_tcp(reactor, "127.0.0.1", 0, handler_cls)
        sock = socket.create_connection(listener.address, timeout=5)
        socks.append(sock)
        run_until(reactor, lambda: listener.connections)
        return listener, sock, next(iter(listener.connections))

    yield reactor, clock, serve
    for sock in socks:
        sock.close()
    reactor.close()


def send_and_settle(reactor, sock, handler, data: bytes) -> None:
    """Send data and turn the reactor until the handler has read it."""
    target = handler.bytes_in + len(data)
    sock.sendall(data)
    run_until(reactor, lambda: handler.bytes_in >= target or handler.closing)


def read_until_closed(reactor, sock, handler) -> bytes:
    """Turn the reactor until the handler is gone; what the client read, up to the FIN."""
    run_until(reactor, lambda: handler.closing)
    data = bytearray()
    deadline = time.monotonic() + 5
    sock.setblocking(False)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            reactor.run_once(0.01)
            continue
        if not chunk:
            return bytes(data)
        data += chunk
    raise TimeoutError("no FIN from the server")


def test_slowloris_header_deadline_is_not_reset_per_byte(fake):
    """B16: header_timeout 0.3 s counts from the first byte of the head; a byte every 0.1 s
    does not move it: open at 0.29 s, answered with 408 and closed at 0.31 s."""
    reactor, clock, serve = fake
    _, sock, handler = serve(type("H", (Echo,), {"header_timeout": 0.3}))
    wire = b"GET / HTTP/1.1\r\nHost: x\r\n"
    for i in range(3):                                         # t = 0.0, 0.1, 0.2
        send_and_settle(reactor, sock, handler, wire[i:i + 1])
        clock.advance(0.1 if i < 2 else 0.09, reactor)
    assert not handler.closing                                 # t = 0.29
    send_and_settle(reactor, sock, handler, wire[3:4])
    clock.advance(0.02, reactor)                               # t = 0.31
    answer = read_until_closed(reactor, sock, handler)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"\r\nconnection: close\r\n" in answer


def test_header_deadline_starts_at_the_first_byte(fake):
    """Before any byte, the connection is idle (keep_alive_timeout), not in a head."""
    reactor, clock, serve = fake
    _, sock, handler = serve(type("H", (Echo,), {"header_timeout": 0.3, "keep_alive_timeout": 5}))
    clock.advance(4, reactor)
    send_and_settle(reactor, sock, handler, b"GET / HT")        # t = 4: the head starts
    clock.advance(0.25, reactor)
    assert not handler.closing
    clock.advance(0.1, reactor)
    assert read_until_closed(reactor, sock, handler).startswith(b"HTTP/1.1 408 ")


def test_body_deadline(fake):
    reactor, clock, serve = fake
    _, sock, handler = serve(type("H", (Echo,), {"body_timeout": 2.0}))
    send_and_settle(reactor, sock, handler,
                    request_bytes(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 10", body=b"abc"))
    for _ in range(3):                                         # trickling does not help
        clock.advance(0.6, reactor)
        send_and_settle(reactor, sock, handler, b"d")
    assert not handler.closing                                 # t = 1.8
    clock.advance(0.3, reactor)                                # t = 2.1
    answer = read_until_closed(reactor, sock, handler)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_keep_alive_idle_deadline_counts_from_the_last_response(fake):
    reactor, clock, serve = fake
    _, sock, handler = serve(type("H", (Echo,), {"keep_alive_timeout": 5.0}))
    clock.advance(4, reactor)
    send_and_settle(reactor, sock, handler, request_bytes(b"GET / HTTP/1.1", b"Host: x"))
    assert parse_responses(drain_socket(sock), eof=False)[0][0].status_code == 200
    clock.advance(4.5, reactor)                                # 8.5 s from the start
    assert not handler.closing
    clock.advance(0.6, reactor)                                # 5.1 s after the response
    assert read_until_closed(reactor, sock, handler) == b""    # closed quietly: no 408


def test_idle_connection_without_a_request_is_closed(fake):
    reactor, clock, serve = fake
    _, sock, handler = serve(type("H", (Echo,), {"keep_alive_timeout": 5.0}))
    clock.advance(4.9, reactor)
    assert not handler.closing
    clock.advance(0.2, reactor)
    assert read_until_closed(reactor, sock, handler) == b""


@pytest.mark.timeout(10)
def test_real_header_timeout(serve_in_thread):
    """The same deadline on the real clock: a head dribbled a byte every 0.1 s is answered with
    408 about 0.3 s after its first byte."""
    addr = serve_in_thread(type("H", (Echo,), {"header_timeout": 0.3}))
    with socket.create_connection(addr, timeout=5) as sock:
        start = time.monotonic()
        sock.settimeout(0.1)
        answer = b""
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
            sock.send(bytes([byte]))
            try:
                answer = sock.recv(4096)                      # the 0.1 s between bytes
            except socket.timeout:
                continue
            break
        elapsed = time.monotonic() - start
        answer += read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.25 <= elapsed < 1.0


# -- protocol details, with http.client ----------------------------------------------------------------

def test_expect_100_continue_with_http_client(serve_in_thread):
    host, port = serve_in_thread(Echo)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.putrequest("POST", "/upload")
        conn.putheader("Content-Length", "5")
        conn.putheader("Expect", "100-continue")
        conn.endheaders()
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):              # nothing else comes before the body
            interim += conn.sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.send(b"hello")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"POST /upload hello")
    finally:
        conn.close()


def test_head(serve_in_thread):
    host, port = serve_in_thread(Echo)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("HEAD", "/x")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        assert resp.getheader("Content-Length") == str(len(b"HEAD /x "))
        conn.request("GET", "/after")                        # the framing held: no stray body
        resp = conn.getresponse()
        assert resp.read() == b"GET /after "
    finally:
        conn.close()


def test_date_and_server_headers(serve_in_thread):
    host, port = serve_in_thread(Echo)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("Server") == "reactor"
        date = email.utils.parsedate_to_datetime(resp.getheader("Date"))
        assert abs(date.timestamp() - time.time()) < 5
    finally:
        conn.close()


class Streamed(HTTPServerHandler):
    """Answers through send_head / send_body / end_response (chunked: no Content-Length)."""

    def request_received(self, request, body):
        self.send_head(200, [(b"content-type", b"text/plain")])
        self.send_body(b"one ")
        self.send_body(b"two")
        self.end_response()


def test_date_and_server_headers_on_a_streamed_response(serve_in_thread):
    host, port = serve_in_thread(Streamed)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        for _ in range(2):                                   # and the connection stays usable
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert resp.read() == b"one two" and resp.getheader("Transfer-Encoding") == "chunked"
            assert resp.getheader("Server") == "reactor"
            date = email.utils.parsedate_to_datetime(resp.getheader("Date"))
            assert abs(date.timestamp() - time.time()) < 5
            assert len(resp.headers.get_all("Date")) == 1 and len(resp.headers.get_all("Server")) == 1
    finally:
        conn.close()


def test_half_close_after_the_request_still_gets_the_answer(serve_in_thread):
    addr = serve_in_thread(Echo)
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(request_bytes(b"POST /hc HTTP/1.1", b"Host: x", b"Content-Length: 2", body=b"ok"))
        sock.shutdown(socket.SHUT_WR)
        answer = read_to_eof(sock)
    assert [(head.status_code, body) for head, body in parse_responses(answer)] == [
        (200, b"POST /hc ok")]


def test_half_close_before_a_late_answer(serve_in_thread, rt):
    """The EOF arrives while the application still works on the answer: it is still sent."""
    addr = serve_in_thread(Held)
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(request_bytes(b"GET /late HTTP/1.1", b"Host: x"))
        sock.shutdown(socket.SHUT_WR)
        handler = only_connection(rt, serve_in_thread.listener)
        rt.wait_for(lambda: handler.requests and not handler.is_reading)    # the EOF was read
        rt.call(handler.release)
        answer = read_to_eof(sock)
    assert [(head.status_code, body) for head, body in parse_responses(answer)] == [
        (200, b"released")]


def test_http10_request_gets_a_closed_connection(serve_in_thread):
    addr = serve_in_thread(Echo)
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"GET /old ")
    assert b"\r\nconnection: close\r\n" in answer


def test_connection_close_request(serve_in_thread):
    host, port = serve_in_thread(Echo)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        assert resp.read() == b"GET / " and resp.getheader("Connection") == "close"
        assert resp.will_close
    finally:
        conn.close()
