"""Fixtures shared by every layer's tests: a reactor (closed at teardown), a reactor running in
a thread, and a loopback server built on it.  Every test also has a timeout (pyproject.toml)."""
from __future__ import annotations

import socket

import pytest

from reactor import Reactor, listen_tcp
from reactor.testing import ReactorThread


@pytest.fixture
def reactor():
    """A fresh reactor for tests that turn it themselves (run_once / run_until)."""
    r = Reactor()
    yield r
    if not r.closed:
        r.close()


@pytest.fixture
def rt():
    """A reactor running in a background thread; use rt.call(fn, ...) to act on it."""
    thread = ReactorThread().start()
    yield thread
    thread.stop()


@pytest.fixture
def serve_in_thread(rt):
    """serve_in_thread(factory, **listener_options) -> (host, port) on 127.0.0.1."""
    def serve(factory, **options):
        listener = rt.call(listen_tcp, rt.reactor, "127.0.0.1", 0, factory, **options)
        serve.listener = listener
        return listener.address
    return serve


@pytest.fixture
def full_backlog():
    """(host, port) of a listener whose accept queue is full: a new connect stays pending."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(server.getsockname())
        fillers.append(c)
    yield server.getsockname()
    for c in fillers:
        c.close()
    server.close()
