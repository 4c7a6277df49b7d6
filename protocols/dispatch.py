"""The REST PathDispatcher of Cookbook 11.5, grown up: routes with parameters, 404 versus 405,
HEAD, and form parsing without cgi.

It stays what the recipe made it: a plain WSGI app (PEP 3333) that owns a table from
(method, path) to WSGI apps, so it runs under any WSGI server and the recipe's apps run
unchanged.  API:

    d = PathDispatcher()
    d.register("GET", "/hello", hello_world)          # the recipe's call; returns the app
    @d.route("/items/<int:n>", methods=("GET", "PUT"))
    @d.get("/status/<code>")   @d.post("/upload")    # shortcuts for route(..., methods=(...))

Route syntax: literal text plus <name> (one segment, [^/]+, a str), <int:name> ([0-9]+, an int)
and <path:name> (the rest, slashes included, a str).  Static paths are a dict lookup and win over
patterns; patterns are tried in registration order, and the first route that matches the path
and has the method wins.  Only when no matching route has the method is the answer 405, with
Allow listing the methods of all matching routes; no match at all is 404.  HEAD goes to the GET
app where no HEAD app is registered: its body is drained and dropped, its headers kept, and
Content-Length filled in from the drained size when the app gave none.

Matching happens before any body is read, so 404/405 cost nothing.  Then the app sees:
    environ["route.params"]  {name: value} from the path pattern
    environ["params"]        {name: first value}, as the recipe's params.getvalue() for one value
    environ["params.all"]    {name: [values]}: form-body values first, then query values
                             (the order cgi.FieldStorage used for urlencoded POSTs)
    environ["params.form"]   {name: [values]} from the form body alone
    environ["files"]         {name: [forms.UploadedFile]} from a multipart body
A form body is consumed from wsgi.input; any other body type is left for the app to read.
PATH_INFO and QUERY_STRING arrive as latin-1 "bytes as str" (PEP 3333); they are re-read as
UTF-8 where they decode, so a route "/café" matches.  The dispatcher's own answers (400, 404,
405, 413) are short text/plain bodies with Content-Length; rejected forms are logged at debug
only, since a log line per bad request is itself a flood (Tornado CVE-2025-47287).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from .base import RemoteProtocolError
from .forms import (MAX_BODY, MAX_FIELD_SIZE, MAX_FIELDS, MAX_FILE_SIZE, MAX_PARTS,
                    parse_body, parse_query)

log = logging.getLogger(__name__)

StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[dict, StartResponse], Iterable[bytes]]

_PARAM = re.compile(r"<(?:(str|int|path):)?([A-Za-z_][A-Za-z0-9_]*)>")
_KINDS = {"str": (r"[^/]+", str), "int": (r"[0-9]+", int), "path": (r".+", str)}


def compile_route(path: str) -> tuple[re.Pattern[str] | None, dict[str, Callable[[str], Any]]]:
    """Compile '/a/<int:n>' to (regex, {name: converter}); (None, {}) for a static path."""
    if not path.startswith("/"):
        raise ValueError(f"route {path!r} does not start with '/'")
    pieces, converters, last = [], {}, 0
    for m in _PARAM.finditer(path):
        kind, name = m.group(1) or "str", m.group(2)
        if name in converters:
            raise ValueError(f"route {path!r} repeats parameter {name!r}")
        regex, converters[name] = _KINDS[kind][0], _KINDS[kind][1]
        pieces += [path[last:m.start()], f"(?P<{name}>{regex})"]
        last = m.end()
    pieces.append(path[last:])
    literals = pieces[::2]
    if any("<" in text or ">" in text for text in literals):
        raise ValueError(f"route {path!r} has a malformed <parameter>")
    if not converters:
        return None, {}
    pieces[::2] = [re.escape(text) for text in literals]
    return re.compile("".join(pieces)), converters


class _Route:
    __slots__ = ("path", "regex", "converters", "apps")

    def __init__(self, path: str) -> None:
        self.path = path
        self.regex, self.converters = compile_route(path)
        self.apps: dict[str, WSGIApp] = {}

    def match(self, path: str) -> dict[str, Any] | None:
        if self.regex is None:
            return {} if path == self.path else None
        if not (m := self.regex.fullmatch(path)):
            return None
        try:
            return {k: self.converters[k](v) for k, v in m.groupdict().items()}
        except ValueError:              # an int too long for int(): no match
            return None


class PathDispatcher:
    """A WSGI app calling the app registered for (method, path); answers 404/405/400/413 itself."""

    def __init__(self, *, max_body: int = MAX_BODY, max_fields: int = MAX_FIELDS,
                 max_field_size: int = MAX_FIELD_SIZE, max_file_size: int = MAX_FILE_SIZE,
                 max_parts: int = MAX_PARTS) -> None:
        self._static: dict[str, _Route] = {}
        self._patterns: list[_Route] = []
        self._max_fields = max_fields
        self._limits = dict(max_body=max_body, max_fields=max_fields, max_parts=max_parts,
                            max_field_size=max_field_size, max_file_size=max_file_size)

    def register(self, method: str, path: str, app: WSGIApp) -> WSGIApp:
        """Serve (method, path) with app; path may hold <name>, <int:name>, <path:name>."""
        route = self._static.get(path) or next(
            (r for r in self._patterns if r.path == path), None)
        if route is None:
            route = _Route(path)
            if route.regex is None:
                self._static[path] = route
            else:
                self._patterns.append(route)
        route.apps[method.upper()] = app
        return app

    def route(self, path: str, methods: Iterable[str] = ("GET",)) -> Callable[[WSGIApp], WSGIApp]:
        """Decorator: register the function for each of methods at path."""
        methods = (methods,) if isinstance(methods, str) else tuple(methods)

        def decorate(app: WSGIApp) -> WSGIApp:
            for method in methods:
                self.register(method, path, app)
            return app
        return decorate

    def get(self, path: str) -> Callable[[WSGIApp], WSGIApp]:
        """Decorator: route(path, methods=("GET",)); HEAD follows."""
        return self.route(path, ("GET",))

    def post(self, path: str) -> Callable[[WSGIApp], WSGIApp]:
        """Decorator: route(path, methods=("POST",))."""
        return self.route(path, ("POST",))

    def lookup(self, method: str, path: str) -> tuple[WSGIApp | None, dict[str, Any], list[str]]:
        """(app, route params, []) for a match; (None, {}, allowed methods) for 405 or 404."""
        app, params, allowed, _ = self._find(method.upper(), path)
        return app, params, allowed

    def _find(self, method: str, path: str) -> tuple[WSGIApp | None, dict, list[str], bool]:
        allowed: set[str] = set()
        static = self._static.get(path)
        if static is not None and (app := static.apps.get(method)) is not None:
            return app, {}, [], False           # the common case, without building a list
        for route in ([static] if static else []) + self._patterns:
            if (params := route.match(path)) is None:
                continue
            if (app := route.apps.get(method)) is not None:
                return app, params, [], False
            if method == "HEAD" and (app := route.apps.get("GET")) is not None:
                return app, params, [], True
            allowed.update(route.apps)
        if "GET" in allowed:
            allowed.add("HEAD")
        return None, {}, sorted(allowed), False

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        """Dispatch on (REQUEST_METHOD upper-cased, PATH_INFO)."""
        method = environ["REQUEST_METHOD"]          # case-sensitive (RFC 9110 9.1)
        head = method == "HEAD"
        path = _text(environ.get("PATH_INFO") or "/")
        app, route_params, allowed, head_via_get = self._find(method, path)
        if app is None:
            if allowed:
                return _plain(start_response, 405, "Method Not Allowed", head,
                              [("Allow", ", ".join(allowed))])
            return _plain(start_response, 404, "Not Found", head)
        try:
            query = parse_query(_text(environ.get("QUERY_STRING", "")),
                                max_fields=self._max_fields)
            fields, files = parse_body(environ, **self._limits)
        except RemoteProtocolError as exc:
            log.debug("form rejected (%s): %s", exc.error_status_hint, exc)
            status = exc.error_status_hint
            return _plain(start_response, status, f"{_reason(status)}: {exc}", head)
        if fields:
            merged: dict[str, list[str]] = {}
            for source in (fields, query):
                for name, values in source.items():
                    merged.setdefault(name, []).extend(values)
        else:
            merged = query
        environ["route.params"] = route_params
        environ["params.all"] = merged
        environ["params"] = {name: values[0] for name, values in merged.items()}
        environ["params.form"] = fields
        environ["files"] = files
        if head_via_get:
            return _head_via_get(app, environ, start_response)
        return app(environ, start_response)


def _text(value: str) -> str:
    """Re-read a PEP 3333 latin-1 'bytes as str' as UTF-8 where it decodes."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _plain(start_response: StartResponse, status: int, text: str, head: bool,
           extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    """Answer with a short text/plain body (headers only for HEAD)."""
    body = f"{text}\n".encode()
    start_response(f"{status} {_reason(status)}",
                   [("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))), *(extra or [])])
    return [] if head else [body]


def _head_via_get(app: WSGIApp, environ: dict, start_response: StartResponse) -> list[bytes]:
    """Run the GET app for HEAD: keep its status and headers, drain and drop its body."""
    response: list = []
    size = 0

    def capture(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        response[:] = [status, list(headers)]   # nothing is sent yet, so a retry just replaces

        def write(data: bytes) -> None:
            nonlocal size
            size += len(data)
        return write

    result = app(environ, capture)
    try:
        for chunk in result:
            size += len(chunk)
    finally:
        if hasattr(result, "close"):
            result.close()
    if not response:
        raise RuntimeError("WSGI app returned without calling start_response")
    status, headers = response
    if not any(name.lower() == "content-length" for name, _ in headers):
        headers.append(("Content-Length", str(size)))
    start_response(status, headers)
    return []
