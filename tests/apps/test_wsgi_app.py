"""apps.wsgi as a user runs it: `python -m apps.wsgi tests.apps.sample_wsgi:<app> --port 0` from
the repository root, stdlib HTTP clients as the oracle.

The threading tests order events by files, not by the clock: /slow writes `started` and then
waits for the `release` file the test creates, and every answer carries the server's completion
order (`seq`).  With --threads, /fast is answered while /slow provably still waits; inline, the
/fast request is seen sitting unread in the server's socket while /slow waits, and is answered
only after /slow."""
from __future__ import annotations

import http.client
import json
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from . import _proc

SAMPLE = "tests.apps.sample_wsgi"
TIMEOUT = 10.0


def get_json(endpoint: _proc.Endpoint, target: str) -> dict:
    with urllib.request.urlopen(f"http://{endpoint.host}:{endpoint.port}{target}",
                                timeout=TIMEOUT) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        return json.load(resp)


def wait_until(predicate, what: str, timeout: float = TIMEOUT) -> None:
    """Poll predicate (5 ms apart) until it holds; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"no {what} within {timeout} s")
        select.select([], [], [], 0.005)        # a poll interval, not a synchronisation


@pytest.mark.parametrize("spec, name", [(f"{SAMPLE}:app", "app"),
                                        (f"{SAMPLE}:create_app()", "create_app"),
                                        (f"{SAMPLE}:handlers.app", "app")])
def test_serves_the_named_app(spec, name):
    with _proc.running("wsgi", spec) as (proc, [endpoint]):
        assert (endpoint.scheme, endpoint.host, endpoint.service) == ("http", "127.0.0.1", "wsgi")
        assert proc.stdout_lines == [f"listening http://127.0.0.1:{endpoint.port} wsgi"]
        got = get_json(endpoint, "/some/where?x=1&y=%C3%A9")
        assert got["app"] == name
        assert (got["method"], got["path"], got["query"]) == ("GET", "/some/where", "x=1&y=%C3%A9")
    assert proc.returncode == 0, proc.stderr_text
    assert proc.stderr_text == ""


@pytest.mark.parametrize("spec", ["nosuchmodule:app", f"{SAMPLE}:nosuch", f"{SAMPLE}",
                                  f"{SAMPLE}:NOT_CALLABLE", ":app"])
def test_bad_spec_is_a_usage_error(spec):
    out = subprocess.run([sys.executable, "-m", "apps.wsgi", spec, "--port", "0"],
                         cwd=_proc.REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 2, out
    assert out.stdout == ""                                 # never announced a listener
    assert f"cannot load {spec}" in out.stderr and "usage:" in out.stderr
    assert "Traceback" not in out.stderr


class SlowRequest:
    """GET /slow?dir=... from a thread, on its own connection."""

    def __init__(self, endpoint: _proc.Endpoint, folder) -> None:
        self.folder, self.result, self.error = folder, None, None
        target = "/slow?dir=" + urllib.parse.quote(str(folder))
        self.thread = threading.Thread(target=self._run, args=(endpoint, target), daemon=True)
        self.thread.start()
        wait_until((folder / "started").exists, "/slow started")

    def _run(self, endpoint, target) -> None:
        try:
            self.result = get_json(endpoint, target)
        except BaseException as exc:              # reported by finish()
            self.error = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def finish(self) -> dict:
        """Create the release file, and return /slow's answer."""
        (self.folder / "release").touch()
        self.thread.join(TIMEOUT)
        assert self.done, f"/slow not answered {TIMEOUT} s after its release"
        if self.error is not None:
            raise self.error
        assert self.result["released"] is True          # not the 2 s give-up
        return self.result


def test_threads_answer_fast_while_slow_blocks(tmp_path):
    with _proc.running("wsgi", f"{SAMPLE}:slow_app", "--threads", "4") as (proc, [endpoint]):
        slow = SlowRequest(endpoint, tmp_path)          # the app is now inside /slow
        fast = get_json(endpoint, "/fast")
        assert not slow.done and not (tmp_path / "release").exists()
        slow_result = slow.finish()
        assert fast["path"] == "/fast" and slow_result["path"] == "/slow"
        assert fast["seq"] < slow_result["seq"]
    assert proc.returncode == 0, proc.stderr_text


def test_inline_app_blocks_the_loop(tmp_path):
    """Without --threads the app runs on the reactor thread: while /slow waits, nothing else is
    read, so /fast waits for /slow.  (That is what --threads is for.)"""
    with _proc.running("wsgi", f"{SAMPLE}:slow_app") as (proc, [endpoint]):
        slow = SlowRequest(endpoint, tmp_path)
        request = b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(endpoint.address, timeout=TIMEOUT) as sock:
            sock.sendall(request)
            server_port, client_port = endpoint.port, sock.getsockname()[1]

            def request_waits_unread():
                return _proc.tcp_queues_pair(server_port, client_port)[server_port][1] == len(request)
            wait_until(request_waits_unread, "/fast request in the server's receive queue")
            assert not slow.done
            slow_result = slow.finish()
            resp = http.client.HTTPResponse(sock, method="GET")
            resp.begin()
            assert resp.status == 200
            fast = json.loads(resp.read())
        assert fast["path"] == "/fast"
        assert slow_result["seq"] < fast["seq"]
    assert proc.returncode == 0, proc.stderr_text
