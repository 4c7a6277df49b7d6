"""Aids for testing handlers and protocols, for this project's tests and for its users.

The rule they serve: a test waits on a condition with a deadline, never on a bare sleep, and
makes the hard cases (a full kernel buffer, a timer a minute away) happen on purpose.
"""
from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from typing import Any, Callable

from .core import Reactor


class FakeClock:
    """A clock that moves only when told: pass it as Reactor(clock=...), then advance()."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float, reactor: Reactor | None = None) -> None:
        """Move time forward; with a reactor, run one non-blocking turn so due timers fire."""
        self.now += seconds
        if reactor is not None:
            reactor.run_once(0)


def run_until(reactor: Reactor, predicate: Callable[[], Any], timeout: float = 5.0,
              step: float = 0.01) -> Any:
    """Turn the reactor until predicate() is true; TimeoutError after timeout (real) seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        reactor.run_once(step)


class ReactorThread:
    """Run a reactor in a background thread; call() runs code on it and returns the result.

        with ReactorThread() as rt:
            listener = rt.call(listen_tcp, rt.reactor, "127.0.0.1", 0, EchoHandler)
    """

    def __init__(self, reactor: Reactor | None = None) -> None:
        self.reactor = reactor if reactor is not None else Reactor()
        self._thread = threading.Thread(target=self._run, name="reactor", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.reactor.run()
        except BaseException as exc:        # surfaced by stop()
            self.error = exc

    def start(self) -> ReactorThread:
        self._thread.start()
        return self

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 5.0, **kwargs: Any) -> Any:
        """Run fn(*args, **kwargs) on the reactor thread and wait for its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
        self.reactor.call_soon_threadsafe(run)
        return future.result(timeout)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Poll predicate() on the reactor thread until it is true, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.call(predicate, timeout=timeout)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(0.005)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, join the thread, close the reactor; re-raise what the loop raised."""
        if self._thread.is_alive():
            self.reactor.call_soon_threadsafe(self.reactor.stop)
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("reactor thread did not stop")
        if not self.reactor.closed:
            self.reactor.close()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> ReactorThread:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def stream_pair(family: int = socket.AF_UNIX) -> tuple[socket.socket, socket.socket]:
    """A connected pair of stream sockets (AF_INET gives a real TCP pair over loopback)."""
    if family == socket.AF_UNIX:
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    return client, peer


def fill_socket(sock: socket.socket, chunk: int = 65536) -> int:
    """Send until the kernel refuses (EAGAIN), so the next send really would block."""
    blocking = sock.getblocking()
    sock.setblocking(False)
    total, data = 0, b"x" * chunk
    try:
        while True:
            try:
                total += sock.send(data)
            except (BlockingIOError, InterruptedError):
                if chunk == 1:
                    return total
                chunk = max(chunk // 16, 1)
                data = b"x" * chunk
    finally:
        sock.setblocking(blocking)


def drain_socket(sock: socket.socket) -> bytes:
    """Read whatever is available right now, without blocking."""
    blocking = sock.getblocking()
    sock.setblocking(False)
    parts = []
    try:
        while True:
            try:
                data = sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            parts.append(data)
    finally:
        sock.setblocking(blocking)
    return b"".join(parts)


def recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """Read exactly n bytes from a blocking socket within timeout, or raise."""
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)
