"""apps.rest as a user runs it (`python -m apps.rest --port 0`, one process for the module), with
the stdlib's HTTP clients as the oracle: urllib for recipe 11.5's pages and for what its handlers
do (redirects, cookies, basic auth), http.client for the httpbin-style endpoints, all on ONE
kept-alive connection that every test checks was never reopened, and raw sockets for pipelining
and malformed requests, whose answers the project's own client core parses."""
from __future__ import annotations

import base64
import csv
import http.client
import http.cookiejar
import io
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from protocols.http import ClientConnection, Data, EndOfMessage, Request, Response

from . import _proc

TIMEOUT = 10.0
TIME_FIELDS = ["year", "month", "day", "hour", "minute", "second"]


@pytest.fixture(scope="module")
def rest():
    """The service's endpoint; at the end, it must stop with 0 and never have logged a traceback."""
    with _proc.running("rest") as (proc, [endpoint]):
        assert (endpoint.scheme, endpoint.host, endpoint.service) == ("http", "127.0.0.1", "rest")
        yield endpoint
    assert proc.returncode == 0, proc.stderr_text
    assert "Traceback" not in proc.stderr_text, proc.stderr_text


@pytest.fixture(scope="module")
def base(rest):
    return f"http://{rest.host}:{rest.port}"


def fetch(url: str, opener=None) -> tuple[http.client.HTTPResponse, bytes]:
    resp = (opener.open if opener else urllib.request.urlopen)(url, timeout=TIMEOUT)
    with resp:
        return resp, resp.read()


def now() -> tuple[int, ...]:
    return tuple(time.localtime())[:6]


# -- recipe 11.5 with urllib ----------------------------------------------------------------------

HELLO_PAGE = """\
<html>
  <head>
     <title>Hello {name}</title>
   </head>
   <body>
     <h1>Hello {name}!</h1>
   </body>
</html>"""


def test_hello_is_the_recipes_page(base):
    resp, body = fetch(base + "/hello?name=Guido")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html"
    assert body.decode() == HELLO_PAGE.format(name="Guido")
    assert "<h1>Hello Guido!</h1>" in body.decode()


def test_hello_escapes_the_name(base):
    name = "<script>alert('x')</script>&"
    resp, body = fetch(base + "/hello?" + urllib.parse.urlencode({"name": name}))
    assert resp.status == 200
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;"
    assert body.decode() == HELLO_PAGE.format(name=escaped)
    assert b"<script>" not in body


def test_localtime_is_the_recipes_xml(base):
    before = now()
    resp, body = fetch(base + "/localtime")
    after = now()
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/xml"
    assert body.startswith(b'<?xml version="1.0"?>')
    root = ET.fromstring(body)
    assert root.tag == "time"
    assert [child.tag for child in root] == TIME_FIELDS
    assert before <= tuple(int(child.text) for child in root) <= after


def test_localtime_json(base):
    before = now()
    resp, body = fetch(base + "/localtime.json")
    after = now()
    assert resp.headers["Content-Type"] == "application/json"
    got = json.loads(body)
    assert sorted(got) == sorted(TIME_FIELDS)
    assert all(type(got[name]) is int for name in TIME_FIELDS)
    assert before <= tuple(got[name] for name in TIME_FIELDS) <= after


def test_localtime_csv(base):
    before = now()
    resp, body = fetch(base + "/localtime.csv")
    after = now()
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    header, values = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert header == TIME_FIELDS
    assert before <= tuple(int(v) for v in values) <= after


# -- httpbin-style endpoints on one kept-alive http.client connection ------------------------------

class CountingConnection(http.client.HTTPConnection):
    """An HTTPConnection that counts its connects: http.client reconnects silently when the
    server closes, which would hide a broken keep-alive."""

    connects = 0

    def connect(self) -> None:
        super().connect()
        self.connects += 1


@pytest.fixture(scope="module")
def kept(rest):
    """(connection, its socket): one connection for every test below."""
    conn = CountingConnection(rest.host, rest.port, timeout=TIMEOUT)
    conn.connect()
    yield conn, conn.sock
    conn.close()


def exchange(kept, method: str, target: str, body: bytes | None = None,
             headers: dict | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on the kept connection, the whole response read; the same socket after."""
    conn, sock = kept
    assert conn.sock is sock
    conn.request(method, target, body, headers or {})
    resp = conn.getresponse()
    data = resp.read()
    assert not resp.will_close, resp.headers
    assert conn.sock is sock and conn.connects == 1          # the same socket, never reopened
    return resp, data


def test_get_repeated_args_are_a_list(kept, rest):
    resp, body = exchange(kept, "GET", "/get?a=1&a=2&b=x%20y")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    got = json.loads(body)
    assert got["args"] == {"a": ["1", "2"], "b": "x y"}
    assert got["url"] == f"http://{rest.host}:{rest.port}/get?a=1&a=2&b=x%20y"
    assert got["headers"]["Host"] == f"{rest.host}:{rest.port}"
    assert got["origin"] == "127.0.0.1"


def test_post_urlencoded_form(kept):
    form = urllib.parse.urlencode([("x", "1"), ("y", "hello world"), ("y", "&=")])
    resp, body = exchange(kept, "POST", "/post?q=1", form.encode(),
                          {"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200
    got = json.loads(body)
    assert got["form"] == {"x": "1", "y": ["hello world", "&="]}
    assert got["args"] == {"q": "1"}
    assert (got["files"], got["json"]) == ({}, None)
    assert got["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("query, form", [("s=hello", "s=ell"),     # a substring of the query's
                                         ("k=1", "k=1")],           # equal to the query's
                         ids=["substring", "equal"])
def test_post_form_field_named_like_a_query_arg(kept, query, form):
    """httpbin reports the body's fields in `form` and the query's in `args`, whatever they hold."""
    resp, body = exchange(kept, "POST", f"/post?{query}", form.encode(),
                          {"Content-Type": "application/x-www-form-urlencoded"})
    got = json.loads(body)
    assert got["args"] == dict([query.split("=")])
    assert got["form"] == dict([form.split("=")])


def test_post_json(kept):
    obj = {"name": "Guido", "langs": ["python", "abc"], "n": 3, "ok": True, "none": None}
    raw = json.dumps(obj)
    resp, body = exchange(kept, "POST", "/post", raw.encode(), {"Content-Type": "application/json"})
    assert resp.status == 200
    got = json.loads(body)
    assert got["json"] == obj
    assert got["data"] == raw
    assert (got["form"], got["files"]) == ({}, {})


def test_post_invalid_json_is_400(kept):
    resp, body = exchange(kept, "POST", "/post", b"{not json", {"Content-Type": "application/json"})
    assert resp.status == 400
    assert json.loads(body) == {"error": "invalid JSON body"}


def test_post_multipart_with_files(kept):
    boundary = "----pytest-7MA4YWxkTrZu0gW"
    text = "line one\r\nline two, café\n"
    blob = bytes(range(256))                                   # not UTF-8: comes back base64
    wire = b"".join([
        f"--{boundary}\r\n".encode(),
        b'Content-Disposition: form-data; name="note"\r\n\r\n',
        b"hi there\r\n",
        f"--{boundary}\r\n".encode(),
        b'Content-Disposition: form-data; name="upload"; filename="a.txt"\r\n',
        b"Content-Type: text/plain\r\n\r\n",
        text.encode() + b"\r\n",
        f"--{boundary}\r\n".encode(),
        b'Content-Disposition: form-data; name="blob"; filename="b.bin"\r\n',
        b"Content-Type: application/octet-stream\r\n\r\n",
        blob + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ])
    resp, body = exchange(kept, "POST", "/post", wire,
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status == 200
    got = json.loads(body)
    assert got["form"] == {"note": "hi there"}
    assert got["files"] == {
        "upload": text,
        "blob": "data:application/octet-stream;base64," + base64.b64encode(blob).decode()}
    assert got["json"] is None


def test_head_get_has_no_body_but_its_length(kept):
    get, get_body = exchange(kept, "GET", "/get")
    head, head_body = exchange(kept, "HEAD", "/get")
    assert head.status == 200 and head_body == b""
    assert head.headers["Content-Length"] == str(len(get_body)) == get.headers["Content-Length"]
    assert head.headers["Content-Type"] == "application/json"
    again, again_body = exchange(kept, "GET", "/get")              # no stray body bytes between
    assert again.status == 200 and again_body == get_body


def test_headers_echoes_a_custom_header(kept):
    value = "some value; with=stuff, and \"quotes\""
    resp, body = exchange(kept, "GET", "/headers", headers={"X-Custom-Thing": value})
    assert resp.status == 200
    assert json.loads(body)["headers"]["X-Custom-Thing"] == value


def test_status_418(kept):
    resp, body = exchange(kept, "GET", "/status/418")
    assert (resp.status, resp.reason, body) == (418, "I'm a teapot", b"")


def test_status_204_has_no_body(kept):
    resp, body = exchange(kept, "GET", "/status/204")
    assert (resp.status, body) == (204, b"")
    assert "Content-Length" not in resp.headers and "Transfer-Encoding" not in resp.headers
    after, _ = exchange(kept, "GET", "/status/200")                  # framing still in step
    assert after.status == 200


def test_bytes_1000(kept):
    resp, body = exchange(kept, "GET", "/bytes/1000")
    assert resp.status == 200 and len(body) == 1000
    assert resp.headers["Content-Length"] == "1000"
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert exchange(kept, "GET", "/bytes/1000?seed=7")[1] == exchange(kept, "GET", "/bytes/1000?seed=7")[1]


def test_stream_5_is_chunked_json_lines(kept, rest):
    resp, body = exchange(kept, "GET", "/stream/5?x=1")
    assert resp.status == 200
    assert resp.chunked and resp.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in resp.headers
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line["id"] for line in lines] == [0, 1, 2, 3, 4]
    assert all(line["args"] == {"x": "1"} for line in lines)
    assert lines[0]["url"] == f"http://{rest.host}:{rest.port}/stream/5?x=1"


def test_redirect_points_one_step_closer(kept):
    resp, _ = exchange(kept, "GET", "/redirect/3")
    assert (resp.status, resp.headers["Location"]) == (302, "/redirect/2")


@pytest.mark.parametrize("method, target", [("GET", "/no/such/path"), ("DELETE", "/nope"),
                                            ("GET", "/status/abc")])
def test_unknown_path_is_404(kept, method, target):
    resp, body = exchange(kept, method, target)
    assert resp.status == 404
    assert body == b"Not Found\n"


@pytest.mark.parametrize("method, target, allowed", [
    ("DELETE", "/get", {"GET", "HEAD"}),
    ("POST", "/get", {"GET", "HEAD"}),
    ("GET", "/post", {"POST"}),
])
def test_wrong_method_is_405_with_allow(kept, method, target, allowed):
    resp, _ = exchange(kept, method, target)
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(", ")) == allowed


# -- urllib's handlers: redirects, cookies, basic auth ---------------------------------------------

class RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, noting each hop."""

    def __init__(self) -> None:
        self.hops: list[tuple[int, str]] = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append((code, urllib.parse.urlsplit(newurl).path))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class RecordingStatuses(urllib.request.BaseHandler):
    """Notes every response's status before HTTPErrorProcessor (order 1000) acts on it."""

    handler_order = 100

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def http_response(self, request, response):
        self.statuses.append(response.status)
        return response


def test_redirect_3_is_followed_to_get(base):
    hops = RecordingRedirects()
    resp, body = fetch(base + "/redirect/3", urllib.request.build_opener(hops))
    assert resp.status == 200 and resp.url == base + "/get"
    assert hops.hops == [(302, "/redirect/2"), (302, "/redirect/1"), (302, "/get")]
    assert json.loads(body)["url"] == base + "/get"


def test_cookies_set_then_sent_back(base):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    resp, body = fetch(base + "/cookies/set?k=v", opener)          # 302 to /cookies, followed
    assert resp.url == base + "/cookies"
    assert json.loads(body) == {"cookies": {"k": "v"}}
    assert [(c.name, c.value, c.path) for c in jar] == [("k", "v", "/")]
    assert json.loads(fetch(base + "/cookies", opener)[1]) == {"cookies": {"k": "v"}}
    assert json.loads(fetch(base + "/cookies")[1]) == {"cookies": {}}    # no jar, no cookie


def basic_auth_opener(base: str, user: str, passwd: str):
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(None, base, user, passwd)
    statuses = RecordingStatuses()
    return urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(passwords), statuses), statuses


def test_basic_auth_challenge_then_success(base):
    with pytest.raises(urllib.error.HTTPError) as info:
        fetch(base + "/basic-auth/u/p")
    with info.value:
        assert info.value.code == 401
        assert info.value.headers["WWW-Authenticate"] == 'Basic realm="Fake Realm"'
    opener, seen = basic_auth_opener(base, "u", "p")
    resp, body = fetch(base + "/basic-auth/u/p", opener)
    assert seen.statuses == [401, 200]              # challenged, then answered with credentials
    assert json.loads(body) == {"authenticated": True, "user": "u"}


def test_basic_auth_wrong_password_stays_401(base):
    opener, seen = basic_auth_opener(base, "u", "wrong")
    with pytest.raises(urllib.error.HTTPError) as info:
        fetch(base + "/basic-auth/u/p", opener)
    info.value.close()
    assert info.value.code == 401
    assert seen.statuses == [401, 401]


# -- raw sockets: pipelining and malformed requests -------------------------------------------------

def read_response(sock: socket.socket, client: ClientConnection, events: list) -> tuple[Response, bytes]:
    """Receive until the client core has a whole response; events may already hold some."""
    while not events or type(events[-1]) is not EndOfMessage:
        data = sock.recv(1 << 16)
        assert data, f"the server closed mid-response; events so far {events!r}"
        events += client.receive_data(data)
    assert type(events[0]) is Response, events
    return events[0], b"".join(e.data for e in events if type(e) is Data)


def test_16_pipelined_requests_are_answered_in_order(rest):
    wire = b"".join(b"GET /get?i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(16))
    client = ClientConnection()
    with socket.create_connection(rest.address, timeout=TIMEOUT) as sock:
        sock.sendall(wire)                                          # all 16 in one write
        for i in range(16):
            events = client.start_next_cycle() if i else []      # what is buffered already
            client.send(Request(b"GET", b"/get?i=%d" % i, [(b"host", b"x")]))   # state only
            client.send(EndOfMessage())
            response, body = read_response(sock, client, events)
            assert response.status_code == 200
            got = json.loads(body)
            assert got["args"] == {"i": str(i)}, (i, got)
            assert got["url"] == f"http://x/get?i={i}"
        assert client.their_state == "DONE" and client.trailing_data == 0   # kept alive, nothing extra


@pytest.mark.parametrize("bad", [b"Content-Length: +5",
                                 b"Content-Length: 5_0",
                                 b"Content-Length: 5\r\nContent-Length: 6",
                                 b"Content-Length: 5\r\nTransfer-Encoding: chunked"])
def test_malformed_request_is_400_and_close(rest, base, bad):
    with socket.create_connection(rest.address, timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /post HTTP/1.1\r\nHost: x\r\n" + bad + b"\r\n\r\nhello")
        client = ClientConnection()
        client.send(Request(b"POST", b"/post", [(b"host", b"x")]))
        client.send(EndOfMessage())
        response, body = read_response(sock, client, [])
        assert response.status_code == 400
        assert (b"connection", b"close") in response.headers
        assert body.startswith(b"400 Bad Request")
        assert _proc.recv_to_eof(sock) == b""                       # and then it closes
    resp, _ = fetch(base + "/get")                                  # the server serves on
    assert resp.status == 200
