"""The HTTP client's parts that need no network: the response fast path of ClientConnection
(it must agree with the general parser on everything it takes), URL and header checks, request
bodies (form, JSON, multipart), and the cookie jar glue."""
from __future__ import annotations

import email.parser
import email.policy
import io
import urllib.request

import pytest

from protocols import cookies
from protocols.client import URL, Headers, InvalidRequest, InvalidURL, Response, basic_auth, parse_url
from protocols.client_request import _encode_header
from protocols.client_body import CHUNK, FileBody, IterBody, MultipartBody, encode_body
from protocols.forms import parse_multipart
from protocols.http import (DONE, MUST_CLOSE, ClientConnection, Data, EndOfMessage, Request,
                            Response as Head)
from protocols.base import RemoteProtocolError

# -- the response fast path agrees with the general parser ---------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
CORPUS = [
    OK,
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\ncontent-length:  3 \r\nX:  a b \t\r\n\r\nabc",
    b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nhi",                      # no reason phrase
    b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nhi",                     # empty reason
    b"HTTP/1.1 999 Odd\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",   # repeat: general
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",   # general
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",           # longer than announced
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",                  # shorter: waits
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",             # no body for 204
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",                   # 1.0: must close
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",               # refused by both
    b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\n X: folded\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
    b"HTTP/1.1 20 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: " + b"a" * 70000 + b"\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"Content-Length: 1\r\n\r\nz",
]


def run(conn: ClientConnection, *pieces: bytes):
    events, error = [], None
    try:
        for piece in pieces:
            events += conn.receive_data(piece)
    except RemoteProtocolError as exc:
        error = str(exc)
    return events, error, conn.their_state, conn.keep_alive, conn.trailing_data


def fresh(method: bytes = b"GET") -> ClientConnection:
    conn = ClientConnection()
    conn.send(Request(method, b"/", [(b"host", b"example")]))
    conn.send(EndOfMessage())
    return conn


@pytest.mark.parametrize("wire", CORPUS)
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_fast_path_agrees_with_the_general_parser(wire, method):
    whole = run(fresh(method), wire)                       # one read: the fast path may take it
    split = run(fresh(method), wire[:1], wire[1:])         # the general parser, always
    assert whole == split


def test_fast_path_takes_the_common_response():
    conn = fresh()
    events = conn.receive_data(OK)
    assert [type(e) for e in events] == [Head, Data, EndOfMessage]
    assert events[0].headers == [(b"content-type", b"text/plain"), (b"content-length", b"5")]
    assert conn.their_state is DONE
    conn.start_next_cycle()
    conn.send(Request(b"GET", b"/", [(b"host", b"example")]))
    conn.send(EndOfMessage())
    assert [type(e) for e in conn.receive_data(OK)] == [Head, Data, EndOfMessage]


def test_a_close_request_makes_the_response_end_the_connection():
    conn = ClientConnection()
    head = conn.send(Request(b"GET", b"/", [(b"host", b"a"), (b"Connection", b"close")]))
    assert head == b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    conn.send(EndOfMessage())
    conn.receive_data(OK)
    assert conn.their_state is MUST_CLOSE


@pytest.mark.parametrize("cut", range(len(OK) + 1))
def test_response_split_anywhere(cut):
    events, error, state, _, _ = run(fresh(), *[p for p in (OK[:cut], OK[cut:]) if p])   # b"" is EOF
    assert error is None and state is DONE
    assert b"".join(e.data for e in events if type(e) is Data) == b"hello"


# -- URLs ----------------------------------------------------------------------------------------

def test_parse_url_splits_and_defaults():
    u = parse_url("http://Example.COM/a/b?x=1#frag")
    assert (u.scheme, u.host, u.port, u.host_header, u.target) == ("http", "example.com", 80,
                                                                  "example.com", "/a/b?x=1")
    assert u.url == "http://example.com/a/b?x=1"
    u = parse_url("https://[::1]:8443")
    assert (u.host, u.port, u.host_header, u.target) == ("::1", 8443, "[::1]:8443", "/")
    u = parse_url("http://u%40x:p%3Aw@h:81/", {"q": ["1", "2"], "s": "a b"})
    assert (u.user, u.password, u.host_header, u.target) == ("u@x", "p:w", "h:81", "/?q=1&q=2&s=a+b")
    assert parse_url("http://h/p?a=1", {"b": 2}).target == "/p?a=1&b=2"


def test_parse_url_escapes_what_cannot_go_on_the_wire():
    assert parse_url("http://h/a b/é?q=ü x").target == "/a%20b/%C3%A9?q=%C3%BC%20x"
    assert parse_url("http://h/%41%20").target == "/%41%20"          # escapes kept as given
    assert parse_url("http://bücher.example/").host == "xn--bcher-kva.example"


def test_a_hash_in_a_params_string_is_escaped_not_a_fragment():
    assert parse_url("http://h/p", "q=a#b").target == "/p?q=a%23b"
    assert parse_url("http://h/p?x=1", b"tag=#1").target == "/p?x=1&tag=%231"
    assert parse_url("http://h/p", {"q": "a#b"}).target == "/p?q=a%23b"


def test_url_cache_keeps_no_credentials():
    from protocols import client_request
    secret = "http://user:s3cret@cache-test.example/"
    assert parse_url(secret).password == "s3cret"
    assert secret not in client_request._url_cache
    assert all(u.password is None for u in client_request._url_cache.values())
    parse_url("http://cache-test.example/")
    assert "http://cache-test.example/" in client_request._url_cache


@pytest.mark.parametrize("url", [
    "http://h/a\r\nX-Injected: 1", "http://h/\n", "http://h/\x00", "http://h\t/", "http://h/\x7f",
    "ftp://h/", "h/path", "http:///path", "http://h:99999/", "http://h:x/", "http://a b/",
    "http://[zz::1]/", "http://[fe80::1%\u00fc]/", 42,
])
def test_parse_url_refuses(url):
    with pytest.raises(InvalidURL):
        parse_url(url)


# -- headers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("X", "a\r\nInjected: 1"), ("X", "a\nb"), ("X", "a\rb"), ("X", "a\x00b"), ("X", "\x1b[31m"),
    ("X Y", "v"), ("X:", "v"), ("", "v"), ("X", "caf\u00e9\u20ac"), ("X", object()),
])
def test_header_refused_before_sending(name, value):
    with pytest.raises(InvalidRequest):
        _encode_header(name, value)


def test_header_encoding():
    assert _encode_header("X-Num", 5) == (b"x-num", b"5")
    assert _encode_header(b"X", b"tab\tok") == (b"x", b"tab\tok")
    assert _encode_header("X", "caf\u00e9") == (b"x", b"caf\xe9")
    assert basic_auth("user", "pässword") == b"Basic dXNlcjpww6Rzc3dvcmQ="
    with pytest.raises(InvalidRequest):
        basic_auth("a:b", "c")


def test_response_headers_are_case_insensitive():
    r = Response(200, b"OK", [(b"content-type", b"text/html; charset=ISO-8859-1"),
                              (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")], b"caf\xe9", "http://h/")
    assert r.headers["Content-Type"] == r.headers["content-type"] == "text/html; charset=ISO-8859-1"
    assert "SET-COOKIE" in r.headers and r.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert r.headers["set-cookie"] == "a=1, b=2" and r.headers.get("missing") is None
    assert r.text == "café" and r.charset == "ISO-8859-1" and r.reason == "OK" and r.ok
    r.encoding = "utf-8"
    assert r.text == "caf\ufffd"
    assert Headers({"A": "1"})["a"] == "1"


# -- bodies --------------------------------------------------------------------------------------

def test_form_json_and_raw_bodies():
    assert encode_body(data={"a": "1 2", "b": ["x", "&"]}) == (b"a=1+2&b=x&b=%26",
                                                               "application/x-www-form-urlencoded")
    assert encode_body(data=[("a", 1), ("a", 2)])[0] == b"a=1&a=2"
    assert encode_body(json={"k": [1, None]}) == (b'{"k": [1, null]}', "application/json")
    assert encode_body(data="é") == (b"\xc3\xa9", None)
    assert encode_body(data=b"\x00raw") == (b"\x00raw", None)
    assert encode_body() == (None, None)
    with pytest.raises(ValueError):
        encode_body(data={"a": 1}, json={})
    body, _ = encode_body(data=(p for p in [b"a", "b"]))
    assert isinstance(body, IterBody) and body.length is None and b"".join(body) == b"ab"
    assert not body.rewind()


def test_file_body_is_streamed_with_its_length(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (3 * CHUNK + 5))
    with open(path, "rb") as f:
        f.read(5)
        body, ctype = encode_body(data=f)
        assert isinstance(body, FileBody) and ctype is None and body.length == 3 * CHUNK
        pieces = list(body)
        assert [len(p) for p in pieces] == [CHUNK] * 3
        assert body.rewind() and sum(len(p) for p in body) == 3 * CHUNK


class CountingFile(io.BytesIO):
    """Records every read() size: a whole-file read would show as -1 or None."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list = []

    def read(self, size=-1):
        self.sizes.append(size)
        return super().read(size)


def multipart_fields(body: MultipartBody):
    return parse_multipart(body.to_bytes(), body.content_type)


def test_multipart_round_trips_through_the_servers_parser():
    upload = CountingFile(b"a,b\r\n1,2\r\n" * 20000)
    body, ctype = encode_body(data={"title": "t\u00e9", "n": 3},
                              files={"file": ("data.csv", upload), "raw": b"bytes",
                                     "typed": ("x.bin", b"\x00\x01", "application/x-thing",
                                               {"X-Extra": "1"})})
    assert ctype.startswith("multipart/form-data; boundary=") and body.length is not None
    raw = body.to_bytes()
    assert len(raw) == body.length
    fields, files = parse_multipart(raw, ctype)
    assert fields == {"title": ["t\u00e9"], "n": ["3"]}
    assert files["file"][0].filename == "data.csv" and files["file"][0].content_type == "text/csv"
    assert files["file"][0].data == upload.getvalue()
    assert files["raw"][0].filename == "raw" and files["raw"][0].data == b"bytes"
    assert files["typed"][0].content_type == "application/x-thing"
    assert files["typed"][0].headers["x-extra"] == "1"
    assert upload.sizes and all(0 < s <= CHUNK for s in upload.sizes)        # never whole
    assert b"\r\n--" + body.boundary.encode() + b"--\r\n" == raw[-(len(body.boundary) + 8):]


def test_multipart_is_what_the_email_parser_reads():
    body, ctype = encode_body(files={"f": ("a.txt", b"line1\r\nline2")}, data={"k": "v"})
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body.to_bytes())
    parts = list(message.iter_parts())
    assert [p.get_param("name", header="content-disposition") for p in parts] == ["k", "f"]
    assert parts[1].get_filename() == "a.txt" and parts[1].get_payload(decode=True) == b"line1\r\nline2"


def test_multipart_escapes_names_and_filenames():
    body, ctype = encode_body(files={'fi"eld': ('we"ird\r\nX-Injected: 1.txt', b"x")})
    raw = body.to_bytes()
    assert b'name="fi%22eld"; filename="we%22ird%0D%0AX-Injected: 1.txt"' in raw
    assert b"\r\nX-Injected" not in raw
    _, files = parse_multipart(raw, ctype)
    assert files["fi%22eld"][0].filename == "we%22ird%0D%0AX-Injected: 1.txt"
    body, ctype = encode_body(files={"f": ("\u00fcber.txt", b"x")})
    assert parse_multipart(body.to_bytes(), ctype)[1]["f"][0].filename == "\u00fcber.txt"
    with pytest.raises(ValueError):
        encode_body(files={"f": ("a\x00b", b"x")})


def test_multipart_boundary_is_not_in_the_content():
    body = MultipartBody([], [("f", "a", b"--" + b"x" * 32, None, {})], boundary=None)
    assert (b"--" + body.boundary.encode()) not in b"--" + b"x" * 32
    raw = body.to_bytes()
    assert raw.count(b"--" + body.boundary.encode()) == 2


def test_multipart_boundary_that_collides_is_replaced(monkeypatch):
    # The first random boundary appears in a part: it is refused and the next one is used.
    candidates = iter(["a" * 32, "b" * 32, "c" * 32])
    drawn = []

    def token_hex(nbytes):
        drawn.append(next(candidates))
        return drawn[-1]
    monkeypatch.setattr("protocols.client_body.secrets.token_hex", token_hex)
    content = b"text\r\n--" + b"a" * 32 + b"--\r\nmore"
    body, ctype = encode_body(files={"f": ("f.txt", content)}, data={"k": "v"})
    assert drawn == ["a" * 32, "b" * 32]
    assert body.boundary == "b" * 32 and ctype == "multipart/form-data; boundary=" + "b" * 32
    fields, files = parse_multipart(body.to_bytes(), ctype)
    assert fields == {"k": ["v"]} and files["f"][0].data == content


def test_multipart_of_unknown_length_and_rewind():
    class Pipe:                              # readable, not seekable: size unknown
        def __init__(self):
            self.data = io.BytesIO(b"p" * 100)

        def read(self, n=-1):
            return self.data.read(n)
    body, _ = encode_body(files={"f": ("p", Pipe())})
    assert body.length is None and not body.rewind()
    seekable = io.BytesIO(b"s" * 10)
    body, _ = encode_body(files={"f": ("s", seekable)})
    first = body.to_bytes()
    assert body.rewind() and body.to_bytes() == first


# -- cookies -------------------------------------------------------------------------------------

def test_cookie_jar_rules_domain_path_and_origin():
    jar = cookies.CookieJar()
    req = cookies.jar_request("http://127.0.0.1:8000/app/login")
    own = cookies.extract([jar], req, ["sid=1; Path=/app", "all=2; Path=/", "bad=3; Domain=evil.com"])
    assert cookies.as_dict(own) == {"sid": "1", "all": "2"} == cookies.as_dict(jar)
    header = lambda url: cookies.cookie_header(jar, cookies.jar_request(url))     # noqa: E731
    assert header("http://127.0.0.1:8000/app/x") in ("sid=1; all=2", "all=2; sid=1")
    assert header("http://127.0.0.1:8000/other") == "all=2"
    assert header("http://127.0.0.1:9999/other") == "all=2"            # ports share cookies
    assert header("http://localhost:8000/app/x") is None               # another host: none
    jar2 = cookies.merged_jar(None, {"given": "x"}, req)
    assert cookies.cookie_header(jar2, cookies.jar_request("http://127.0.0.1:8000/z")) == "given=x"
    assert cookies.cookie_header(jar2, cookies.jar_request("http://127.0.0.1:8001/z")) is None
    assert cookies.is_empty(cookies.CookieJar()) and not cookies.is_empty(jar)


def test_jar_request_is_a_real_urllib_request():
    assert isinstance(cookies.jar_request("http://h/"), urllib.request.Request)
    assert isinstance(parse_url("http://h/"), URL)
