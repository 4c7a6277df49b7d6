"""A WSGI host (PEP 3333) on the HTTP/1.1 server handler.

Why it has this shape
---------------------
A WSGI application is a blocking callable, and the reactor has one thread.  Two ways to host it:

  * inline (the default): the app runs on the reactor thread.  Right for apps that never block
    (this project's own), and the fastest: no hand-off, no locks.  Its body iterable is pulled
    a chunk at a time while the connection's write queue is under its high-water mark; past it,
    pulling waits for `resume_writing`, so a streaming app cannot fill memory for a slow reader.
  * `threads=N`: the app runs in a thread pool, the reactor keeps serving everyone else, and
    the finished response comes back through `call_soon_threadsafe`.  Right for apps that block
    (a database call, a typical Flask app).  The worker collects the whole body before handing
    it over (bounded by MAX_THREADED_BODY); stream huge bodies inline instead.

The request body is read whole before the app is called (bounded by the server's max_body),
so `wsgi.input` is a BytesIO that can never read past the body, and a slow uploader costs no
thread.  The response is framed by the app's Content-Length if it gives one; otherwise a body
of one chunk gets a Content-Length (one write, head and body together), and a longer one is sent
chunked (HTTP/1.1) or close-delimited (1.0).  `close()` of the app's iterable is always called.
"""
from __future__ import annotations

import io
import logging
import sys
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable

from .handlers import HTTPServerHandler
from .http import Request

log = logging.getLogger(__name__)

MAX_THREADED_BODY = 64 * 1024 * 1024
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailers", "transfer-encoding", "upgrade"})

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

# (name, value) as the app gives them -> (name, value) as sent, checked once: most responses
# repeat the same few headers.  Bounded, so varied values cannot grow it.
_converted: dict[tuple[str, str], tuple] = {}
_statuses: dict[str, tuple[int, bytes]] = {}       # "200 OK" -> (200, b"OK"), checked once


# header name -> its environ key ("" for a field the environ leaves out), computed once a name.
_environ_keys: dict[bytes, str] = {}


def _environ_key(name: bytes) -> str:
    if b"_" in name:                        # X_Forwarded vs X-Forwarded: both would be one key
        key = ""
    elif name == b"content-type":
        key = "CONTENT_TYPE"
    elif name == b"content-length" or name == b"transfer-encoding":
        key = ""                            # the body is already decoded and counted
    else:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    if len(_environ_keys) < 4096:
        _environ_keys[name] = key
    return key


class _Exchange:
    """One request's start_response state, shared by the app and the handler."""

    __slots__ = ("status", "headers", "head_sent", "length_given", "write")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write              # the legacy write() callable start_response returns
        self.status: tuple[int, bytes] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_sent = False
        self.length_given = False

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        parsed = _statuses.get(status)
        if parsed is None:
            code, _, reason = status.partition(" ")
            if (len(code) != 3 or not code.isdigit() or code < "200"
                    or any(c < " " or c == "\x7f" for c in reason)):
                # 1xx is the server's business; a CRLF in the reason would inject headers
                raise ValueError(f"bad status {status!r}")
            parsed = (int(code), reason.encode("latin-1"))
            if len(_statuses) < 1024:
                _statuses[status] = parsed
        converted = []
        cache = _converted
        for field in headers:
            done = cache.get(field)
            if done is None:
                name, value = field
                if "\r" in value or "\n" in value or "\0" in value or "\r" in name or "\n" in name:
                    raise ValueError(f"CR/LF in header {name!r}")
                lower = name.lower()
                done = () if lower in _HOP_BY_HOP else (lower.encode("latin-1"), value.encode("latin-1"))
                if len(cache) < 4096:
                    cache[field] = done
            if not done:
                continue                    # hop-by-hop: framing is the server's business
            if done[0] == b"content-length":
                self.length_given = True
            converted.append(done)
        self.status, self.headers = parsed, converted
        return self.write


class WSGIHandler(HTTPServerHandler):
    """Serve `app` (set by wsgi_factory) on one connection."""

    app: WSGIApp | None = None
    executor: ThreadPoolExecutor | None = None
    url_scheme = "http"

    def connection_made(self) -> None:
        super().connection_made()
        server, client = self.sock.getsockname(), self.address
        self._base_environ = {
            "SERVER_NAME": str(server[0]) if isinstance(server, tuple) else "localhost",
            "SERVER_PORT": str(server[1]) if isinstance(server, tuple) else "",
            "REMOTE_ADDR": client[0] if isinstance(client, tuple) else "",
            "REMOTE_PORT": str(client[1]) if isinstance(client, tuple) else "",
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": self.url_scheme,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.executor is not None,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }
        self._iter: Any = None
        self._result: Any = None
        self._exchange: _Exchange | None = None
        self._pending: bytes | None = None

    # -- environ --------------------------------------------------------------------------------

    def environ(self, request: Request, body: bytes) -> dict:
        """The PEP 3333 environ of a request."""
        env = self._base_environ.copy()
        target = request.target.decode("latin-1")
        if "://" in target and not target.startswith("/"):          # absolute-form
            target = urllib.parse.urlsplit(target)._replace(scheme="", netloc="").geturl() or "/"
        path, _, query = target.partition("?")
        env["REQUEST_METHOD"] = request.method.decode("latin-1")
        env["PATH_INFO"] = urllib.parse.unquote_to_bytes(path).decode("latin-1") if "%" in path else path
        env["QUERY_STRING"] = query
        env["SERVER_PROTOCOL"] = "HTTP/" + request.http_version.decode()
        env["wsgi.input"] = io.BytesIO(body)
        env["CONTENT_LENGTH"] = str(len(body)) if body else ""
        keys = _environ_keys
        for name, value in request.headers:
            key = keys.get(name)
            if key is None:
                key = _environ_key(name)
            if not key:
                continue
            value = value.decode("latin-1")
            if key in env:
                env[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
            else:
                env[key] = value
        return env

    # -- running the application ----------------------------------------------------------------

    def request_received(self, request: Request, body: bytes) -> None:
        environ = self.environ(request, body)
        if self.executor is None:
            self._run_inline(environ)
        else:
            future = self.executor.submit(_run_collected, self.app, environ)
            reactor = self.reactor
            future.add_done_callback(lambda f: reactor.call_soon_threadsafe(self._deliver, f))

    def _run_inline(self, environ: dict) -> None:
        exchange = self._exchange = _Exchange(self._legacy_write)
        try:
            result = self.app(environ, exchange.start_response)
            self._result = result
            self._iter = iter(result)
        except Exception as exc:
            self._app_failed(exc)
            return
        self._pump()

    def _pump(self) -> None:
        """Pull body chunks while the peer keeps up (see the module docstring)."""
        it = self._iter
        if it is None or self.closing:
            return
        try:
            while self.write_buffer_size <= self.high_water and not self.closing:
                chunk = next(it, None)
                if chunk is None:
                    self._finish()
                    return
                if chunk:
                    self._send_chunk(chunk)
        except Exception as exc:
            self._app_failed(exc)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._iter is not None:
            self.reactor.call_soon(self._pump)

    def _send_chunk(self, chunk: bytes) -> None:
        exchange = self._exchange
        if exchange.head_sent:
            self.send_body(chunk)
        elif self._pending is None and not exchange.length_given:
            self._pending = chunk            # one chunk may be all: then it gets a Content-Length
        else:
            self._send_head(exchange)
            if self._pending is not None:
                self.send_body(self._pending)
                self._pending = None
            self.send_body(chunk)

    def _send_head(self, exchange: _Exchange) -> None:
        if exchange.status is None:
            raise AssertionError("the application sent a body before start_response")
        exchange.head_sent = True
        self.send_head(exchange.status[0], exchange.headers, exchange.status[1])

    def _legacy_write(self, data: bytes) -> None:
        """The write() callable that start_response returns (PEP 3333, for old apps)."""
        if not self._exchange.head_sent:
            if self._pending is not None:
                data, self._pending = self._pending + data, None
            self._send_head(self._exchange)
        self.send_body(data)

    def _finish(self) -> None:
        exchange, self._iter = self._exchange, None
        self._close_result()
        if exchange.status is None:
            self._app_failed(AssertionError("the application returned without start_response"))
            return
        if not exchange.head_sent and not exchange.length_given:
            body, self._pending = self._pending or b"", None
            self.respond(exchange.status[0], exchange.headers, body, exchange.status[1])
            return
        if not exchange.head_sent:
            self._send_head(exchange)
        self.end_response()

    def _close_result(self) -> None:
        result, self._result = self._result, None
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.error("%r: error in the response iterable's close()", self, exc_info=True)

    def _app_failed(self, exc: BaseException) -> None:
        log.error("%r: the WSGI application failed", self, exc_info=exc)
        self._iter, self._pending = None, None
        self._close_result()
        if self._exchange is not None and self._exchange.head_sent or self.conn.our_state != "IDLE":
            self.abort()                     # half a response went out: only a reset is honest
        else:
            self.conn.keep_alive = False
            self.respond(500, [(b"content-type", b"text/plain")], b"Internal Server Error\n")

    def handle_close(self) -> None:
        """The connection ended, maybe mid-response: the iterable's close() still runs."""
        self._iter = self._pending = None
        self._close_result()
        super().handle_close()

    # -- the thread pool ------------------------------------------------------------------------

    def _deliver(self, future: Future) -> None:
        if self.closing:
            return
        self._exchange = None                # this request's, not the previous one's
        try:
            status, headers, chunks = future.result()
        except Exception as exc:
            self._app_failed(exc)
            return
        self._exchange = _Exchange(self._legacy_write)
        self._exchange.status, self._exchange.headers = status, headers
        self._exchange.length_given = any(name == b"content-length" for name, _ in headers)
        self._iter, self._result = iter(chunks), None
        self._pump()


def _run_collected(app: WSGIApp, environ: dict) -> tuple:
    """In a worker thread: run the app and collect its whole response."""
    written: list[bytes] = []
    size = 0

    def write(data: bytes) -> None:
        nonlocal size
        exchange.head_sent = True            # as far as the app can tell, the head went out
        size += len(data)
        if size > MAX_THREADED_BODY:
            raise RuntimeError("response body too large for a threaded app")
        written.append(data)
    exchange = _Exchange(write)
    result = app(environ, exchange.start_response)
    try:
        for chunk in result:
            if chunk:
                write(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if exchange.status is None:
        raise AssertionError("the application returned without start_response")
    return exchange.status, exchange.headers, written


def wsgi_factory(app: WSGIApp, *, threads: int | None = None, url_scheme: str = "http",
                 **options: Any) -> type[WSGIHandler]:
    """A handler class for listen_tcp that serves app, inline or on a pool of threads."""
    executor = ThreadPoolExecutor(threads, thread_name_prefix="wsgi") if threads else None
    attrs = {"app": staticmethod(app), "executor": executor, "url_scheme": url_scheme, **options}
    return type("WSGI", (WSGIHandler,), attrs)
