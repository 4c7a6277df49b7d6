"""Bad input for the HTTP client: malformed responses (each a clear InvalidResponse, and the
connection never used again), requests that must be refused before a byte is sent, servers that
never answer, refuse, or close a kept-alive connection as it is reused."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from protocols import client
from protocols.client import (ConnectError, ConnectTimeout, HTTPClient, InvalidRequest,
                              InvalidResponse, InvalidURL, ReadTimeout, RemoteDisconnected, Session)
from reactor import Reactor
from reactor.testing import run_until

from .test_client import OK_REPLY, raw_server  # noqa: F401  (raw_server is a fixture)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"


def read_head(reactor: Reactor, peer: socket.socket) -> bytes:
    """Turn the client's reactor until the peer has read a whole request head."""
    peer.setblocking(False)
    got = bytearray()

    def arrived() -> bool:
        try:
            got.extend(peer.recv(65536))
        except BlockingIOError:
            pass
        return b"\r\n\r\n" in got
    run_until(reactor, arrived)
    peer.setblocking(True)
    return bytes(got)

# (id, bytes the server sends, whether it then closes; what the error says)
MALFORMED = [
    ("bad-status-code", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", False, "status line"),
    ("bad-protocol", b"HTTX/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, "status line"),
    ("http2-version", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", False, "version"),
    ("garbage", b"hello there\r\n\r\n", False, "status line"),
    ("bare-lf-head", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", True, "closed"),
    ("cl-and-te", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n", False, "Content-Length and Transfer-Encoding"),
    ("two-lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
     False, "Content-Length"),
    ("signed-length", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", False, "Content-Length"),
    ("te-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", False,
     "transfer coding"),
    ("chunk-size-not-hex", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
     False, "chunk size"),
    ("chunk-size-0x", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nhi\r\n0\r\n\r\n",
     False, "chunk size"),
    ("chunk-size-negative", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nhi\r\n0\r\n\r\n",
     False, "chunk size"),
    ("chunk-missing-crlf", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\n",
     False, "CRLF"),
    ("chunked-truncated", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", True,
     "closed"),
    ("header-too-big", b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\nContent-Length: 0\r\n\r\n",
     False, "too large"),
    ("too-many-headers", b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"Content-Length: 0\r\n\r\n",
     False, "too many"),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", False, "header"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n  folded\r\nContent-Length: 0\r\n\r\n", False, "fold"),
    ("nul-in-value", b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n", False, "header"),
    ("body-longer", OK % 2 + b"okEXTRA", False, "longer than announced"),
    ("body-shorter", OK % 10 + b"short", True, "closed in the middle of a body"),
    ("endless-100-continue", b"HTTP/1.1 100 Continue\r\n\r\n" * 50, False, "informational"),
    ("204-with-chunked", b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", False,
     "Transfer-Encoding"),
]


@pytest.mark.parametrize("reply, close, message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_response_is_an_error_and_the_connection_is_dropped(raw_server, reply, close, message):
    server = raw_server([(reply, "close" if close else "keep")])
    with Session(timeout=(5, 5)) as s:
        with pytest.raises(InvalidResponse, match=message) as info:
            s.get(server.url + "/bad")
        assert server.url in str(info.value.url)
        assert s.client.connections == 0                     # dropped at once, not pooled
        assert s.get(server.url + "/next").content == b"ok"    # on a new connection
    assert server.connections == 2 and len(server.requests) == 2


def test_unsolicited_bytes_on_an_idle_connection_drop_it():
    # also what a body longer than announced looks like when its excess arrives late
    listener = socket.create_server(("127.0.0.1", 0))
    reactor = Reactor()
    try:
        c = HTTPClient(reactor)
        future = c.get(f"http://127.0.0.1:{listener.getsockname()[1]}/")
        listener.settimeout(5)
        peer, _ = listener.accept()
        with peer:
            read_head(reactor, peer)
            peer.sendall(OK % 2 + b"ok")
            run_until(reactor, future.done)
            assert c.connections == 1
            peer.sendall(b"HTTP/1.1 200 OK\r\n\r\n")                 # nobody asked
            run_until(reactor, lambda: c.connections == 0)
    finally:
        listener.close()
        reactor.close()


@pytest.mark.parametrize("call", [
    lambda s, url: s.get(url + "/a\r\nX-Injected: 1"),
    lambda s, url: s.get(url + "/a\nb"),
    lambda s, url: s.get(url + "/\x00"),
    lambda s, url: s.get(url + "/", params="a=1\r\nX: y"),
    lambda s, url: s.request("GET\r\nX: y", url + "/"),
    lambda s, url: s.request("G ET", url + "/"),
    lambda s, url: s.request("", url + "/"),
    lambda s, url: s.get(url + "/", headers={"X": "a\r\nInjected: 1"}),
    lambda s, url: s.get(url + "/", headers={"X": "a\nb"}),
    lambda s, url: s.get(url + "/", headers={"X": "a\x00b"}),
    lambda s, url: s.get(url + "/", headers={"X": "\x7f"}),
    lambda s, url: s.get(url + "/", headers={"Bad Name": "v"}),
    lambda s, url: s.get(url + "/", headers={"X\r\nY": "v"}),
    lambda s, url: s.get(url + "/", auth=("a:b", "c")),
    lambda s, url: s.post(url + "/", files={"f": ("a\x00b", b"x")}),
])
def test_injection_refused_before_anything_is_sent(raw_server, call):
    server = raw_server()
    with Session() as s:
        with pytest.raises((InvalidURL, InvalidRequest)):
            call(s, server.url)
    assert server.connections == 0 and server.requests == []


def test_read_timeout_when_the_server_accepts_and_never_answers(raw_server):
    server = raw_server([(b"", "hang")])
    start = time.monotonic()
    with pytest.raises(ReadTimeout, match="within 0.3 s"):
        client.get(server.url + "/", timeout=(5, 0.3))
    assert 0.25 < time.monotonic() - start < 3


def trickle_server(head: bytes, pieces: int, every: float, stop: threading.Event):
    """A listener that answers one request with head, then one body byte every `every` s,
    `pieces` times, then nothing more; -> (url, thread, the monotonic time before each byte)."""
    listener = socket.create_server(("127.0.0.1", 0))
    sent: list[float] = []

    def serve() -> None:
        with listener:
            listener.settimeout(5)
            conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            got = b""
            while b"\r\n\r\n" not in got and (data := conn.recv(65536)):
                got += data
            try:
                conn.sendall(head)
                for _ in range(pieces):
                    if stop.wait(every):                       # paced, not waiting for anything
                        return
                    sent.append(time.monotonic())              # taken before the byte can arrive
                    conn.sendall(b"x")
            except OSError:                                    # the client gave up early
                return
            stop.wait(15)                                      # then silence until the test ends

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread, sent


@pytest.mark.timeout(30)
def test_read_timeout_counts_from_the_last_byte():
    """The head at once, then a byte every 0.2 s for 1.6 s (longer than the 1 s timeout), then
    nothing: no byte is ever late, so the timeout fires only 1 s after the last one.  A timer
    counted from the request (or from the head) would fire while the bytes still flowed."""
    read, every, pieces = 1.0, 0.2, 8
    stop = threading.Event()
    url, thread, sent = trickle_server(OK % 100, pieces, every, stop)
    try:
        start = time.monotonic()
        with pytest.raises(ReadTimeout, match="within 1 s"):
            client.get(url + "/", timeout=(5, read))
        end = time.monotonic()
    finally:
        stop.set()
        thread.join(5)
    assert len(sent) == pieces                                 # every byte went out in time ...
    assert end - start >= pieces * every + read - 0.01         # ... so it outlived one timeout
    assert end - sent[-1] >= read - 0.01                       # a full timeout after the last byte
    assert end - sent[-1] < read + 3                           # and not much later


def test_connection_refused_is_a_clear_error():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectError, match="refused") as info:
        client.get(f"http://127.0.0.1:{port}/")
    assert isinstance(info.value, ConnectionError)


def test_connect_timeout(full_backlog):
    host, port = full_backlog
    start = time.monotonic()
    with pytest.raises(ConnectTimeout):
        client.get(f"http://{host}:{port}/", timeout=(0.3, 5))
    assert time.monotonic() - start < 3


def test_unknown_host_is_a_connect_error():
    with pytest.raises(ConnectError, match="resolve"):
        client.get("http://no-such-host.invalid/", timeout=2)


def test_stale_kept_alive_connection_is_retried_once_for_idempotent_requests(raw_server):
    # The second request on the kept-alive connection meets a server that closes without a word
    # (it timed the connection out as we reused it): sent again on a new connection.
    server = raw_server([(OK_REPLY, "keep"), (b"", "close")])
    with Session() as s:
        assert s.get(server.url + "/1").content == b"ok"
        assert s.get(server.url + "/2").content == b"ok"
    assert server.connections == 2 and len(server.requests) == 3


@pytest.mark.timeout(30)
def test_late_excess_bytes_never_become_the_response_of_a_queued_request():
    # One connection per origin, two requests: the first response's body is longer than
    # announced and its excess arrives after the response ended, when the connection has
    # already been handed to the queued second request and its request sent.  The excess is
    # not a status line, so it cannot be the second response: that connection is dropped and
    # the (idempotent) second request is sent once more on a new connection.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=5, max_per_host=1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        first, second = c.get(url + "/1"), c.get(url + "/2")
        peer, _ = listener.accept()
        with peer:
            read_head(reactor, peer)
            peer.sendall(OK % 2 + b"ok")
            run_until(reactor, first.done)
            assert b"GET /2 " in read_head(reactor, peer)        # the connection was reused
            peer.sendall(b"EVIL excess\r\n\r\n")
            listener.setblocking(False)
            fresh = []

            def answered_or_reconnected():
                try:
                    fresh.append(listener.accept()[0])
                except BlockingIOError:
                    pass
                return second.done() or fresh
            run_until(reactor, answered_or_reconnected)
            if fresh:                                           # retried on a new connection
                with fresh[0] as peer2:
                    peer2.settimeout(5)
                    assert b"GET /2 " in read_head(reactor, peer2)
                    peer2.sendall(OK % 4 + b"good")
                    run_until(reactor, second.done)
        assert first.result().content == b"ok"
        assert second.result().content == b"good"
    finally:
        listener.close()
        reactor.close()


def test_post_on_a_stale_connection_is_not_replayed(raw_server):
    server = raw_server([(OK_REPLY, "keep"), (b"", "close")])
    with Session() as s:
        s.get(server.url + "/1")
        with pytest.raises(RemoteDisconnected, match="before sending a response"):
            s.post(server.url + "/2", data=b"once")
    assert server.connections == 1


def test_server_closing_mid_response_is_an_error(raw_server):
    server = raw_server([(b"HTTP/1.1 200 OK\r\nContent-Le", "close")])
    with pytest.raises(InvalidResponse, match="closed"):
        client.get(server.url + "/")


def test_early_response_stops_the_upload(raw_server):
    # The server answers 413 before reading the body and closes: the client reports the answer.
    listener = socket.create_server(("127.0.0.1", 0))
    reactor = Reactor()
    try:
        c = HTTPClient(reactor)
        future = c.post(f"http://127.0.0.1:{listener.getsockname()[1]}/", data=b"x" * (8 << 20))
        listener.settimeout(5)
        peer, _ = listener.accept()
        with peer:
            read_head(reactor, peer)
            peer.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n"
                         b"Connection: close\r\n\r\nbig!")
            run_until(reactor, future.done, timeout=10)
        assert future.result().status_code == 413 and future.result().content == b"big!"
        run_until(reactor, lambda: c.connections == 0)
    finally:
        listener.close()
        reactor.close()


def test_response_body_limit(raw_server):
    server = raw_server([(OK % 100 + b"x" * 100, "keep")])
    with Session(max_body=10) as s:
        with pytest.raises(InvalidResponse, match="too large"):
            s.get(server.url + "/")
