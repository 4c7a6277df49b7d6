"""The blocking layer of the HTTP client, which reads like recipe 11.1: `get(url, params=...)`,
`post(url, data=..., files=...)`, `head(url)`, and a Session that keeps cookies and kept-alive
connections between calls.

Why it has this shape
---------------------
A Session owns a private Reactor and an HTTPClient on it, and turns that reactor only while a
call waits for its future (nothing runs between calls, no thread is started): the blocking
layer is the asynchronous client, driven.  Before each call one non-blocking turn lets the
reactor notice kept-alive connections that the servers closed meanwhile, and those idle past
pool_idle_timeout are closed (a timer would fire only during a call anyway, so there is none).  The module
functions make a Session per call, as requests' do.
"""
from __future__ import annotations

from typing import Any

from reactor.core import Reactor

from . import cookies as _cookies
from .client_async import HTTPClient
from .client_request import RequestCancelled
from .client_response import _PENDING, Response

class Session:
    """The recipe's way: blocking calls that keep cookies and kept-alive connections between
    them.  It runs a private reactor only while a call is in progress; use it from one thread
    at a time."""

    def __init__(self, **options: Any) -> None:
        self._reactor = Reactor()
        self.client = HTTPClient(self._reactor, **options)
        self.client.idle_timer_enabled = False      # close_expired() before each call instead

    @property
    def cookies(self) -> _cookies.CookieJar:
        return self.client.cookies

    @property
    def headers(self) -> dict[str, Any]:
        return self.client.headers

    @property
    def auth(self) -> tuple[str, str] | None:
        return self.client.auth

    @auth.setter
    def auth(self, value: tuple[str, str] | None) -> None:
        self.client.auth = value

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        """Send a request and return its Response (or raise an HTTPClientError)."""
        if self._reactor.closed:
            raise RequestCancelled("session closed", url)
        reactor = self._reactor
        reactor.run_once(0)             # notice kept-alive connections the servers closed meanwhile
        self.client.close_expired()
        future = self.client.request(method, url, **kwargs)
        try:
            while future._state == _PENDING:
                reactor.run_once(None)
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> Response:
        kwargs.setdefault("allow_redirects", False)
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, data: Any = None, json: Any = None, **kwargs: Any) -> Response:
        return self.request("POST", url, data=data, json=json, **kwargs)

    def put(self, url: str, data: Any = None, **kwargs: Any) -> Response:
        return self.request("PUT", url, data=data, **kwargs)

    def patch(self, url: str, data: Any = None, **kwargs: Any) -> Response:
        return self.request("PATCH", url, data=data, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Response:
        return self.request("DELETE", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> Response:
        return self.request("OPTIONS", url, **kwargs)

    def close(self) -> None:
        """Close the connections and the private reactor."""
        if not self._reactor.closed:
            self.client.close()
            self._reactor.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


_SESSION_OPTIONS = ("verify", "ssl_context", "max_per_host", "max_body", "user_agent")


def request(method: str, url: str, **kwargs: Any) -> Response:
    """One blocking request on a fresh Session (as requests.request)."""
    options = {name: kwargs.pop(name) for name in _SESSION_OPTIONS if name in kwargs}
    with Session(**options) as session:
        return session.request(method, url, **kwargs)


def get(url: str, params: Any = None, **kwargs: Any) -> Response:
    """GET url (params join the query string)."""
    return request("GET", url, params=params, **kwargs)


def head(url: str, **kwargs: Any) -> Response:
    """HEAD url: status and headers, no body (redirects not followed unless asked)."""
    kwargs.setdefault("allow_redirects", False)
    return request("HEAD", url, **kwargs)


def post(url: str, data: Any = None, json: Any = None, **kwargs: Any) -> Response:
    """POST a form (data=dict), bytes, JSON (json=) or files (files=)."""
    return request("POST", url, data=data, json=json, **kwargs)


def put(url: str, data: Any = None, **kwargs: Any) -> Response:
    return request("PUT", url, data=data, **kwargs)


def patch(url: str, data: Any = None, **kwargs: Any) -> Response:
    return request("PATCH", url, data=data, **kwargs)


def delete(url: str, **kwargs: Any) -> Response:
    return request("DELETE", url, **kwargs)
