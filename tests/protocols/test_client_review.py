"""Review of the HTTP client (issue 4): each test pins one bug or gap found in review, against
the issue's text or what a user of requests/urllib3/httpx expects.  A failing test here is a
finding; the passing ones at the end cover ground the other test_client_*.py files do not.

Servers: the raw scripted server and apps.rest of test_client.py, the TLS ThreadingHTTPServer
of test_client_tls.py, and bare loopback listeners where a test must see exactly what arrives.
Waits are conditions with deadlines; the reactor is turned by the test itself."""
from __future__ import annotations

import contextlib
import io
import socket
import threading
import tracemalloc

import pytest

from protocols import cookies as _cookies
from protocols.client import (HTTPClient, InvalidRequest, InvalidResponse, ReadTimeout,
                              RequestCancelled, Session, encode_body)
from reactor import Reactor
from reactor.testing import FakeClock, ReactorThread, run_until

from .test_client import raw_server, rest  # noqa: F401  (fixtures)
from .test_client_bad import read_head
from .test_client_tls import CA, https_server

OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"


def turn_until(reactor: Reactor, predicate, timeout: float) -> bool:
    """run_until that answers False at the deadline instead of raising."""
    try:
        run_until(reactor, predicate, timeout=timeout)
        return True
    except TimeoutError:
        return False


def nothing_connects(listener: socket.socket, wait: float = 0.3) -> bool:
    """True if no connection is waiting in (or arrives at) the listener within `wait` s."""
    listener.settimeout(wait)
    try:
        peer, _ = listener.accept()
    except (TimeoutError, socket.timeout):
        return True
    peer.close()
    return False


@pytest.fixture
def resolve_example_test(monkeypatch):
    """Names under example.test resolve to 127.0.0.1 (the client calls socket.getaddrinfo)."""
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if isinstance(host, str) and (host == "example.test" or host.endswith(".example.test")):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", fake)


# -- 1. a bad Location hangs the call forever ---------------------------------------------------

@pytest.mark.parametrize("location", [b"http://[/", b"http://[::1/x", b"http://[fe80::1%\xfc]/"],
                         ids=["bracket", "unclosed-ipv6", "non-ascii-zone"])
def test_unparsable_location_fails_the_call_instead_of_hanging_it(raw_server, location):
    # urljoin() raises ValueError("Invalid IPv6 URL") before parse_url is reached; _redirect only
    # catches InvalidURL, so the error escapes _response, the reactor's catch-all aborts the
    # connection after _complete already detached the exchange, and the future never completes.
    # No timer is left: a blocking Session.get() would wait forever.  The third Location
    # parses, but its non-ASCII zone id makes _build_headers' host_header.encode("ascii") raise
    # UnicodeEncodeError on the same unguarded path.
    server = raw_server([(b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\n"
                          b"Content-Length: 0\r\n\r\n", "keep")])
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=(2, 1))
        future = c.get(server.url + "/")
        finished = turn_until(reactor, future.done, 2.0)
        assert finished, ("the call never completed after a redirect to an unparsable Location; "
                          f"live timers: {reactor.stats()['timers']}")
        assert isinstance(future.exception(), InvalidResponse)
    finally:
        reactor.close()


# -- 2. close() does not stop a request that is still connecting --------------------------------

def test_close_cancels_a_request_that_is_still_connecting():
    listener = socket.create_server(("127.0.0.1", 0))
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=(2, 2))
        future = c.get(f"http://127.0.0.1:{listener.getsockname()[1]}/secret")
        c.close()          # "abort busy ones (their requests fail), refuse new requests"
        finished = turn_until(reactor, future.done, 1.0)
        listener.settimeout(1.0)
        try:
            peer, _ = listener.accept()
            peer.settimeout(0.5)
            try:
                sent = peer.recv(65536)
            except (TimeoutError, socket.timeout, ConnectionError):
                sent = b""
            peer.close()
        except (TimeoutError, socket.timeout):
            sent = b""
        assert sent == b"", f"the closed client still sent its request: {sent[:40]!r}"
        assert finished and isinstance(future.exception(), RequestCancelled)
    finally:
        listener.close()
        reactor.close()


# -- 3. a Host header of the caller's is sent twice -----------------------------------------------

def test_host_header_given_by_the_caller_replaces_ours(raw_server):
    # requests/httpx/urllib3 send the caller's Host instead of their own; two Host fields make a
    # request every RFC 9112 server must refuse (400) and proxies may route by either one.
    server = raw_server()
    with Session(timeout=5) as s:
        s.get(server.url + "/", headers={"Host": "example.com"})
    lines = server.requests[0].split(b"\r\n")[1:]
    hosts = [line for line in lines if line.lower().startswith(b"host:")]
    assert hosts == [b"host: example.com"], hosts


# -- 4. a lower-case method is sent as is, and "head" waits for a body ----------------------------

def test_lower_case_method_is_upper_cased(raw_server):
    # requests and httpx upper-case the method; here "head" goes on the wire as "head", and the
    # parser, which checks for b"HEAD", waits for the announced body: ReadTimeout.
    server = raw_server([(OK % 10, "keep")])
    with Session(timeout=(5, 0.5)) as s:
        r = s.request("head", server.url + "/")
    assert r.status_code == 200 and r.content == b""
    assert server.requests[0].startswith(b"HEAD / HTTP/1.1")


# -- 5. close-delimited bodies over https fail against servers without close_notify ---------------

def test_close_delimited_https_body_from_a_server_that_sends_no_close_notify():
    # The issue asks for bodies framed by connection close and for https://.  Python's own
    # servers (ssl.SSLSocket.close) never send close_notify; urllib, http.client, urllib3 and
    # requests return such a body.  Ours raises RemoteDisconnected (SSLEOFError).
    with https_server() as server, Session(verify=CA, timeout=(5, 5)) as s:
        r = s.get(server.url + "/close-delimited")
        assert r.status_code == 200 and r.content == b"until the end" * 1000


# -- 6. cookies bound to one origin follow a redirect to its subdomain ---------------------------

def test_per_call_cookies_do_not_follow_a_redirect_to_a_subdomain(raw_server, resolve_example_test):
    # cookies.py: "Cookies passed to one request are bound to that request's origin: the host as
    # a host-only cookie".  http.cookiejar's default policy (DomainLiberal) sends a cookie
    # without a Domain attribute to every subdomain, so a cross-origin redirect carries them.
    server = raw_server()
    port = server.port
    server.script = [(b"HTTP/1.1 302 Found\r\nLocation: http://evil.app.example.test:%d/x\r\n"
                      b"Content-Length: 0\r\n\r\n" % port, "keep")]
    with Session(timeout=5) as s:
        r = s.get(f"http://app.example.test:{port}/", cookies={"session": "s3cret"})
    assert r.status_code == 200 and len(server.requests) == 2
    assert b"s3cret" in server.requests[0]
    assert b"s3cret" not in server.requests[1], server.requests[1]


def test_host_only_cookie_set_by_a_server_is_not_sent_to_its_subdomains(raw_server,
                                                                        resolve_example_test):
    # RFC 6265 5.3 step 6: a Set-Cookie without Domain is host-only.  (requests shares this
    # leak, through the same http.cookiejar default policy; browsers and curl do not.)
    server = raw_server([(b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=s3cret; Path=/\r\n"
                          b"Content-Length: 2\r\n\r\nok", "keep")])
    with Session(timeout=5) as s:
        s.get(f"http://app.example.test:{server.port}/login")
        s.get(f"http://evil.app.example.test:{server.port}/")
    assert b"s3cret" not in server.requests[1], server.requests[1]


def test_cookie_jar_rules_host_only_at_the_core():
    # The same, with no network: what the client's own helpers answer.
    first = _cookies.jar_request("http://example.com/")
    jar = _cookies.merged_jar(None, {"given": "1"}, first)
    _cookies.extract([jar], first, ["sid=2; Path=/"])
    sub = _cookies.jar_request("http://evil.example.com/", "example.com", redirected=True)
    assert _cookies.cookie_header(jar, sub) is None


# -- 6b. the read timeout fires in the middle of a steady upload of a bytes body --------------------

SLOW_UPLOAD = 16 * 1024 * 1024


@contextlib.contextmanager
def slow_reader():
    """A server reading one request body of SLOW_UPLOAD bytes steadily (64 KiB every ~2 ms,
    a 64 KiB receive buffer), then answering 200 "ok"; yields its URL."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)     # inherited by accept
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def serve() -> None:
        try:
            listener.settimeout(5)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += conn.recv(65536)
                got = len(buf.partition(b"\r\n\r\n")[2])
                while got < SLOW_UPLOAD and not stop.is_set():
                    piece = conn.recv(min(65536, SLOW_UPLOAD - got))
                    if not piece:
                        return
                    got += len(piece)
                    stop.wait(0.002)             # steady: never idle for anything near 0.3 s
                conn.sendall(OK % 2 + b"ok")
        except OSError:
            return
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def test_read_timeout_does_not_fire_while_a_bytes_body_is_still_being_sent():
    # A bytes body over 16 KiB is queued whole by start(); ex.last is refreshed only by
    # data_received and by _pump (streamed bodies), so while the kernel drains the queue to a
    # slow but steady reader nothing counts as activity and ReadTimeout fires mid-upload.
    # (requests' read timeout bounds each socket operation: a moving upload never trips it.)
    with slow_reader() as url, Session(timeout=(5, 0.3)) as s:
        assert s.post(url, data=b"x" * SLOW_UPLOAD).content == b"ok"


def test_read_timeout_does_not_fire_while_a_streamed_body_is_still_being_sent():
    # The control (passes): the same upload from a file object goes through _pump.
    with slow_reader() as url, Session(timeout=(5, 0.3)) as s:
        assert s.post(url, data=io.BytesIO(b"x" * SLOW_UPLOAD)).content == b"ok"


# -- 7. multipart: a content type with CR/LF adds headers to the part -----------------------------

def test_multipart_content_type_with_crlf_is_refused_before_sending(raw_server):
    # Field names and filenames are escaped and extra part headers are checked for CR/LF, but
    # the content type (3rd element of a files= tuple) goes into the part head unchecked.
    server = raw_server()
    with Session(timeout=5) as s:
        with pytest.raises((InvalidRequest, ValueError)):
            s.post(server.url + "/", files={"f": ("a.txt", b"x", "text/plain\r\nX-Injected: 1")})
    assert server.requests == []


def test_multipart_content_type_with_crlf_at_the_core():
    with pytest.raises(ValueError):
        encode_body(files={"f": ("a.txt", b"x", "text/plain\r\nX-Injected: 1")})


# -- 8. files={"name": (None, value)} is requests' idiom for a plain field ------------------------

def test_files_tuple_without_filename_is_a_plain_form_field(rest, tmp_path):  # noqa: F811
    # In requests, a None filename means "no filename parameter": the part is a form field.
    # Here it becomes a file named after the field, typed application/octet-stream.
    with Session(timeout=5) as s:
        r = s.post(rest + "/post", files={"field": (None, "value"), "up": ("a.txt", b"data")})
    body = r.json()
    assert body["form"] == {"field": "value"} and body["files"] == {"up": "data"}, body


# -- 9. a callback runs inside request(), before it returned its future ----------------------------

def test_callback_is_not_called_before_request_returns():
    # An invalid URL (or a refused connect on loopback) completes the future synchronously, so
    # the callback runs re-entrantly inside request() (asyncio and concurrent.futures never do;
    # callers that keep their futures in a set see one that is not there yet).
    reactor = Reactor()
    try:
        c = HTTPClient(reactor)
        held: dict = {}
        seen: list = []
        held["f"] = c.get("http://[::1/", callback=lambda f: seen.append(held.get("f") is f))
        run_until(reactor, lambda: seen, timeout=2)
        assert seen == [True], "the callback ran before request() returned its future"
    finally:
        reactor.close()


# -- 10. a CR/LF in a cookie or the User-Agent is found only after connecting -------------------

@pytest.mark.parametrize("options, kwargs", [
    ({}, {"cookies": {"a": "x\r\nX-Injected: 1"}}),
    ({"cookies": {"a": "x\r\nX-Injected: 1"}}, {}),
    ({"user_agent": "x\r\nX-Injected: 1"}, {}),
], ids=["per-call-cookie", "client-cookie", "user-agent"])
def test_crlf_in_cookies_or_user_agent_refused_before_connecting(options, kwargs):
    # _prepare checks the caller's headers, but the Cookie value built from the jar and the
    # user_agent are only caught by the wire core once a connection is up, as "cannot send the
    # request body".  test_injection_refused_before_anything_is_sent asks for no connection.
    listener = socket.create_server(("127.0.0.1", 0))
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=(2, 2), **options)
        future = c.get(f"http://127.0.0.1:{listener.getsockname()[1]}/", **kwargs)
        run_until(reactor, future.done, timeout=3)
        assert isinstance(future.exception(), InvalidRequest)
        assert nothing_connects(listener), "a connection was opened for a request that is refused"
        assert "body" not in str(future.exception()), str(future.exception())
    finally:
        listener.close()
        reactor.close()


# -- 11. memory: a chunked body of tiny chunks costs ~20x max_body ----------------------------------

def test_tiny_chunks_do_not_multiply_the_memory_of_a_body():
    # max_body bounds the bytes of the body, but every chunk is kept as its own bytes object in
    # ex.chunks (~35 bytes of object + 8 of list per 2-byte chunk): a server can make a client
    # with the default max_body (100 MiB) hold several GB.  Measured while the body is pending.
    n = 30_000
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"2\r\nab\r\n" * n
    listener = socket.create_server(("127.0.0.1", 0))
    reactor = Reactor()
    tracemalloc.start()
    try:
        c = HTTPClient(reactor, timeout=(5, 5))
        future = c.get(f"http://127.0.0.1:{listener.getsockname()[1]}/")
        listener.settimeout(5)
        peer, _ = listener.accept()
        with peer:
            read_head(reactor, peer)
            base = tracemalloc.get_traced_memory()[0]
            peer.sendall(head + chunks)
            handler = next(iter(c._handlers))
            run_until(reactor, lambda: handler.bytes_in >= len(head) + len(chunks), timeout=10)
            held = tracemalloc.get_traced_memory()[0] - base
            peer.sendall(b"0\r\n\r\n")
            run_until(reactor, future.done, timeout=5)
        assert len(future.result().content) == 2 * n
        # a bound a fix can meet: a few copies of the body plus one read buffer (127 KiB)
        assert held < 4 * (2 * n) + 256 * 1024, (
            f"{held} bytes held for a {2 * n}-byte body ({held / (2 * n):.0f}x)")
    finally:
        tracemalloc.stop()
        listener.close()
        reactor.close()


# -- 12. per-origin bookkeeping is never dropped -----------------------------------------------------

def test_per_origin_bookkeeping_does_not_grow_with_every_origin_ever_seen(raw_server):
    # _open (and _idle/_waiting) keep one entry per origin forever, even with no connection
    # left: a long-lived client that talks to many hosts grows without bound.
    close_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    servers = [raw_server([(close_reply, "close")]) for _ in range(4)]
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=5)
        futures = [c.get(s.url + "/") for s in servers]
        run_until(reactor, lambda: all(f.done() for f in futures))
        run_until(reactor, lambda: c.connections == 0)
        assert all(f.result().status_code == 200 for f in futures)
        left = {name: len(getattr(c, name)) for name in ("_open", "_idle", "_waiting")}
        assert left == {"_open": 0, "_idle": 0, "_waiting": 0}, left
    finally:
        reactor.close()


# -- 13. an iterable of ints becomes NUL bytes -------------------------------------------------------

def test_iterable_body_of_ints_is_refused_not_turned_into_nul_bytes():
    # IterBody does bytes(piece): bytes(3) is b"\x00\x00\x00" (and bytes(10**9) a 1 GB buffer).
    body, _ = encode_body(data=iter([3, 2]))
    with pytest.raises(TypeError):
        b"".join(body)


# -- 13b. a raw UTF-8 Location is decoded as latin-1 and escaped twice ------------------------------

def test_utf8_location_is_followed_to_the_same_path(raw_server):
    # Servers send non-ASCII paths in Location as raw UTF-8.  requests re-decodes the latin-1
    # header as UTF-8 (get_redirect_target); here "/caf\xc3\xa9" becomes "/caf\u00c3\u00a9" and
    # is sent as /caf%C3%83%C2%A9, another resource.
    server = raw_server([(b"HTTP/1.1 302 Found\r\nLocation: /caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n",
                          "keep")])
    with Session(timeout=5) as s:
        r = s.get(server.url + "/")
    assert r.status_code == 200
    assert server.requests[1].split(b" ")[1] == b"/caf%C3%A9", server.requests[1].split(b"\r\n")[0]


# -- 14. submit(): an argument error escapes on the reactor thread and the future never completes --

def test_submit_with_a_bad_argument_completes_its_future():
    # request() turns HTTPClientError/ValueError/TypeError into a failed future, but not e.g. the
    # AttributeError of cookies="a=1" (merged_jar calls .items()); submit()'s start() lets it
    # escape into the reactor's log, and the future another thread waits on stays pending.
    with ReactorThread() as rt:
        c = HTTPClient(rt.reactor)
        future = c.submit("GET", "http://127.0.0.1:1/", cookies="a=1")
        assert future.wait(2.0), "the submitted future never completed"
        assert isinstance(future.exception(), (InvalidRequest, TypeError, ValueError))
        rt.call(c.close)


# -- 15. idle kept-alive sockets past pool_idle_timeout are never closed ----------------------------

def test_idle_connections_past_the_pool_idle_timeout_are_closed(raw_server):
    # usable() stops reusing a connection idle longer than pool_idle_timeout, but nothing closes
    # it: an HTTPClient that talked to many origins keeps one socket open per origin for as long
    # as the servers allow (urllib3's PoolManager keeps at most num_pools=10 origins).
    server = raw_server()
    clock = FakeClock()
    reactor = Reactor(clock=clock)
    try:
        c = HTTPClient(reactor, timeout=5, pool_idle_timeout=1.0)
        future = c.get(server.url + "/")
        run_until(reactor, future.done)
        assert future.result().content == b"ok" and c.connections == 1
        clock.advance(10.0, reactor)
        closed = turn_until(reactor, lambda: c.connections == 0, 1.0)
        assert closed, "an idle connection 10x past pool_idle_timeout is still open"
    finally:
        reactor.close()


# -- passing: what the other files leave uncovered ---------------------------------------------------

def test_session_recovers_after_a_read_timeout_and_leaves_nothing_behind(raw_server):
    server = raw_server([(b"", "hang")])
    with Session(timeout=(5, 0.3)) as s:
        with pytest.raises(ReadTimeout):
            s.get(server.url + "/slow")
        assert s.client.connections == 0                    # the timed-out connection is gone
        assert s.get(server.url + "/next").content == b"ok"   # a new one
        assert server.connections == 2
        stats = s._reactor.stats()
        assert stats["handlers"] == 1 and stats["timers"] == 0   # the pooled connection only


def test_userinfo_credentials_do_not_follow_a_cross_origin_redirect(raw_server):
    other = raw_server()
    server = raw_server([(b"HTTP/1.1 302 Found\r\nLocation: %s/x\r\nContent-Length: 0\r\n\r\n"
                          % other.url.encode(), "keep")])
    with Session(timeout=5) as s:
        r = s.get(server.url.replace("http://", "http://user:pw@") + "/")
    assert r.status_code == 200
    assert b"authorization: Basic dXNlcjpwdw==" in server.requests[0]
    assert b"authorization" not in other.requests[0].lower()


def test_a_100_continue_before_the_response_is_skipped_and_the_connection_kept(raw_server):
    server = raw_server([(b"HTTP/1.1 100 Continue\r\n\r\n" + OK % 2 + b"ok", "keep")])
    with Session(timeout=5) as s:
        assert s.post(server.url + "/", data=b"x").content == b"ok"
        assert s.get(server.url + "/").content == b"ok"
    assert server.connections == 1


def test_cancel_while_connecting_then_reuse_the_client(raw_server):
    server = raw_server()
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=5)
        first = c.get(server.url + "/1")
        assert first.cancel()
        second = c.get(server.url + "/2")
        run_until(reactor, second.done)
        assert second.result().content == b"ok" and isinstance(first.exception(), RequestCancelled)
        assert [h.split(b" ")[1] for h in server.requests] == [b"/2"]
    finally:
        reactor.close()


def test_late_excess_body_bytes_never_reach_the_next_response(raw_server):
    # The excess of a response longer than announced, arriving in its own packet after the
    # response ended, drops the idle connection; the next call gets a clean one.
    listener = socket.create_server(("127.0.0.1", 0))
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        future = c.get(url)
        listener.settimeout(5)
        peer, _ = listener.accept()
        with peer:
            read_head(reactor, peer)
            peer.sendall(OK % 2 + b"ok")
            run_until(reactor, future.done)
            peer.sendall(OK % 4 + b"EVIL")
            run_until(reactor, lambda: c.connections == 0)
        nxt = c.get(url)
        peer2, _ = listener.accept()
        with peer2:
            read_head(reactor, peer2)
            peer2.sendall(OK % 4 + b"good")
            run_until(reactor, nxt.done)
        assert nxt.result().content == b"good"
    finally:
        listener.close()
        reactor.close()


def test_an_interrupt_during_a_blocking_call_cancels_it_and_the_session_goes_on(raw_server):
    server = raw_server([(b"", "hang")])
    with Session(timeout=(5, 5)) as s:
        def interrupt():
            raise KeyboardInterrupt
        s._reactor.call_later(0.2, interrupt)
        with pytest.raises(KeyboardInterrupt):
            s.get(server.url + "/hang")
        assert s.client.connections == 0                 # the hung connection was aborted
        assert s.get(server.url + "/next").content == b"ok"
    assert server.connections == 2
