"""The HTTP client on a running reactor: requests started at once, answered through futures.

Why it has this shape
---------------------
HTTPClient is the pool (client_conn.py) plus what a call means above the wire.  `_prepare`
checks everything the caller gave (URL, method, headers, body) and frames the body, so that
nothing is sent if any of it is wrong; `_build_headers` makes each hop's fields, adding the
Cookie header from an `http.cookiejar` jar (cookies.py) only when the jar holds any;
`_response` stores the Set-Cookie fields it finds and either finishes the call or starts the
next hop of a redirect, which `_redirect` strips of what must not follow it to another origin
(Authorization, a Cookie header the caller wrote, cookies given for this call) or over a
https-to-http downgrade (refused unless allowed).

A request without headers of its own, cookies or a body takes a short path through all of this:
its URL is parsed once and cached, its fields are the client's three, and no jar is consulted.

Whatever a call's outcome, it reaches the future: a request refused in `request()` itself fails
its future there, but its callbacks wait for the next turn (never re-entrantly inside
`request()`); a Location that cannot be followed fails the call as an InvalidResponse.  The
caller's Host replaces ours (one Host field, RFC 9112 3.2) but does not follow a redirect to
another origin; a Location is read as UTF-8 when it is, as servers send non-ASCII paths.
"""
from __future__ import annotations

import http.cookiejar
import urllib.parse
from typing import Any, Callable, Mapping

from reactor.core import Reactor

from . import cookies as _cookies
from .client_body import encode_body
from .client_conn import MAX_PER_HOST, MAX_RESPONSE_BODY, POOL_IDLE_TIMEOUT, ConnectionPool
from .client_handler import _Exchange
from .client_request import (HTTPClientError, InsecureRedirect, InvalidRequest, InvalidResponse,
                             RequestCancelled, TooManyRedirects, _encode_header,
                             _header_items, _TOKEN, basic_auth, parse_url)
from .client_response import REDIRECT_CODES, Response, ResponseFuture

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
MAX_REDIRECTS = 10
USER_AGENT = "reactor-client/0.1"

_DEFAULT = object()


def _timeouts(timeout: Any) -> tuple[float | None, float | None]:
    if isinstance(timeout, tuple):
        if len(timeout) != 2:
            raise ValueError("timeout is a number or (connect, read)")
        return timeout[0], timeout[1]
    return timeout, timeout


class HTTPClient(ConnectionPool):
    """Requests on a reactor, all at once if you like; call its methods on the reactor thread
    (submit() from any other).  Keeps cookies, and connections alive per origin."""

    def __init__(self, reactor: Reactor, *, headers: Mapping[str, str] | None = None,
                 auth: tuple[str, str] | None = None,
                 cookies: _cookies.CookieJar | Mapping[str, str] | None = None,
                 timeout: float | tuple[float | None, float | None] | None = (CONNECT_TIMEOUT, READ_TIMEOUT),
                 max_redirects: int = MAX_REDIRECTS, max_per_host: int = MAX_PER_HOST,
                 max_body: int = MAX_RESPONSE_BODY, verify: bool | str = True,
                 ssl_context: Any = None, allow_https_downgrade: bool = False,
                 pool_idle_timeout: float = POOL_IDLE_TIMEOUT, user_agent: str = USER_AGENT) -> None:
        super().__init__(reactor, max_per_host=max_per_host, max_body=max_body, verify=verify,
                         ssl_context=ssl_context, pool_idle_timeout=pool_idle_timeout)
        self.headers: dict[str, Any] = dict(headers or {})
        self.auth = auth
        if isinstance(cookies, http.cookiejar.CookieJar):
            self.cookies = cookies
        else:
            self.cookies = _cookies.CookieJar()
            for name, value in (cookies or {}).items():   # no origin yet: any host, path /
                self.cookies.set_cookie(_any_host_cookie(str(name), str(value)))
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.allow_https_downgrade = allow_https_downgrade
        # A bad user_agent fails each request, before anything connects, as a bad header does.
        self._config_error: str | None = None
        try:
            self._base_headers = [_encode_header("user-agent", user_agent), (b"accept", b"*/*")]
        except InvalidRequest as exc:
            self._base_headers = [(b"accept", b"*/*")]
            self._config_error = f"user_agent: {exc}"

    # -- the public calls --------------------------------------------------------------------------

    def request(self, method: str | bytes, url: str, *, params: Any = None, headers: Any = None,
                data: Any = None, json: Any = None, files: Any = None,
                auth: tuple[str, str] | None = None,
                cookies: _cookies.CookieJar | Mapping[str, str] | None = None,
                timeout: Any = _DEFAULT, allow_redirects: bool = True,
                max_redirects: int | None = None, allow_https_downgrade: bool | None = None,
                callback: Callable[[ResponseFuture], Any] | None = None) -> ResponseFuture:
        """Start a request; the ResponseFuture completes on the reactor thread.  Arguments as
        in requests: params join the query; data is a form dict, str, bytes, a file or an
        iterable; json a JSON value; files {name: file | (filename, file[, type[, headers]])};
        auth (user, password) for Basic; timeout seconds or (connect, read)."""
        future = ResponseFuture()
        if callback is not None:
            future.add_done_callback(callback)
        self._starting += 1         # what completes the future in here defers its callbacks
        try:
            try:
                ex = self._prepare(method, url, params, headers, data, json, files, auth, cookies,
                                   timeout, allow_redirects, max_redirects, allow_https_downgrade)
            except (HTTPClientError, ValueError, TypeError) as exc:
                if not isinstance(exc, HTTPClientError):
                    exc = InvalidRequest(str(exc), url if isinstance(url, str) else None)
                self._finish(future, None, exc)
                return future
            ex.future = future
            future._canceller = lambda: self._cancel(ex)
            self._dispatch(ex)
        finally:
            self._starting -= 1
        return future

    def submit(self, method: str | bytes, url: str, **kwargs: Any) -> ResponseFuture:
        """request() from any thread: queued onto the reactor thread; wait() on the result."""
        outer = ResponseFuture()

        def start() -> None:
            if outer.done():                    # cancelled before the reactor got to it
                return
            try:
                inner = self.request(method, url, **kwargs)
            except Exception as exc:            # e.g. an unknown keyword: the waiter hears it
                outer._finish(None, exc)
                return
            outer._canceller = lambda: self.reactor.call_soon_threadsafe(inner.cancel)
            inner.add_done_callback(lambda f: outer._finish(f._result, f._exception))
        self.reactor.call_soon_threadsafe(start)
        return outer

    def get(self, url: str, **kwargs: Any) -> ResponseFuture:
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> ResponseFuture:
        kwargs.setdefault("allow_redirects", False)
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> ResponseFuture:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> ResponseFuture:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> ResponseFuture:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> ResponseFuture:
        return self.request("DELETE", url, **kwargs)

    # -- preparing ---------------------------------------------------------------------------------

    def _prepare(self, method: Any, url: str, params: Any, headers: Any, data: Any, json: Any,
                 files: Any, auth: Any, cookies: Any, timeout: Any, allow_redirects: bool,
                 max_redirects: int | None, allow_downgrade: bool | None) -> _Exchange:
        if self._closed:
            raise RequestCancelled("client closed", url)
        if self._config_error is not None:
            raise InvalidRequest(self._config_error, url if isinstance(url, str) else None)
        if isinstance(method, str):
            method = method.encode("ascii", "replace")
        if not isinstance(method, bytes) or not _TOKEN.fullmatch(method.decode("latin-1")):
            raise InvalidRequest(f"invalid method {method!r}", url)
        method = method.upper()             # as requests and httpx: "head" is HEAD
        parsed = parse_url(url, params)
        if data is None and json is None and files is None:
            body = content_type = None
        else:
            body, content_type = encode_body(data, json, files)
        ex = _Exchange()
        ex.client, ex.method, ex.url, ex.body = self, method, parsed, body
        connect_timeout, read_timeout = _timeouts(self.timeout if timeout is _DEFAULT else timeout)
        ex.connect_timeout, ex.read_timeout = connect_timeout, read_timeout
        ex.allow_redirects = allow_redirects
        ex.max_redirects = self.max_redirects if max_redirects is None else max_redirects
        ex.allow_downgrade = self.allow_https_downgrade if allow_downgrade is None else allow_downgrade
        ex.history = []
        ex.origin_host = parsed.host
        # Header fields: the user's and the session's, merged case-insensitively (None deletes)
        extra: list[tuple[bytes, bytes]] = []
        drop: set[bytes] = set()
        explicit_cookie = False
        if self.headers or headers:
            merged: dict[bytes, tuple[bytes, bytes] | None] = {}
            for source in (self.headers, headers):
                for name, value in _header_items(source):
                    if value is None:
                        key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
                        merged[key] = None
                        continue
                    field = _encode_header(name, value, parsed.url)
                    merged[field[0]] = field
            for name, field in merged.items():
                if field is None:
                    drop.add(name)              # None removes one of our own fields too
                    continue
                if name in (b"content-length", b"transfer-encoding"):
                    continue
                if name == b"cookie":
                    explicit_cookie = True
                extra.append(field)
        if content_type is not None and not any(n == b"content-type" for n, _ in extra):
            extra.append((b"content-type", content_type.encode("latin-1")))
        ex.extra, ex.drop, ex.explicit_cookie = extra, drop, explicit_cookie
        auth = auth if auth is not None else self.auth
        if auth is None and parsed.user is not None:
            auth = (parsed.user, parsed.password or "")
        if auth is not None:
            if not (isinstance(auth, tuple) and len(auth) == 2):
                raise InvalidRequest("auth is a (user, password) tuple", parsed.url)
            value = basic_auth(*auth)
            extra[:] = [f for f in extra if f[0] != b"authorization"]
            ex.auth = value
        else:
            ex.auth = None
        # Cookies: the client's jar, or for per-call cookies a jar of both
        if cookies is not None:
            ex.jar = _cookies.merged_jar(self.cookies, cookies, _cookies.jar_request(parsed.url))
            ex.extract_into = (self.cookies, ex.jar)
        else:
            ex.jar = self.cookies
            ex.extract_into = (self.cookies,)
        self._build_headers(ex)
        return ex

    def _build_headers(self, ex: _Exchange) -> None:
        """The header fields of this hop: Host, ours, the caller's, auth, cookies, framing."""
        url = ex.url
        headers = [(b"host", url.host_header.encode("ascii")), *self._base_headers]
        extra = ex.extra
        if extra or ex.drop:
            names = {name for name, _ in extra} | (ex.drop - {b"host"})
            if b"host" in names:            # the caller's Host, in the place of ours: first
                headers = ([f for f in extra if f[0] == b"host"]
                           + [f for f in headers[1:] if f[0] not in names]
                           + [f for f in extra if f[0] != b"host"])
            else:
                headers = headers[:1] + [f for f in headers[1:] if f[0] not in names] + extra
        if ex.auth is not None:
            headers.append((b"authorization", ex.auth))
        jar = ex.jar
        if not ex.explicit_cookie and not _cookies.is_empty(jar):
            value = _cookies.cookie_header(jar, _cookies.jar_request(
                url.url, ex.origin_host, redirected=bool(ex.history)))
            if value:                       # checked like any field: a cookie with CR/LF in it
                headers.append(_encode_header(b"cookie", value, url.url))
        body = ex.body
        if body is None:
            if ex.method in (b"POST", b"PUT", b"PATCH"):
                headers.append((b"content-length", b"0"))
        elif type(body) is bytes:
            headers.append((b"content-length", b"%d" % len(body)))
        elif body.length is not None:
            headers.append((b"content-length", b"%d" % body.length))
        else:
            headers.append((b"transfer-encoding", b"chunked"))
        ex.headers = headers

    # -- outcomes ----------------------------------------------------------------------------------

    def _response(self, ex: _Exchange) -> None:
        """A hop's response is complete: store cookies, follow a redirect, or finish the call."""
        if ex.done:
            return
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        head, data = ex.head, ex.data
        content = b"" if data is None else data if type(data) is bytes else bytes(data)
        response = Response(head.status_code, head.reason, head.headers, content, ex.url.url,
                            head.http_version.decode("ascii"), (ex.method, ex.url.url, ex.headers))
        set_cookies = None
        for name, value in head.headers:
            if name == b"set-cookie":
                if set_cookies is None:
                    set_cookies = []
                set_cookies.append(value.decode("latin-1"))
        if set_cookies:
            response._cookies = _cookies.extract(
                ex.extract_into, _cookies.jar_request(ex.url.url, ex.origin_host, bool(ex.history)),
                set_cookies)
        if ex.allow_redirects and head.status_code in REDIRECT_CODES:
            location = _location(head.headers)
            if location is not None:
                try:
                    nxt = self._redirect(ex, response, location)
                except HTTPClientError as exc:
                    self._failed(ex, exc)
                    return
                ex.done = True
                self._dispatch(nxt)
                return
        ex.done = True
        response.history = ex.history
        self._finish(ex.future, response, None)

    def _redirect(self, ex: _Exchange, response: Response, location: str) -> _Exchange:
        """The next hop of a redirect, with what must not follow it removed."""
        if len(ex.history) >= ex.max_redirects:
            raise TooManyRedirects(f"more than {ex.max_redirects} redirects", response.url, response)
        try:
            target = urllib.parse.urljoin(ex.url.url, location)
            url = parse_url(target)
        except ValueError as exc:           # InvalidURL, or urljoin's "Invalid IPv6 URL"
            raise InvalidResponse(f"bad Location in the redirect from {ex.url.url}: {exc}",
                                  ex.url.url, response) from None
        if ex.url.scheme == "https" and url.scheme == "http" and not ex.allow_downgrade:
            raise InsecureRedirect(f"refusing the redirect from {ex.url.url} to {url.url} "
                                   "(https to http)", ex.url.url, response)
        status, method, body = response.status_code, ex.method, ex.body
        if (status == 303 and method != b"HEAD") or (status in (301, 302) and method == b"POST"):
            method, body = b"GET", None               # what browsers do, and RFC 9110 15.4 allows
        elif body is not None and type(body) is not bytes and not body.rewind():
            raise InvalidRequest(f"cannot follow the {status} redirect: the streamed body cannot "
                                 "be sent again", ex.url.url, response)
        nxt = _Exchange()
        for name in ("client", "future", "jar", "extract_into", "allow_redirects", "max_redirects", "drop",
                     "allow_downgrade", "connect_timeout", "read_timeout", "origin_host",
                     "explicit_cookie"):
            setattr(nxt, name, getattr(ex, name))
        nxt.history = ex.history + [response]
        nxt.method, nxt.url, nxt.body = method, url, body
        extra = ex.extra
        if body is None:
            extra = [f for f in extra if f[0] != b"content-type"]
        nxt.auth = ex.auth
        if url.key != ex.url.key:        # another origin: credentials and our Host stay behind
            nxt.auth = None
            extra = [f for f in extra if f[0] not in (b"authorization", b"cookie", b"host")]
            nxt.explicit_cookie = False
        nxt.extra = extra
        nxt.future._canceller = lambda: self._cancel(nxt)
        self._build_headers(nxt)
        return nxt


def _location(headers: list) -> str | None:
    """The Location field: UTF-8 if it decodes as such (servers send raw UTF-8 paths; requests
    reads them so too), else latin-1, the bytes as they came."""
    for name, value in headers:
        if name == b"location":
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return value.decode("latin-1")
    return None


def _any_host_cookie(name: str, value: str) -> http.cookiejar.Cookie:
    """A cookie given to the client itself: no origin yet, so any host, path /.  Its empty
    domain is "specified", which the strict policy needs to send it to every host."""
    return http.cookiejar.Cookie(0, name, value, None, False, "", True, False, "/", True, False,
                                 None, True, None, None, {})
