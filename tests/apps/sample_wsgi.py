"""WSGI apps for `python -m apps.wsgi tests.apps.sample_wsgi:<name>` (test_wsgi_app.py).

Every answer is JSON and carries `seq`, the order in which this process finished its responses,
so a test reads the server's order of completion instead of guessing it from client timing.
`slow_app` blocks on a file the test creates, not on a clock: GET /slow?dir=D writes D/started
once the app is running, then polls for D/release every 10 ms (giving up after 2 s, which the
answer reports, so a test that forgot to release fails instead of passing late).
"""
from __future__ import annotations

import itertools
import json
import os
import threading
import time
import types
import urllib.parse

SLOW_LIMIT = 2.0
POLL = 0.01
NOT_CALLABLE = "not an app"

_seq = itertools.count(1)
_seq_lock = threading.Lock()


def _answer(start_response, name: str, environ: dict, **extra) -> list[bytes]:
    with _seq_lock:
        seq = next(_seq)
    body = json.dumps({"app": name, "method": environ["REQUEST_METHOD"],
                       "path": environ["PATH_INFO"], "query": environ["QUERY_STRING"],
                       "seq": seq, **extra}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    """Answer with the request's method, path and query."""
    return _answer(start_response, "app", environ)


def slow_app(environ, start_response):
    """/slow blocks until DIR/release exists (at most SLOW_LIMIT s); any other path answers at once."""
    if environ["PATH_INFO"] != "/slow":
        return _answer(start_response, "slow_app", environ)
    folder = urllib.parse.parse_qs(environ["QUERY_STRING"])["dir"][0]
    open(os.path.join(folder, "started"), "w").close()
    release = os.path.join(folder, "release")
    deadline = time.monotonic() + SLOW_LIMIT
    while not (released := os.path.exists(release)) and time.monotonic() < deadline:
        time.sleep(POLL)
    return _answer(start_response, "slow_app", environ, released=released)


def create_app():
    """A factory, as `module:create_app()` names it."""
    def factory_app(environ, start_response):
        return _answer(start_response, "create_app", environ)
    return factory_app


handlers = types.SimpleNamespace(app=app)      # for a dotted spec: module:handlers.app
