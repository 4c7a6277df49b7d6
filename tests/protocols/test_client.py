"""The HTTP client over loopback: against apps.rest's httpbin-style endpoints (in this process,
on a reactor thread), against the standard library's ThreadingHTTPServer with a handler written
here (the oracle for redirects, cookies, framing and methods), and against a raw socket server
that says exactly what a test wants (test_client_bad.py uses it for malformed responses).

The servers and fixtures defined here are imported by the other test_client_*.py files."""
from __future__ import annotations

import contextlib
import http.server
import io
import json
import socket
import threading
import time
import urllib.parse

import pytest

from apps.rest import make_app
from protocols import client, cookies
from protocols.client import HTTPClient, InsecureRedirect, RequestCancelled, Session, TooManyRedirects
from protocols.client_body import CHUNK
from protocols.wsgi import wsgi_factory
from reactor import Reactor, listen_tcp
from reactor.testing import ReactorThread, run_until

TIMEOUT = 10.0

# -- servers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rest():
    """apps.rest's dispatcher on our HTTP server, on a reactor thread in this process."""
    rt = ReactorThread().start()
    listener = rt.call(listen_tcp, rt.reactor, "127.0.0.1", 0, wsgi_factory(make_app()))
    yield f"http://127.0.0.1:{listener.address[1]}"
    rt.stop()


class StdlibState:
    """What a ThreadingHTTPServer saw: connections opened, and each request's line and headers."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, list[str]], bytes]] = []
        self.lock = threading.Lock()
        self.url = ""

    def last(self) -> tuple[str, str, dict[str, list[str]], bytes]:
        return self.requests[-1]


def _read_chunked(rfile) -> bytes:
    out = b""
    while True:
        size = int(rfile.readline().split(b";")[0], 16)
        if not size:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return out
        out += rfile.read(size)
        rfile.readline()


def make_handler(state: StdlibState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True      # head and body are two writes: no 40 ms ACK wait

        def log_message(self, *args) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections += 1

        def handle_one(self) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = _read_chunked(self.rfile)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers: dict[str, list[str]] = {}
            for name, value in self.headers.items():
                headers.setdefault(name.lower(), []).append(value)
            path, _, query = self.path.partition("?")
            with state.lock:
                state.requests.append((self.command, self.path, headers, body))
            args = dict(urllib.parse.parse_qsl(query))
            route = getattr(self, "route_" + path.strip("/").replace("-", "_").split("/")[0], None)
            if route is None:
                return self.reply(404, b"no such route\n")
            route(args, body, headers)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_one

        def reply(self, status: int, body: bytes, headers=(), ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for name, value in headers:
                self.send_header(name, value)
            if status not in (204, 304):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and status not in (204, 304):
                self.wfile.write(body)

        def route_echo(self, args, body, headers) -> None:
            self.reply(200, json.dumps({"method": self.command, "path": self.path, "headers": headers,
                                        "body": body.decode("latin-1")}).encode(),
                       ctype="application/json")

        def route_redirect(self, args, body, headers) -> None:
            self.reply(int(args.get("code", 302)), b"moving\n", [("Location", args["to"])])

        def route_setcookie(self, args, body, headers) -> None:
            self.reply(200, b"ok\n", [("Set-Cookie", v) for k, v in sorted(args.items())])

        def route_a(self, args, body, headers) -> None:
            self.route_echo(args, body, headers)

        route_b = route_a

        def route_chunked(self, args, body, headers) -> None:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")

        def route_close_delimited(self, args, body, headers) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()              # no length: the body ends when the connection does
            self.wfile.write(b"until the end" * 1000)
            self.close_connection = True

        def route_charset(self, args, body, headers) -> None:
            self.reply(200, "caf\u00e9".encode("iso-8859-1"), ctype="text/plain; charset=iso-8859-1")

        def route_status(self, args, body, headers) -> None:
            self.reply(int(args["code"]), b"")

    return Handler


@contextlib.contextmanager
def stdlib_server(host_name: str = "127.0.0.1"):
    """A ThreadingHTTPServer with the handler above; state.url names it by host_name."""
    state = StdlibState()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://{host_name}:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.fixture
def stdlib():
    with stdlib_server() as state:
        yield state


OK_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawServer:
    """Answers the k-th request it reads (over all connections) with script[k]: the bytes to
    send, then "keep" the connection, "close" it, or "hang" (send nothing more, read nothing,
    until the test ends).  Past the script, every request gets OK_REPLY."""

    def __init__(self, script=()) -> None:
        self.script = list(script)
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        buf = b""
        with conn:
            try:
                while not self._stop.is_set():
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(buf) < length:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    buf = buf[length:]
                    with self._lock:
                        self.requests.append(head)
                        reply, after = self.script.pop(0) if self.script else (OK_REPLY, "keep")
                    if reply:
                        conn.sendall(reply)
                    if after == "close":
                        return
                    if after == "hang":
                        self._stop.wait(TIMEOUT)
                        return
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(TIMEOUT)
        self.listener.close()


@pytest.fixture
def raw_server():
    servers = []

    def make(script=()):
        servers.append(RawServer(script))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


@pytest.fixture
def session():
    with Session(timeout=(TIMEOUT, TIMEOUT)) as s:
        yield s


# -- the basics against apps.rest ------------------------------------------------------------------

def test_get_with_params_and_headers(rest, session):
    r = session.get(rest + "/get?x=0", params={"name1": "value1", "name2": ["a b", "c&d"]},
                    headers={"User-Agent": "none/ofyourbusiness", "Spam": "Eggs"})
    assert r.status_code == 200 and r.reason == "OK" and r.ok
    assert r.headers["Content-Type"] == r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["args"] == {"x": "0", "name1": "value1", "name2": ["a b", "c&d"]}
    assert body["headers"]["User-Agent"] == "none/ofyourbusiness" and body["headers"]["Spam"] == "Eggs"
    assert r.url == rest + "/get?x=0&name1=value1&name2=a+b&name2=c%26d" == body["url"]
    assert r.history == [] and r.request.method == "GET"
    r = session.get(rest + "/headers", headers={"User-Agent": None, "Accept": "text/plain"})
    assert "User-Agent" not in r.json()["headers"] and r.json()["headers"]["Accept"] == "text/plain"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_methods_send_their_bodies(rest, session, method):
    path = "/" + method.lower()
    form = session.request(method, rest + path, data={"k": "v", "n": ["1", "2"]}).json()
    assert form["form"] == {"k": "v", "n": ["1", "2"]}
    assert form["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert session.request(method, rest + path, data=b"\x00raw").json()["data"] == "\x00raw"
    assert session.request(method, rest + path, data="t\u00e9xt").json()["data"] == "t\u00e9xt"
    assert session.request(method, rest + path, json={"a": [1, 2]}).json()["json"] == {"a": [1, 2]}
    chunked = session.request(method, rest + path, data=iter([b"str", b"eamed"]))
    assert chunked.json()["data"] == "streamed"
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert session.client.connections == 1                # every call on one kept-alive connection



def test_module_level_put_patch_delete(stdlib):
    """client.put/patch/delete, each on a fresh Session: the method and the body the stdlib
    server read (bytes as given, a dict form-encoded)."""
    url = stdlib.url + "/echo"
    calls = [(client.put, {"data": b"\x00put body"}, "PUT", b"\x00put body"),
             (client.patch, {"data": {"k": "v w", "n": ["1", "2"]}}, "PATCH", b"k=v+w&n=1&n=2"),
             (client.delete, {"data": b"gone"}, "DELETE", b"gone")]
    for call, kwargs, method, body in calls:
        r = call(url, timeout=(TIMEOUT, TIMEOUT), **kwargs)
        assert r.status_code == 200 and r.request.method == method
        assert r.json()["method"] == method and r.json()["body"] == body.decode("latin-1")
        seen_method, path, headers, seen_body = stdlib.last()
        assert (seen_method, path, seen_body) == (method, "/echo", body)
        assert headers["content-length"] == [str(len(body))]
    assert stdlib.connections == 3                            # one Session each


def test_head_204_and_304_have_no_body(rest, session):
    get = session.get(rest + "/get")
    head = session.head(rest + "/get")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0 and head.headers["content-type"] == "application/json"
    for code in (204, 304):
        r = session.get(rest + f"/status/{code}")
        assert r.status_code == code and r.content == b""
    assert session.get(rest + "/get").json()["url"] == get.json()["url"]
    assert session.client.connections == 1


def test_keep_alive_reuses_one_connection_per_origin(stdlib, session):
    for i in range(20):
        assert session.get(stdlib.url + f"/echo?i={i}").json()["path"] == f"/echo?i={i}"
    assert stdlib.connections == 1 and session.client.connections == 1


def test_chunked_and_close_delimited_bodies(rest, stdlib, session):
    r = session.get(stdlib.url + "/chunked")
    assert r.content == b"hello chunked world" and "content-length" not in r.headers
    r = session.get(stdlib.url + "/close-delimited")
    assert r.content == b"until the end" * 1000
    lines = session.get(rest + "/stream/5").text.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2, 3, 4]
    assert len(session.get(rest + "/bytes/100000").content) == 100000


def test_text_is_decoded_by_the_charset(stdlib, session):
    r = session.get(stdlib.url + "/charset")
    assert r.content == b"caf\xe9" and r.text == "caf\u00e9"


def test_basic_auth(rest, session):
    assert session.get(rest + "/basic-auth/user/passwd", auth=("user", "passwd")).json() == {
        "authenticated": True, "user": "user"}
    assert session.get(rest + "/basic-auth/user/passwd", auth=("user", "wrong")).status_code == 401
    assert session.get(rest + "/basic-auth/user/passwd").status_code == 401
    host = rest.split("//")[1]
    assert session.get(f"http://user:passwd@{host}/basic-auth/user/passwd").status_code == 200
    with pytest.raises(client.HTTPStatusError) as info:
        session.get(rest + "/basic-auth/user/passwd").raise_for_status()
    assert info.value.response.status_code == 401


# -- cookies ---------------------------------------------------------------------------------------

def test_session_keeps_cookies(rest, session):
    r = session.get(rest + "/cookies/set", params={"k1": "v1", "k2": "v2"})
    assert r.json() == {"cookies": {"k1": "v1", "k2": "v2"}}           # sent on the redirect
    assert [h.status_code for h in r.history] == [302]
    assert cookies.as_dict(r.history[0].cookies) == {"k1": "v1", "k2": "v2"}
    assert session.get(rest + "/cookies").json() == {"cookies": {"k1": "v1", "k2": "v2"}}


def test_cookies_from_one_response_to_the_next_request(rest):
    first = client.get(rest + "/cookies/set?token=abc", allow_redirects=False)
    assert first.status_code == 302 and cookies.as_dict(first.cookies) == {"token": "abc"}
    second = client.get(rest + "/cookies", cookies=first.cookies)
    assert second.json() == {"cookies": {"token": "abc"}}
    third = client.get(rest + "/cookies", cookies={"given": "x_y"})
    assert third.json() == {"cookies": {"given": "x_y"}}


def test_cookie_domain_and_path_rules(stdlib, session):
    session.get(stdlib.url + "/setcookie", params={"a": "in_a=1; Path=/a", "z": "everywhere=2; Path=/"})
    assert session.get(stdlib.url + "/a/x").json()["headers"]["cookie"][0] in (
        "in_a=1; everywhere=2", "everywhere=2; in_a=1")
    assert session.get(stdlib.url + "/b/x").json()["headers"]["cookie"] == ["everywhere=2"]
    other = stdlib.url.replace("127.0.0.1", "localhost")                 # another host
    assert "cookie" not in session.get(other + "/b/x").json()["headers"]
    session.get(stdlib.url + "/setcookie", params={"a": "everywhere=; Max-Age=0; Path=/"})
    assert session.get(stdlib.url + "/b/x").json()["headers"].get("cookie") is None


# -- redirects -------------------------------------------------------------------------------------

def test_redirects_followed_up_to_the_limit(rest, session):
    r = session.get(rest + "/redirect/3")
    assert r.status_code == 200 and r.url == rest + "/get"
    assert [h.status_code for h in r.history] == [302, 302, 302]
    assert [h.url for h in r.history] == [rest + "/redirect/3", rest + "/redirect/2", rest + "/redirect/1"]
    assert len(session.get(rest + "/redirect/10").history) == 10
    with pytest.raises(TooManyRedirects) as info:
        session.get(rest + "/redirect/11")
    assert info.value.response.status_code == 302
    with pytest.raises(TooManyRedirects):
        session.get(rest + "/redirect/3", max_redirects=2)
    r = session.get(rest + "/redirect/3", allow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "/redirect/2" and r.is_redirect


@pytest.mark.parametrize("code, method, body_kept", [
    (301, "POST", False), (302, "POST", False), (303, "POST", False), (303, "PUT", False),
    (307, "POST", True), (308, "PUT", True), (302, "PUT", True)])
def test_redirect_method_and_body(stdlib, session, code, method, body_kept):
    r = session.request(method, stdlib.url + "/redirect", params={"code": code, "to": "/echo"},
                        data={"k": "v"})
    echoed = r.json()
    assert echoed["method"] == (method if body_kept else "GET")
    assert echoed["body"] == ("k=v" if body_kept else "")
    assert ("content-type" in echoed["headers"]) == body_kept


def test_streamed_body_is_replayed_on_307_when_seekable(stdlib, session):
    r = session.post(stdlib.url + "/redirect", params={"code": 307, "to": "/echo"},
                     files={"f": ("a.txt", io.BytesIO(b"payload"))})
    assert "payload" in r.json()["body"] and r.json()["method"] == "POST"


def test_cross_origin_redirect_drops_credentials_and_cookies(stdlib):
    with stdlib_server("localhost") as other, Session() as s:
        s.get(stdlib.url + "/setcookie", params={"a": "jar=1; Path=/"})
        target = other.url + "/echo"
        r = s.get(stdlib.url + "/redirect", params={"to": target}, auth=("u", "p"),
                  headers={"Cookie": "explicit=1", "X-Kept": "yes"}, cookies={"given": "2"})
        assert r.url == target and r.status_code == 200
        first = stdlib.last()[2]
        assert first["authorization"] and "explicit=1" in first["cookie"][0]
        seen = r.json()["headers"]
        assert "authorization" not in seen and "cookie" not in seen
        assert seen["x-kept"] == ["yes"] and seen["host"] == [other.url.split("//")[1]]
        # the same host on another port is another origin too: no Authorization, no cookies=
        same_host = other.url.replace("localhost", "127.0.0.1") + "/echo"
        r = s.get(stdlib.url + "/redirect", params={"to": same_host}, auth=("u", "p"),
                  cookies={"given": "2"})
        seen = r.json()["headers"]
        assert "authorization" not in seen and seen["cookie"] == ["jar=1"]
        # same origin: Authorization follows
        r = s.get(stdlib.url + "/redirect", params={"to": "/echo"}, auth=("u", "p"))
        assert r.json()["headers"]["authorization"] == ["Basic dTpw"]


def test_https_to_http_redirect_is_refused_unless_allowed():
    reactor = Reactor()
    try:
        c = HTTPClient(reactor)
        ex = c._prepare("GET", "https://127.0.0.1:1/x", None, None, None, None, None, None, None,
                        client._DEFAULT, True, None, None)
        ex.future = client.ResponseFuture()
        response = client.Response(302, b"Found", [(b"location", b"http://127.0.0.1:1/y")], b"",
                                   ex.url.url)
        with pytest.raises(InsecureRedirect):
            c._redirect(ex, response, "http://127.0.0.1:1/y")
        ex.allow_downgrade = True
        assert c._redirect(ex, response, "http://127.0.0.1:1/y").url.url == "http://127.0.0.1:1/y"
        assert c._redirect(ex, response, "https://127.0.0.1:1/z").url.scheme == "https"
    finally:
        reactor.close()


# -- uploads ---------------------------------------------------------------------------------------

class CountingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list = []

    def read(self, size=-1):
        self.sizes.append(size)
        return super().read(size)


def test_files_are_streamed_in_pieces(rest, session):
    content = (b"0123456789abcdef" * 64 + b"\n") * 1024          # ~1 MiB, all UTF-8
    upload = CountingFile(content)
    r = session.post(rest + "/post", files={"file": ("big.txt", upload)}, data={"note": "n"})
    assert r.status_code == 200
    body = r.json()
    assert body["files"]["file"] == content.decode() and body["form"] == {"note": "n"}
    assert body["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    assert len(upload.sizes) > 10 and all(0 < s <= CHUNK for s in upload.sizes)


class PositionFile(io.RawIOBase):
    """size bytes of b"x", made as they are read (50 MB costs nothing); pos is how far the
    client has read it."""

    def __init__(self, size: int) -> None:
        self.size, self.pos = size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + offset
        return self.pos

    def read(self, size=-1) -> bytes:
        n = self.size - self.pos if size is None or size < 0 else min(size, self.size - self.pos)
        self.pos += n
        return b"x" * n


@pytest.mark.timeout(30)
def test_a_large_file_is_read_only_as_fast_as_the_server_takes_it():
    """A server that accepts and never reads: the client reads a 50 MB file only as far as the
    socket buffers and its own high-water mark can hold, not whole (issue 4: streamed)."""
    size = 50 * 1000 * 1000
    upload = PositionFile(size)
    listener = socket.create_server(("127.0.0.1", 0))
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=(5, 30))
        future = c.post(f"http://127.0.0.1:{listener.getsockname()[1]}/", data=upload)
        listener.settimeout(5)
        peer, _ = listener.accept()
        with peer:
            # Turn the reactor until the read position has stood still for 20 turns of 10 ms
            # (the kernel buffers are full and the client waits for the server), at most 10 s.
            still, last, deadline = 0, -1, time.monotonic() + 10
            while still < 20 and time.monotonic() < deadline:
                reactor.run_once(0.01)
                still, last = (still + 1, last) if upload.pos == last else (0, upload.pos)
            assert still >= 20, f"still reading at {upload.pos} bytes"
            assert not future.done()
            [handler] = c._handlers
            buffers = (handler.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                       + peer.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
            # Linux reports the doubled buffer sizes already; another 2x for what loopback
            # queues beyond them (skb overhead accounting), then the write buffer and a chunk.
            allowance = handler.high_water + CHUNK + 2 * buffers
            assert 0 < upload.pos <= allowance, (upload.pos, allowance)
            assert upload.pos < size // 4
        future.cancel()
    finally:
        listener.close()
        reactor.close()


def test_upload_from_a_real_file(rest, session, tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"a,b\n1,2\n")
    with open(path, "rb") as f:
        r = session.post(rest + "/post", files={"file": f})
    assert r.json()["files"] == {"file": "a,b\n1,2\n"}
    with open(path, "rb") as f:
        r = session.put(rest + "/put", data=f)
    assert r.json()["data"] == "a,b\n1,2\n" and r.request.headers["content-length"] == "8"


# -- the asynchronous API --------------------------------------------------------------------------

def test_100_concurrent_requests_on_one_reactor(rest):
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=(TIMEOUT, TIMEOUT))
        futures = [c.get(rest + "/get", params={"i": i}) for i in range(100)]
        assert 0 < c.connections <= client.MAX_PER_HOST        # the rest wait for a connection
        run_until(reactor, lambda: all(f.done() for f in futures), timeout=30)
        assert [f.result().json()["args"]["i"] for f in futures] == [str(i) for i in range(100)]
        c100 = HTTPClient(reactor, max_per_host=100)
        futures = [c100.post(rest + "/post", json={"i": i}) for i in range(100)]
        assert c100.connections == 100
        run_until(reactor, lambda: all(f.done() for f in futures), timeout=30)
        assert [f.result().json()["json"]["i"] for f in futures] == list(range(100))
        assert c100.connections == 100                         # all kept alive for reuse
        c.close()
        c100.close()
        run_until(reactor, lambda: not reactor.handlers, timeout=10)
    finally:
        reactor.close()


def test_callbacks_run_on_the_reactor_thread():
    with ReactorThread() as rt, stdlib_server() as server:
        c = HTTPClient(rt.reactor)
        seen = []
        done = threading.Event()

        def callback(future):
            seen.append((threading.current_thread() is rt._thread, future.result().status_code))
            done.set()
        rt.call(c.get, server.url + "/echo", callback=callback)
        assert done.wait(TIMEOUT) and seen == [(True, 200)]
        future = c.submit("GET", server.url + "/echo")         # from this (another) thread
        assert future.wait(TIMEOUT) and future.result().json()["method"] == "GET"
        rt.call(c.close)


def test_a_future_can_be_cancelled(raw_server):
    server = raw_server([(b"", "hang")])
    reactor = Reactor()
    try:
        c = HTTPClient(reactor)
        future = c.get(server.url + "/")
        run_until(reactor, lambda: server.requests)
        assert future.cancel() and future.cancelled() and not future.cancel()
        with pytest.raises(RequestCancelled):
            future.result()
        run_until(reactor, lambda: c.connections == 0)           # its connection was aborted
        pending = c.get(server.url + "/")
        with pytest.raises(RuntimeError):
            pending.result()                                    # not done: no blocking here
        assert pending.cancel()
    finally:
        reactor.close()


def test_session_after_close_refuses():
    s = Session()
    s.close()
    with pytest.raises(RequestCancelled):
        s.get("http://127.0.0.1:1/")


def test_callers_host_does_not_follow_a_redirect_to_another_origin(raw_server):
    other = raw_server()
    server = raw_server([(b"HTTP/1.1 302 Found\r\nLocation: %s/x\r\nContent-Length: 0\r\n\r\n"
                          % other.url.encode(), "keep")])
    with Session(timeout=5) as s:
        assert s.get(server.url + "/", headers={"Host": "app.example"}).status_code == 200
    assert b"\r\nhost: app.example\r\n" in server.requests[0] + b"\r\n"
    assert b"\r\nhost: %s\r\n" % other.url.split("//")[1].encode() in other.requests[0] + b"\r\n"


def test_idle_timer_is_gone_once_the_pool_is_empty(raw_server):
    server = raw_server([(OK_REPLY, "keep")])
    reactor = Reactor()
    try:
        c = HTTPClient(reactor, timeout=5, pool_idle_timeout=0.2)
        future = c.get(server.url + "/")
        run_until(reactor, future.done)
        assert future.result().content == b"ok" and reactor.stats()["timers"] == 1
        run_until(reactor, lambda: c.connections == 0 and reactor.stats()["timers"] == 0)
    finally:
        reactor.close()
