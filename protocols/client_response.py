"""What the HTTP client hands back: a Response (status, headers, the body, how it got there)
and the ResponseFuture through which it arrives.

Why it has this shape
---------------------
A Response is built on the reactor thread for every exchange, so it is cheap to make and
spends only when read: header fields stay the parser's (bytes, lower-cased names) until
`headers` is first asked for, then a case-insensitive view decodes them once; `text` decodes by
the Content-Type charset only when asked.

ResponseFuture is the smallest thing that lets a caller wait without a thread of its own:
`add_done_callback` on the reactor thread (where it is completed), `wait()` from another one
(a threading.Event, made only for a waiter), `cancel()` that aborts the connection under it.
"""
from __future__ import annotations

import json as _json
import logging
import re
import threading
from typing import Any, Callable, Iterable, Iterator, Mapping

from . import cookies as _cookies
from .client_request import HTTPStatusError, RequestCancelled

log = logging.getLogger(__name__)

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([^\s;\"]+)", re.I)

# -- responses --------------------------------------------------------------------------------


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only header view; repeated fields joined by ', ' (get_all keeps
    them apart, as Set-Cookie needs)."""

    __slots__ = ("_raw", "_map")

    def __init__(self, raw: Iterable[tuple[Any, Any]] = ()) -> None:
        self._raw = [(k.decode("latin-1") if isinstance(k, bytes) else str(k),
                      v.decode("latin-1") if isinstance(v, bytes) else str(v))
                     for k, v in (raw.items() if hasattr(raw, "items") else raw)]
        self._map: dict[str, list[str]] | None = None

    def _index(self) -> dict[str, list[str]]:
        if self._map is None:
            index: dict[str, list[str]] = {}
            for name, value in self._raw:
                index.setdefault(name.lower(), []).append(value)
            self._map = index
        return self._map

    def __getitem__(self, name: str) -> str:
        return ", ".join(self._index()[name.lower()])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index()

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())

    def get_all(self, name: str) -> list[str]:
        """Every value of a field, in order ([] if absent)."""
        return list(self._index().get(name.lower(), ()))

    def raw_items(self) -> list[tuple[str, str]]:
        """(name, value) as received, repeats kept."""
        return list(self._raw)

    def __repr__(self) -> str:
        return f"Headers({self._raw!r})"


class SentRequest:
    """What was sent for a response: method, URL, and the header fields (for inspection)."""

    __slots__ = ("method", "url", "headers")

    def __init__(self, method: str, url: str, headers: Headers) -> None:
        self.method, self.url, self.headers = method, url, headers

    def __repr__(self) -> str:
        return f"<SentRequest {self.method} {self.url}>"


class Response:
    """A complete response: status, headers, the body in memory, and how we got here."""

    __slots__ = ("status_code", "_reason", "http_version", "url", "history", "content",
                 "_raw_headers", "_headers", "_cookies", "encoding", "_sent")

    def __init__(self, status_code: int, reason: bytes | str, raw_headers: list, content: bytes,
                 url: str, http_version: str = "1.1", sent: tuple | None = None) -> None:
        self.status_code = status_code
        self._reason = reason
        self._raw_headers = raw_headers
        self._headers: Headers | None = None
        self.content = content
        self.url = url
        self.http_version = http_version
        self.history: list[Response] = []
        self._cookies: _cookies.CookieJar | None = None
        self.encoding: str | None = None       # set it to decode text differently
        self._sent = sent

    @property
    def reason(self) -> str:
        r = self._reason
        return r.decode("latin-1") if isinstance(r, bytes) else r

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(self._raw_headers)
        return self._headers

    @property
    def cookies(self) -> _cookies.CookieJar:
        """The cookies this response set (a CookieJar: pass it as cookies= to the next call)."""
        if self._cookies is None:
            self._cookies = _cookies.CookieJar()
        return self._cookies

    @property
    def request(self) -> SentRequest | None:
        if self._sent is None:
            return None
        method, url, headers = self._sent
        return SentRequest(method.decode("ascii"), url, Headers(headers))

    @property
    def charset(self) -> str | None:
        """The charset parameter of Content-Type, if any."""
        ctype = self.headers.get("content-type", "")
        m = _CHARSET.search(ctype)
        return m.group(1) if m else None

    @property
    def text(self) -> str:
        """The body decoded by `encoding`, else the Content-Type charset, else UTF-8; bytes
        that do not decode become U+FFFD rather than an exception."""
        encoding = self.encoding or self.charset or "utf-8"
        try:
            return self.content.decode(encoding, "replace")
        except LookupError:                 # an unknown charset
            return self.content.decode("utf-8", "replace")

    def json(self, **kwargs: Any) -> Any:
        """The body parsed as JSON (UTF-8/16/32 detected as json.loads does)."""
        if self.encoding or self.charset:
            return _json.loads(self.text, **kwargs)
        return _json.loads(self.content, **kwargs)

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def is_redirect(self) -> bool:
        return self.status_code in REDIRECT_CODES and "location" in self.headers

    def raise_for_status(self) -> Response:
        """Raise HTTPStatusError for a 4xx or 5xx; return self otherwise."""
        if self.status_code >= 400:
            kind = "client" if self.status_code < 500 else "server"
            raise HTTPStatusError(f"{self.status_code} {self.reason} ({kind} error) for {self.url}",
                                  self.url, self)
        return self

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


# -- the future -------------------------------------------------------------------------------

_PENDING, _FINISHED, _CANCELLED = 0, 1, 2


class ResponseFuture:
    """A response to come.  Completed on the reactor thread, where callbacks run; wait() may be
    called from another thread (never from the reactor's own, which would stop it)."""

    __slots__ = ("_state", "_result", "_exception", "_callbacks", "_event", "_canceller", "__weakref__")

    def __init__(self) -> None:
        self._state = _PENDING
        self._result: Response | None = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[ResponseFuture], Any]] | None = None
        self._event: threading.Event | None = None
        self._canceller: Callable[[], None] | None = None

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> Response:
        """The response, or the error raised; RuntimeError if not done yet."""
        if self._state == _PENDING:
            raise RuntimeError("the response has not arrived yet (add_done_callback or wait)")
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self) -> BaseException | None:
        if self._state == _PENDING:
            raise RuntimeError("the response has not arrived yet")
        return self._exception

    def add_done_callback(self, fn: Callable[[ResponseFuture], Any]) -> None:
        """Call fn(future) when done (at once if it is)."""
        if self._state != _PENDING:
            self._run(fn)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    def wait(self, timeout: float | None = None) -> bool:
        """From another thread: block until done or timeout; True if done."""
        if self._state != _PENDING:
            return True
        if self._event is None:
            self._event = threading.Event()
        if self._state != _PENDING:       # finished while the event was being made
            return True
        return self._event.wait(timeout)

    def cancel(self) -> bool:
        """Give up the request (its connection is aborted); False if already done.  Call it on
        the reactor thread, except for a future from HTTPClient.submit(), which any may."""
        if self._state != _PENDING:
            return False
        canceller, self._canceller = self._canceller, None
        self._finish(None, RequestCancelled("request cancelled"), _CANCELLED)
        if canceller is not None:
            canceller()
        return True

    def _finish(self, result: Response | None, exc: BaseException | None, state: int = _FINISHED,
                schedule: Callable[..., Any] | None = None) -> None:
        """Complete the future; the callbacks run now, or through schedule (call_soon)."""
        if self._state != _PENDING:
            return
        self._result, self._exception, self._state = result, exc, state
        self._canceller = None
        event = self._event
        if event is not None:
            event.set()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            if schedule is not None:
                for fn in callbacks:
                    schedule(self._run, fn)
            else:
                for fn in callbacks:
                    self._run(fn)

    def _run(self, fn: Callable[[ResponseFuture], Any]) -> None:
        try:
            fn(self)
        except Exception:
            log.exception("error in a response callback %r", fn)

    def __repr__(self) -> str:
        state = ("pending", "finished", "cancelled")[self._state]
        return f"<ResponseFuture {state}>"
