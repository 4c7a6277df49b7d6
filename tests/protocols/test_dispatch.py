"""PathDispatcher (Cookbook 11.5) under wsgiref.validate: the recipe's apps unchanged, routes with
parameters, 404/405/HEAD, forms and their error answers.  No sockets: a WSGI call is a function
call with an environ from wsgiref.util.setup_testing_defaults."""
from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest

from protocols.dispatch import PathDispatcher, compile_route

# --- the recipe's apps, as Cookbook 11.5 prints them ------------------------------------------

_hello_resp = '''\
<html>
  <head>
     <title>Hello {name}</title>
   </head>
   <body>
     <h1>Hello {name}!</h1>
   </body>
</html>'''


def hello_world(environ, start_response):
    start_response('200 OK', [ ('Content-type','text/html')])
    params = environ['params']
    resp = _hello_resp.format(name=params.get('name'))
    yield resp.encode('utf-8')


_localtime_resp = '''\
<?xml version="1.0"?>
<time>
  <year>{t.tm_year}</year>
  <month>{t.tm_mon}</month>
  <day>{t.tm_mday}</day>
  <hour>{t.tm_hour}</hour>
  <minute>{t.tm_min}</minute>
  <second>{t.tm_sec}</second>
</time>'''


def localtime(environ, start_response):
    start_response('200 OK', [ ('Content-type', 'application/xml') ])
    resp = _localtime_resp.format(t=time.localtime())
    yield resp.encode('utf-8')


# --- helpers ----------------------------------------------------------------------------------

def call(app, method="GET", path="/", query="", body=b"", content_type=None, **extra):
    """Run app under wsgiref.validate; return (status, headers dict, body bytes, environ)."""
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD=method, PATH_INFO=path, QUERY_STRING=query,
                   CONTENT_LENGTH=str(len(body)), **extra)
    environ["wsgi.input"] = environ["test.input"] = io.BytesIO(body)   # validator wraps the first
    if content_type:
        environ["CONTENT_TYPE"] = content_type
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda data: None

    result = validator(app)(environ, start_response)
    try:
        out = b"".join(result)
    finally:
        result.close()
    return seen["status"], seen["headers"], out, environ


def echo(environ, start_response):
    """Report what the dispatcher put in environ."""
    files = {k: [(f.filename, f.content_type, f.data) for f in v] for k, v in environ["files"].items()}
    text = repr((environ["route.params"], environ["params"], environ["params.all"], files))
    body = text.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def seen_by_echo(*args, **kwargs):
    status, _, body, _ = call(*args, **kwargs)
    assert status == "200 OK", body
    return eval(body)   # our own repr of plain dicts, lists, tuples, str, bytes, int


def assert_plain(status, headers, body, expected_status):
    assert status.startswith(f"{expected_status} ")
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Content-Length"] == str(len(body))


@pytest.fixture
def recipe():
    dispatcher = PathDispatcher()
    dispatcher.register('GET', '/hello', hello_world)
    dispatcher.register('GET', '/localtime', localtime)
    return dispatcher


# --- the recipe -------------------------------------------------------------------------------

def test_recipe_hello(recipe):
    status, headers, body, _ = call(recipe, "GET", "/hello", "name=Guido")
    assert status == "200 OK" and headers["Content-type"] == "text/html"
    assert body == _hello_resp.format(name="Guido").encode()
    assert b"<h1>Hello Guido!</h1>" in body


def test_recipe_hello_without_name(recipe):
    assert b"Hello None!" in call(recipe, "GET", "/hello")[2]


def test_recipe_localtime(recipe):
    before = time.localtime()
    status, headers, body, _ = call(recipe, "GET", "/localtime")
    assert status == "200 OK" and headers["Content-type"] == "application/xml"
    root = ET.fromstring(body)
    assert root.tag == "time"
    assert [child.tag for child in root] == ["year", "month", "day", "hour", "minute", "second"]
    assert int(root.find("year").text) == before.tm_year
    assert all(child.text.isdigit() for child in root)


def test_recipe_hello_by_post_form(recipe):
    recipe.register("POST", "/hello", hello_world)
    _, _, body, _ = call(recipe, "POST", "/hello", body=b"name=Ada",
                         content_type="application/x-www-form-urlencoded")
    assert b"<h1>Hello Ada!</h1>" in body


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")
def test_method_is_case_sensitive(recipe):
    """RFC 9110 9.1: "get" is not GET (and the HTTP layer would not treat it as a GET either)."""
    assert call(recipe, "GET", "/hello", "name=x")[0] == "200 OK"
    assert call(recipe, "get", "/hello", "name=x")[0].startswith("405")


# --- 404, 405, HEAD ---------------------------------------------------------------------------

def test_unknown_path_is_404(recipe):
    status, headers, body, _ = call(recipe, "GET", "/nope")
    assert_plain(status, headers, body, 404)
    assert body == b"Not Found\n"


def test_other_method_is_405_with_allow(recipe):
    recipe.register("PUT", "/hello", hello_world)
    status, headers, body, _ = call(recipe, "POST", "/hello", body=b"x=1",
                                    content_type="application/x-www-form-urlencoded")
    assert_plain(status, headers, body, 405)
    assert headers["Allow"] == "GET, HEAD, PUT"


def test_head_runs_the_get_app_without_a_body(recipe):
    _, get_headers, get_body, _ = call(recipe, "GET", "/hello", "name=Guido")
    status, headers, body, _ = call(recipe, "HEAD", "/hello", "name=Guido")
    assert status == "200 OK" and body == b""
    assert headers["Content-type"] == "text/html"
    assert headers["Content-Length"] == str(len(get_body))


def test_explicit_head_app_wins():
    d = PathDispatcher()
    d.register("GET", "/x", echo)

    @d.route("/x", methods=("HEAD",))
    def head(environ, start_response):
        start_response("204 No Content", [("X-Head", "yes")])
        return []
    status, headers, _, _ = call(d, "HEAD", "/x")
    assert status == "204 No Content" and headers["X-Head"] == "yes"


def test_head_on_dispatcher_answers_has_no_body(recipe):
    status, headers, body, _ = call(recipe, "HEAD", "/nope")
    assert status.startswith("404") and body == b"" and int(headers["Content-Length"]) > 0


def test_head_not_allowed_without_get():
    d = PathDispatcher()
    d.post("/only-post")(echo)
    status, headers, _, _ = call(d, "HEAD", "/only-post")
    assert status.startswith("405") and headers["Allow"] == "POST"


# --- routes -----------------------------------------------------------------------------------

@pytest.fixture
def routes():
    d = PathDispatcher()
    d.get("/status/<int:code>")(echo)
    d.get("/basic-auth/<user>/<passwd>")(echo)
    d.get("/redirect/<int:n>")(echo)
    d.get("/files/<path:rest>")(echo)
    d.get("/status/teapot")(echo)
    d.get("/café/<name>")(echo)
    return d


@pytest.mark.parametrize("path, params", [
    ("/status/418", {"code": 418}),
    ("/status/teapot", {}),                        # static beats <int:code> (which fails anyway)
    ("/basic-auth/alice/s3cret", {"user": "alice", "passwd": "s3cret"}),
    ("/redirect/3", {"n": 3}),
    ("/files/a/b/c.txt", {"rest": "a/b/c.txt"}),
    ("/caf\xc3\xa9/\xc3\xa9t\xc3\xa9", {"name": "été"}),   # PEP 3333 latin-1 of UTF-8 bytes
])
def test_route_params(routes, path, params):
    assert seen_by_echo(routes, "GET", path)[0] == params


@pytest.mark.parametrize("path", ["/status/abc", "/status/", "/status/1/2", "/basic-auth/alice",
                                  "/redirect/-1", "/redirect/" + "9" * 5000, "/files/"])
def test_route_mismatch_is_404(routes, path):
    assert call(routes, "GET", path)[0].startswith("404")


def test_405_collects_methods_of_every_matching_route():
    d = PathDispatcher()
    d.route("/a/<x>", methods=("GET",))(echo)
    d.route("/a/<int:n>", methods=("POST", "DELETE"))(echo)
    assert seen_by_echo(d, "POST", "/a/5")[0] == {"n": 5}     # the second pattern has POST
    assert seen_by_echo(d, "GET", "/a/5")[0] == {"x": "5"}
    status, headers, _, _ = call(d, "PUT", "/a/5")
    assert status.startswith("405") and headers["Allow"] == "DELETE, GET, HEAD, POST"
    assert call(d, "PUT", "/a/x")[1]["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("bad", ["no-slash", "/a/<x>/<x>", "/a/<float:x>", "/a/<x", "/a/<1x>"])
def test_bad_route_patterns_are_refused(bad):
    with pytest.raises(ValueError):
        compile_route(bad)


def test_register_returns_the_app_and_decorators_too():
    d = PathDispatcher()
    assert d.register("GET", "/", echo) is echo
    assert d.route("/r", methods=("GET", "PUT"))(echo) is echo
    assert d.lookup("put", "/r") == (echo, {}, [])
    assert d.lookup("POST", "/r") == (None, {}, ["GET", "HEAD", "PUT"])
    assert d.lookup("GET", "/nope") == (None, {}, [])


# --- parameters and forms ---------------------------------------------------------------------

@pytest.fixture
def forms():
    d = PathDispatcher(max_field_size=100, max_file_size=1000)
    d.route("/echo", methods=("GET", "POST"))(echo)
    return d


def test_get_query_params(forms):
    _, params, everything, files = seen_by_echo(forms, "GET", "/echo", "a=1&a=2&b=&c=%C3%A9")
    assert params == {"a": "1", "b": "", "c": "é"}
    assert everything == {"a": ["1", "2"], "b": [""], "c": ["é"]} and files == {}


def test_post_urlencoded_merges_body_before_query(forms):
    _, params, everything, _ = seen_by_echo(
        forms, "POST", "/echo", "a=q&q=1", body=b"a=body&name=Guido+van+Rossum",
        content_type="application/x-www-form-urlencoded")
    assert params == {"a": "body", "name": "Guido van Rossum", "q": "1"}
    assert everything["a"] == ["body", "q"]


BOUNDARY = "xYzZY"
PAYLOAD = b"\x00\xff\r\n\r\n--xYzZ\r\n--xYzZ\r\nx--xYzZY--\r\n" + bytes(range(256))


def multipart_body(*parts: bytes) -> bytes:
    return b"".join(b"--xYzZY\r\n" + p + b"\r\n" for p in parts) + b"--xYzZY--\r\n"


def test_post_multipart_with_a_file(forms):
    body = multipart_body(
        b'Content-Disposition: form-data; name="title"\r\n\r\nhello',
        b'Content-Disposition: form-data; name="up"; filename="a.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + PAYLOAD,
        b"Content-Disposition: form-data; name=\"up\"; filename*=UTF-8''%E2%82%AC.txt\r\n\r\neuro")
    _, params, _, files = seen_by_echo(forms, "POST", "/echo", body=body,
                                       content_type=f'multipart/form-data; boundary="{BOUNDARY}"')
    assert params == {"title": "hello"}
    assert files == {"up": [("a.bin", "application/octet-stream", PAYLOAD),
                            ("€.txt", "text/plain", b"euro")]}


def test_non_form_body_is_left_for_the_app():
    d = PathDispatcher()

    @d.post("/json")
    def read_it(environ, start_response):
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]
    assert call(d, "POST", "/json", body=b'{"a": 1}', content_type="application/json")[2] == b'{"a": 1}'


@pytest.mark.parametrize("kwargs, expected", [
    (dict(query="a=1&" * 1000 + "a=1"), 413),                              # too many fields
    (dict(body=b"&".join([b"a=1"] * 1001),
          content_type="application/x-www-form-urlencoded"), 413),
    (dict(body=b"big=" + b"x" * 101,
          content_type="application/x-www-form-urlencoded"), 413),         # field too large
    (dict(body=multipart_body(b'Content-Disposition: form-data; name="f"; filename="x"\r\n\r\n'
                              + b"x" * 1001),
          content_type="multipart/form-data; boundary=xYzZY"), 413),      # file too large
    (dict(body=multipart_body(b"Content-Disposition: form-data; name=a\r\n\r\n1")[:-4],
          content_type="multipart/form-data; boundary=xYzZY"), 400),      # no closing boundary
    (dict(body=multipart_body(b"Content-Type: text/plain\r\n\r\n1"),
          content_type="multipart/form-data; boundary=xYzZY"), 400),      # no Content-Disposition
    (dict(body=multipart_body(b"Content-Disposition: form-data; name=a\r\n\r\n1"),
          content_type="multipart/form-data; boundary=" + "x" * 71), 400),  # bad boundary
    (dict(body=b"x", content_type="multipart/form-data"), 400),            # no boundary
])
def test_form_errors_answer_with_their_status(forms, kwargs, expected):
    status, headers, body, _ = call(forms, "POST", "/echo", **kwargs)
    assert_plain(status, headers, body, expected)
    assert len(body) < 200


def test_body_over_max_body_is_413_without_reading():
    d = PathDispatcher(max_body=10)
    d.post("/p")(echo)
    status, _, _, environ = call(d, "POST", "/p", body=b"a=" + b"x" * 20,
                                 content_type="application/x-www-form-urlencoded")
    assert status.startswith("413") and environ["test.input"].tell() == 0


def test_adversarial_multipart_through_the_dispatcher_is_fast(forms):
    junk = b"\r\n--" * (2 * 1024 * 1024 // 4)
    body = b"--xYzZY\r\nContent-Disposition: form-data; name=a\r\n\r\n" + junk
    d = PathDispatcher(max_body=4 * 1024 * 1024)
    d.post("/p")(echo)
    t0 = time.perf_counter()
    status = call(d, "POST", "/p", body=body, content_type="multipart/form-data; boundary=xYzZY")[0]
    assert status.startswith("400") and time.perf_counter() - t0 < 2.0
