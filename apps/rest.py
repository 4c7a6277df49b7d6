"""The REST service of recipe 11.5 on the reactor, plus httpbin-style endpoints to test clients.

    python -m apps.rest --port 8080 [--threads N] [--tls-cert FILE --tls-key FILE]
                            [--workers N [--reuse-port]]

Recipe 11.5:  /hello?name=...  (HTML)   /localtime  (the recipe's XML)
The recipe says such APIs push XML, JSON or CSV:  /localtime.json   /localtime.csv
For HTTP clients (shapes as httpbin's): /get  /post  /headers  /cookies  /cookies/set?k=v
    /basic-auth/<user>/<passwd>  /status/<code>  /redirect/<n>  /bytes/<n>  /stream/<n>

The recipe's two apps are kept as it writes them, with one change: the name in /hello is
HTML-escaped (the recipe's page reflects it raw, an XSS hole).
"""
from __future__ import annotations

import base64
import hmac
import html
import http.cookies
import json
import random
import sys
import time
from typing import Any, Iterable

from protocols.dispatch import PathDispatcher
from protocols.wsgi import wsgi_factory
from reactor import Reactor, listen_tcp

from . import _cli, _tls, _workers

DEFAULT_PORT = 8080
MAX_BYTES = 100 * 1024
MAX_STREAM = 100
MAX_REDIRECTS = 100

# -- recipe 11.5 --------------------------------------------------------------------------------

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
    start_response('200 OK', [('Content-type', 'text/html')])
    params = environ['params']
    resp = _hello_resp.format(name=html.escape(str(params.get('name'))))
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
    start_response('200 OK', [('Content-type', 'application/xml')])
    resp = _localtime_resp.format(t=time.localtime())
    yield resp.encode('utf-8')


# -- the same time as JSON and CSV --------------------------------------------------------------

_TIME_FIELDS = ("year", "month", "day", "hour", "minute", "second")


def _time_values() -> tuple[int, ...]:
    t = time.localtime()
    return t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec


def localtime_json(environ, start_response):
    return _json(start_response, dict(zip(_TIME_FIELDS, _time_values())))


def localtime_csv(environ, start_response):
    body = ",".join(_TIME_FIELDS) + "\r\n" + ",".join(map(str, _time_values())) + "\r\n"
    start_response("200 OK", [("Content-Type", "text/csv; charset=utf-8")])
    return [body.encode()]


# -- httpbin-style endpoints --------------------------------------------------------------------

def _json(start_response, obj: Any, status: str = "200 OK", headers: Iterable = ()) -> list[bytes]:
    body = json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"
    start_response(status, [("Content-Type", "application/json"), *headers])
    return [body]


def _headers(environ: dict) -> dict[str, str]:
    out = {key[5:].replace("_", "-").title(): value
           for key, value in environ.items() if key.startswith("HTTP_")}
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            out[key.replace("_", "-").title()] = environ[key]
    return out


def _args(environ: dict) -> dict[str, Any]:
    """Query arguments: a single value as a string, repeated ones as a list (httpbin's shape)."""
    from protocols.forms import parse_query
    return {k: v[0] if len(v) == 1 else v for k, v in parse_query(environ.get("QUERY_STRING", "")).items()}


def _url(environ: dict) -> str:
    host = environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
    query = environ.get("QUERY_STRING")
    return f"{environ['wsgi.url_scheme']}://{host}{environ['PATH_INFO']}" + (f"?{query}" if query else "")


def get(environ, start_response):
    return _json(start_response, {"args": _args(environ), "headers": _headers(environ),
                                  "origin": environ.get("REMOTE_ADDR", ""), "url": _url(environ)})


def post(environ, start_response):
    form_fields = {name: values[0] if len(values) == 1 else values
                   for name, values in environ.get("params.form", {}).items()}
    files = {name: [_file_repr(f) for f in fs] for name, fs in environ.get("files", {}).items()}
    files = {name: v[0] if len(v) == 1 else v for name, v in files.items()}
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    parsed = None
    if environ.get("CONTENT_TYPE", "").split(";")[0].strip() == "application/json" and raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            return _json(start_response, {"error": "invalid JSON body"}, "400 Bad Request")
    return _json(start_response, {
        "args": _args(environ), "form": form_fields, "files": files, "json": parsed,
        "data": raw.decode("utf-8", "replace"), "headers": _headers(environ),
        "origin": environ.get("REMOTE_ADDR", ""), "url": _url(environ)})


def _file_repr(f) -> str:
    try:
        return f.data.decode("utf-8")
    except UnicodeDecodeError:
        return "data:application/octet-stream;base64," + base64.b64encode(f.data).decode()


def headers(environ, start_response):
    return _json(start_response, {"headers": _headers(environ)})


def _cookies(environ: dict) -> dict[str, str]:
    jar = http.cookies.SimpleCookie()
    try:
        jar.load(environ.get("HTTP_COOKIE", ""))
    except http.cookies.CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def cookies(environ, start_response):
    return _json(start_response, {"cookies": _cookies(environ)})


def cookies_set(environ, start_response):
    jar = http.cookies.SimpleCookie()
    for name, value in _args(environ).items():
        value = value if isinstance(value, str) else value[-1]
        try:
            (name + value).encode("latin-1")           # a header carries latin-1 only
            jar[name] = value
            jar[name]["path"] = "/"
        except (http.cookies.CookieError, UnicodeEncodeError):
            return _json(start_response, {"error": f"bad cookie {name!r}"}, "400 Bad Request")
    set_cookie = [("Set-Cookie", morsel.OutputString()) for morsel in jar.values()]
    start_response("302 Found", [("Location", "/cookies"), ("Content-Type", "text/plain"), *set_cookie])
    return [b"Redirecting to /cookies\n"]


def basic_auth(environ, start_response):
    params = environ["route.params"]
    expected = base64.b64encode(f"{params['user']}:{params['passwd']}".encode()).decode()
    given = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = given.partition(" ")
    if scheme.lower() == "basic" and hmac.compare_digest(credentials.strip().encode(), expected.encode()):
        return _json(start_response, {"authenticated": True, "user": params["user"]})
    start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="Fake Realm"'),
                                        ("Content-Type", "text/plain")])
    return [b"Unauthorized\n"]


def status(environ, start_response):
    code = environ["route.params"]["code"]
    if not 200 <= code <= 599:
        return _json(start_response, {"error": "status must be 200-599"}, "400 Bad Request")
    from protocols.http import reason_phrase
    extra = []
    if code in (301, 302, 303, 307, 308):
        extra.append(("Location", "/redirect/1"))
    elif code == 401:
        extra.append(("WWW-Authenticate", 'Basic realm="Fake Realm"'))
    start_response(f"{code} {reason_phrase(code).decode() or 'Unknown'}", extra)
    return []


def redirect(environ, start_response):
    n = environ["route.params"]["n"]
    if not 1 <= n <= MAX_REDIRECTS:
        return _json(start_response, {"error": f"n must be 1-{MAX_REDIRECTS}"}, "400 Bad Request")
    location = "/get" if n == 1 else f"/redirect/{n - 1}"
    start_response("302 Found", [("Location", location), ("Content-Type", "text/plain")])
    return [f"Redirecting to {location}\n".encode()]


def random_bytes(environ, start_response):
    n = environ["route.params"]["n"]
    if n > MAX_BYTES:
        return _json(start_response, {"error": f"at most {MAX_BYTES} bytes"}, "400 Bad Request")
    seed = _args(environ).get("seed")
    rng = random.Random(seed) if isinstance(seed, str) else random.Random()
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(n))])
    return [rng.randbytes(n)]


def stream(environ, start_response):
    n = min(environ["route.params"]["n"], MAX_STREAM)
    start_response("200 OK", [("Content-Type", "application/json")])
    base = {"args": _args(environ), "headers": _headers(environ), "url": _url(environ)}
    return (json.dumps({**base, "id": i}).encode() + b"\n" for i in range(n))


def make_app() -> PathDispatcher:
    """The dispatcher with every endpoint registered."""
    d = PathDispatcher()
    d.register("GET", "/hello", hello_world)
    d.register("GET", "/localtime", localtime)
    d.register("GET", "/localtime.json", localtime_json)
    d.register("GET", "/localtime.csv", localtime_csv)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        d.register(method, "/anything", post if method != "GET" else get)
    d.register("GET", "/get", get)
    d.register("POST", "/post", post)
    d.register("PUT", "/put", post)
    d.register("PATCH", "/patch", post)
    d.register("DELETE", "/delete", post)
    d.register("GET", "/headers", headers)
    d.register("GET", "/cookies", cookies)
    d.register("GET", "/cookies/set", cookies_set)
    d.register("GET", "/basic-auth/<user>/<passwd>", basic_auth)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        d.register(method, "/status/<int:code>", status)
    d.register("GET", "/redirect/<int:n>", redirect)
    d.register("GET", "/bytes/<int:n>", random_bytes)
    d.register("GET", "/stream/<int:n>", stream)
    return d


ALPN = ["http/1.1"]


def build_parser():
    p = _cli.parser("REST service (Cookbook 11.5) with httpbin-style endpoints", DEFAULT_PORT)
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="run the WSGI app on N threads (for blocking apps; default: inline)")
    _cli.add_cidr_flags(p)
    _tls.add_tls_flags(p)
    _workers.add_worker_flags(p)
    return p


def mount(reactor: Reactor, args, ctx=None) -> _cli.Mounted:
    """Put the REST listener on reactor (main() and apps.serve)."""
    scheme = _tls.scheme("http", ctx)
    factory = wsgi_factory(make_app(), threads=args.threads, url_scheme=scheme)
    listener = listen_tcp(reactor, args.host, args.port, factory, ssl_context=ctx,
                          reuse_port=args.reuse_port, max_connections=args.max_connections,
                          allow=args.allow, deny=args.deny)
    return _cli.Mounted([listener], [(scheme, listener.address, "rest")])


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    ctx = _tls.context_or_exit(p, args, alpn=ALPN)
    _cli.setup_logging(args.log_level)
    if args.workers:
        scheme = _tls.scheme("http", ctx)
        return _workers.serve_workers(
            args, lambda: wsgi_factory(make_app(), threads=args.threads, url_scheme=scheme),
            scheme, "rest", ssl_context=ctx)
    reactor = Reactor()
    return _cli.run(reactor, mount(reactor, args, ctx), args.grace)


if __name__ == "__main__":
    sys.exit(main())
