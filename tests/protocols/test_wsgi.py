"""The WSGI host over loopback, inline and on a thread pool, with stdlib clients as oracles.

Well-behaved apps run inside `wsgiref.validate.validator`, which asserts PEP 3333 on both sides
(environ types and keys, `wsgi.input` read with a size, bytes only, start_response before the
body); a validator complaint becomes an AssertionError in the app, hence a 500, so every 200 below
also says "the validator found nothing".  Apps that misbehave on purpose (CR/LF in a header) run
bare: the validator would catch them before the server could show what it does.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import socket
import sys
import threading
import time
import urllib.request
from wsgiref.validate import validator

import pytest

from protocols.wsgi import wsgi_factory

from .test_http import request_bytes
from .test_http_server import only_connection, parse_responses, read_to_eof

MODES = [pytest.param(None, id="inline"), pytest.param(4, id="threads")]


@pytest.fixture
def serve(serve_in_thread):
    """serve(app, threads=None, validate=True, wrap=None, **options) -> (host, port); wrap(cls),
    if given, returns the class to serve instead of the factory's; the handler class is
    serve.handler and the listener serve.listener."""
    pools = []

    def start(app, threads=None, validate=True, wrap=None, **options):
        handler = wsgi_factory(validator(app) if validate else app, threads=threads, **options)
        if wrap is not None:
            handler = wrap(handler)
        if handler.executor is not None:
            pools.append(handler.executor)
        start.handler = handler
        address = serve_in_thread(handler)
        start.listener = serve_in_thread.listener
        return address

    yield start
    for pool in pools:
        pool.shutdown(wait=True)


def get(address, target="/", method="GET", body=None, headers=None):
    """One request with http.client: (status, headers (an HTTPMessage), body)."""
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def raw(address, wire: bytes) -> list:
    """Send wire, half-close, and parse every response up to the server's FIN."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(wire)
        sock.shutdown(socket.SHUT_WR)
        return parse_responses(read_to_eof(sock))


def text_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode("latin-1")]


# -- environ -------------------------------------------------------------------------------------------

def environ_app(environ, start_response):
    """Reports the environ (str values) and what wsgi.input gave, as JSON."""
    stream = environ["wsgi.input"]
    first = stream.read(65536)
    rest = stream.read(65536)
    environ["wsgi.errors"].write("environ_app ran\n")
    environ["wsgi.errors"].flush()
    report = {key: value for key, value in environ.items() if type(value) is str}
    report.update(body=first.decode("latin-1"), rest=rest.decode("latin-1"),
                  version=list(environ["wsgi.version"]),
                  multithread=environ["wsgi.multithread"])
    body = json.dumps(report).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.parametrize("threads", MODES)
def test_environ(serve, threads):
    address = serve(environ_app, threads=threads)
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.putrequest("POST", "/a%20b/caf%C3%A9?x=1&y=%20z", skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Content-Length", "5")
        conn.putheader("X-Dup", "one")
        conn.putheader("X-Dup", "two")
        conn.putheader("Cookie", "a=1")
        conn.putheader("Cookie", "b=2")
        conn.putheader("X_Under", "smuggled")                 # would collide with X-Under
        conn.endheaders(b"hello")
        client_port = conn.sock.getsockname()[1]
        resp = conn.getresponse()
        assert resp.status == 200
        env = json.loads(resp.read())
    finally:
        conn.close()
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/a b/café".encode().decode("latin-1")   # PEP 3333: bytes as latin-1
    assert env["QUERY_STRING"] == "x=1&y=%20z"                  # not decoded
    assert env["SCRIPT_NAME"] == ""
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == "5"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(address[1]))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(client_port))
    assert env["HTTP_HOST"] == f"{address[0]}:{address[1]}"
    assert env["HTTP_X_DUP"] == "one, two"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_UNDER" not in env
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["wsgi.url_scheme"] == "http"
    assert env["version"] == [1, 0]
    assert env["multithread"] is (threads is not None)
    assert (env["body"], env["rest"]) == ("hello", "")        # a big read stops at the body's end


@pytest.mark.parametrize("threads", MODES)
def test_wsgi_input_never_reads_into_the_next_request(serve, threads):
    address = serve(environ_app, threads=threads)
    wire = (request_bytes(b"POST /1 HTTP/1.1", b"Host: x", b"Content-Length: 3", body=b"one")
            + request_bytes(b"POST /2 HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
                            body=b"3\r\ntwo\r\n0\r\n\r\n")
            + request_bytes(b"GET /3 HTTP/1.1", b"Host: x"))
    reports = [json.loads(body) for _, body in raw(address, wire)]
    assert [(r["PATH_INFO"], r["body"], r["rest"], r["CONTENT_LENGTH"]) for r in reports] == [
        ("/1", "one", "", "3"), ("/2", "two", "", "3"), ("/3", "", "", "")]


def test_url_scheme_option(serve):
    address = serve(environ_app, url_scheme="https")
    assert json.loads(get(address)[2])["wsgi.url_scheme"] == "https"


# -- start_response and write() -----------------------------------------------------------------------

@pytest.mark.parametrize("threads", MODES)
def test_exc_info_before_the_head_was_sent_replaces_it(serve, threads):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")],
                           sys.exc_info())
        return [b"sorry"]

    status, headers, body = get(serve(app, threads=threads))
    assert (status, body) == (503, b"sorry")
    assert "X-First" not in headers


@pytest.mark.parametrize("threads", MODES)
def test_exc_info_after_the_head_was_sent_reraises(serve, threads):
    """PEP 3333: once write() has sent the head, start_response(..., exc_info) must raise; the
    response cannot be replaced, so the client must not read a complete one."""
    raised = []

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        try:
            raise ValueError("boom")
        except ValueError:
            try:
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                               sys.exc_info())
            except ValueError:
                raised.append(True)
                raise
        return [b"error page"]

    address = serve(app, threads=threads)
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        if threads:
            # The threaded host buffers the whole response, so nothing reached the wire yet:
            # the client gets a clean 500 instead of a truncated 200.
            assert resp.status == 500 and b"partial" not in resp.read()
        else:
            assert resp.status == 200
            with pytest.raises((http.client.IncompleteRead, ConnectionError)):
                resp.read()
    finally:
        conn.close()
    assert raised == [True]


@pytest.mark.parametrize("threads", MODES)
def test_write_callable(serve, threads):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"hello ")
        write(b"world")
        return [b"!", b""]

    status, _, body = get(serve(app, threads=threads))
    assert (status, body) == (200, b"hello world!")


def test_second_start_response_without_exc_info_is_an_error(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"never"]

    assert get(serve(app, validate=False))[0] == 500


# -- response framing ----------------------------------------------------------------------------------

def chunks_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"one "
    yield b""
    yield b"two "
    yield b"three"


@pytest.mark.parametrize("threads", MODES)
def test_generator_body_is_chunked(serve, threads):
    address = serve(chunks_app, threads=threads)
    [(head, body)] = raw(address, request_bytes(b"GET / HTTP/1.1", b"Host: x"))
    assert (head.status_code, body) == (200, b"one two three")
    assert (b"transfer-encoding", b"chunked") in head.headers
    assert not any(name == b"content-length" for name, _ in head.headers)



@pytest.mark.parametrize("threads", MODES)
def test_generator_body_has_date_and_server_headers(serve, threads):
    """The chunked path (send_head, not respond) stamps Date and Server too, once each."""
    address = serve(chunks_app, threads=threads)
    [(head, body)] = raw(address, request_bytes(b"GET / HTTP/1.1", b"Host: x"))
    assert body == b"one two three" and (b"transfer-encoding", b"chunked") in head.headers
    fields = [(name, value) for name, value in head.headers if name in (b"date", b"server")]
    assert sorted(name for name, _ in fields) == [b"date", b"server"]
    date = email.utils.parsedate_to_datetime(dict(fields)[b"date"].decode())
    assert abs(date.timestamp() - time.time()) < 5
    assert dict(fields)[b"server"] == serve.handler.server_header

@pytest.mark.parametrize("threads", MODES)
def test_generator_body_to_http10_is_close_delimited(serve, threads):
    address = serve(chunks_app, threads=threads)
    [(head, body)] = raw(address, b"GET / HTTP/1.0\r\n\r\n")
    assert (head.status_code, body) == (200, b"one two three")
    assert (b"connection", b"close") in head.headers
    assert not any(name == b"transfer-encoding" for name, _ in head.headers)


@pytest.mark.parametrize("threads", MODES)
def test_single_chunk_body_gets_a_content_length(serve, threads):
    address = serve(text_app, threads=threads)
    [(head, body)] = raw(address, request_bytes(b"GET /single HTTP/1.1", b"Host: x"))
    assert body == b"/single"
    assert (b"content-length", b"7") in head.headers
    assert not any(name == b"transfer-encoding" for name, _ in head.headers)


@pytest.mark.parametrize("threads", MODES)
def test_app_content_length_is_kept_over_several_chunks(serve, threads):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5"),
                                  ("Connection", "keep-alive"), ("Transfer-Encoding", "chunked")])
        return [b"he", b"llo"]

    [(head, body)] = raw(serve(app, threads=threads, validate=False),
                         request_bytes(b"GET / HTTP/1.1", b"Host: x"))
    assert body == b"hello" and (b"content-length", b"5") in head.headers
    assert not any(name in (b"transfer-encoding", b"connection") for name, _ in head.headers)


def test_head_request(serve):
    address = serve(text_app)
    status, headers, body = get(address, "/abc", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "4")


# -- the iterable's close() -----------------------------------------------------------------------------

class Body:
    """A response iterable that records close(); fail_at: raise on that chunk; endless: repeat
    the chunks (up to limit, a safety net for a server that would pull forever)."""

    def __init__(self, chunks=(b"a", b"b", b"c"), fail_at=None, endless=False, limit=1_000_000):
        self.chunks, self.fail_at, self.endless = list(chunks), fail_at, endless
        self.limit = limit
        self.closed = threading.Event()
        self.pulled = 0

    def __iter__(self):
        i = 0
        while (self.endless or i < len(self.chunks)) and i < self.limit:
            if i == self.fail_at:
                raise RuntimeError("failed mid-body")
            self.pulled += 1
            yield self.chunks[i % len(self.chunks)]
            i += 1

    def close(self):
        self.closed.set()


def body_app(body):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body
    return app


@pytest.mark.parametrize("threads", MODES)
def test_close_called_after_a_complete_body(serve, threads):
    body = Body()
    status, _, data = get(serve(body_app(body), threads=threads))
    assert (status, data) == (200, b"abc")
    assert body.closed.wait(5)


@pytest.mark.parametrize("fail_at", [0, 1, 2])
@pytest.mark.parametrize("threads", MODES)
def test_close_called_when_the_iterable_raises(serve, threads, fail_at):
    """Before any byte went out the client gets a 500; after, the connection is cut (a truncated
    body, never a complete one)."""
    body = Body(fail_at=fail_at)
    address = serve(body_app(body), threads=threads)
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.request("GET", "/")
        try:
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
        except (http.client.HTTPException, ConnectionError):
            status = data = None                             # cut: acceptable once bytes went out
    finally:
        conn.close()
    assert body.closed.wait(5)
    assert status in (500, None) and data != b"abc"
    if fail_at < 2 or threads:                               # nothing was sent yet
        assert status == 500


def test_close_called_when_the_client_goes_away_while_the_server_waits_to_write(serve, rt):
    """PEP 3333: close() is called however the response ends, also when the peer resets the
    connection while the server, paused by a full write queue, waits to stream more."""
    body = Body(chunks=[b"x" * 16384], endless=True)
    address = serve(body_app(body), validate=False)          # the test checks close() itself
    sock = socket.create_connection(address, timeout=5)
    try:
        sock.sendall(request_bytes(b"GET / HTTP/1.1", b"Host: x"))
        handler = only_connection(rt, serve.listener)
        rt.wait_for(lambda: handler.write_buffer_size > handler.high_water, timeout=10)
    finally:
        sock.close()                                          # unread data: a reset
    rt.wait_for(lambda: not serve.listener.connections)
    assert body.closed.is_set()


def test_client_gone_before_streaming_stops_the_pulling(serve, rt):
    """A client that sends its request and closes at once: the first writes fail (EPIPE or
    ECONNRESET) and the connection is gone, so pulling must stop there and close() be called,
    rather than the reactor pulling (and dropping) the rest of a long body meanwhile, while
    every other connection waits."""
    body = Body(chunks=[b"x" * 16384], endless=True, limit=20_000)
    address = serve(body_app(body), validate=False)
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(request_bytes(b"GET / HTTP/1.1", b"Host: x"))
    sock.close()
    rt.wait_for(lambda: body.pulled and not serve.listener.connections, timeout=20)
    assert body.closed.wait(5)
    assert body.pulled < 2_000, f"pulled {body.pulled} chunks for a client that was gone"


# -- failures --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", MODES)
def test_app_exception_before_start_response_is_500(serve, threads):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("boom")
        return text_app(environ, start_response)

    address = serve(app, threads=threads)
    status, headers, body = get(address, "/boom")
    assert status == 500 and headers["Connection"] == "close"
    status, _, body = get(address, "/fine")                   # the server goes on
    assert (status, body) == (200, b"/fine")


@pytest.mark.parametrize("threads", MODES)
def test_app_returning_without_start_response_is_500(serve, threads):
    assert get(serve(lambda environ, start_response: [b"x"], threads=threads, validate=False))[0] == 500


@pytest.mark.parametrize("header", [("X-Evil", "a\r\nSet-Cookie: evil=1"), ("X-Evil", "a\nb"),
                                    ("X-Evil\r\nSet-Cookie", "evil=1"), ("X-Evil", "a\x00b")],
                         ids=["crlf-value", "lf-value", "crlf-name", "nul-value"])
@pytest.mark.parametrize("threads", MODES)
def test_header_injection_is_a_500(serve, threads, header):
    """B19: never a split response."""
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), header])
        return [b"body"]

    address = serve(app, threads=threads, validate=False)
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request_bytes(b"GET / HTTP/1.1", b"Host: x"))
        sock.shutdown(socket.SHUT_WR)
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert b"evil" not in answer.lower() and b"Set-Cookie" not in answer


@pytest.mark.parametrize("threads", MODES)
def test_status_line_injection_is_a_500(serve, threads):
    """B19 (Tornado CVE-2025-67724): the reason phrase is application data too."""
    def app(environ, start_response):
        start_response("200 OK\r\nSet-Cookie: evil=1", [("Content-Type", "text/plain")])
        return [b"body"]

    address = serve(app, threads=threads, validate=False)
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request_bytes(b"GET / HTTP/1.1", b"Host: x"))
        sock.shutdown(socket.SHUT_WR)
        answer = read_to_eof(sock)
    assert b"Set-Cookie" not in answer
    assert answer.startswith(b"HTTP/1.1 500 ")


# -- flow control and threads ------------------------------------------------------------------------

def test_streamed_body_to_a_slow_reader_stays_bounded(serve, rt):
    """The endless body is pulled only while the write queue is under high_water: with a client
    that reads nothing, the queue stops at high_water plus one chunk and pulling stops."""
    chunk = 65536
    body = Body(chunks=[b"y" * chunk], endless=True)
    # Unvalidated: the server does not close() an iterable whose client went away (see the two
    # tests above), and the validator's complaint at garbage collection would land elsewhere.
    address = serve(body_app(body), validate=False)
    sock = socket.create_connection(address, timeout=5)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request_bytes(b"GET / HTTP/1.1", b"Host: x"))
        handler = only_connection(rt, serve.listener)
        rt.wait_for(lambda: handler.write_buffer_size > handler.high_water, timeout=10)
        queued, pulled = rt.call(lambda: (handler.write_buffer_size, body.pulled))
        for _ in range(20):                                    # some reactor turns later ...
            rt.call(lambda: None)
        assert rt.call(lambda: body.pulled) == pulled          # ... nothing more was pulled
        assert queued <= handler.high_water + chunk + 64       # a chunk and its framing
    finally:
        sock.close()


def test_threads_a_blocking_app_does_not_stall_others(serve):
    entered, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            entered.set()
            release.wait(10)
        return text_app(environ, start_response)

    address = serve(app, threads=4)
    slow_result = []
    slow = threading.Thread(target=lambda: slow_result.append(get(address, "/slow")), daemon=True)
    slow.start()
    try:
        assert entered.wait(5)                                 # /slow is blocking a worker
        status, _, body = get(address, "/fast")               # served meanwhile
        assert (status, body) == (200, b"/fast")
        assert slow.is_alive() and not slow_result             # /slow has not been answered
    finally:
        release.set()
        slow.join(5)
    assert slow_result and slow_result[0][2] == b"/slow"


def test_threads_many_concurrent_requests(serve):
    address = serve(text_app, threads=4)
    results = [None] * 20

    def fetch(i):
        results[i] = get(address, f"/{i}")[2]

    workers = [threading.Thread(target=fetch, args=(i,)) for i in range(20)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert results == [f"/{i}".encode() for i in range(20)]


def test_threads_the_response_is_written_on_the_reactor_thread(serve, rt):
    """The app runs on a pool thread; every write of its response (head, the write() callable's
    bytes, each chunk, the last chunk) is made on the reactor thread, and they are the whole
    response the client read.  The app finishes only after request_received has returned, as a
    slow app would (a future already done runs its callbacks at once, on the reactor thread)."""
    ran_on, entered, release = [], threading.Event(), threading.Event()

    def app(environ, start_response):
        ran_on.append(threading.get_ident())
        entered.set()
        assert release.wait(5)
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"legacy ")
        return iter([b"one ", b"two ", b"three"])

    writes = []

    def recording(cls):                    # the factory's class, its write() observed
        class Recording(cls):
            def write(self, data):
                writes.append((threading.get_ident(), bytes(data)))
                super().write(data)
        return Recording

    address = serve(app, threads=2, wrap=recording)
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request_bytes(b"GET / HTTP/1.1", b"Host: x", b"Connection: close"))
        assert entered.wait(5)
        reactor_thread = rt.call(threading.get_ident)         # request_received has returned
        release.set()
        answer = read_to_eof(sock)
    [(head, body)] = parse_responses(answer)
    assert (head.status_code, body) == (200, b"legacy one two three")
    recorded = rt.call(lambda: list(writes))
    assert ran_on and ran_on[0] != reactor_thread            # the app ran on a pool thread
    assert len(recorded) >= 2 and b"".join(data for _, data in recorded) == answer
    assert {ident for ident, _ in recorded} == {reactor_thread}


# -- urllib ---------------------------------------------------------------------------------------------

def echo_app(environ, start_response):
    size = int(environ.get("CONTENT_LENGTH") or 0)
    data = environ["wsgi.input"].read(size)
    body = b"%s %s?%s %s" % (environ["REQUEST_METHOD"].encode(), environ["PATH_INFO"].encode(),
                             environ["QUERY_STRING"].encode(), data)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


@pytest.mark.parametrize("threads", MODES)
def test_urllib_get_and_post(serve, threads):
    host, port = serve(echo_app, threads=threads)
    with urllib.request.urlopen(f"http://{host}:{port}/get?q=1", timeout=5) as resp:
        assert (resp.status, resp.read()) == (200, b"GET /get?q=1 ")
        assert resp.headers["Content-Type"] == "text/plain"
    request = urllib.request.Request(f"http://{host}:{port}/post", data=b"a=1&b=2")
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.read() == b"POST /post? a=1&b=2"


def test_urllib_error_status(serve):
    def app(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"nope"]

    host, port = serve(app)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{host}:{port}/missing", timeout=5)
    assert info.value.code == 404 and info.value.read() == b"nope"
    info.value.close()
