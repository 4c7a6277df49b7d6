"""The command-line contract every app shares (apps/_cli.py, DESIGN.md "Apps"): one
`listening <scheme>://<host>:<port> <service>` line per endpoint, `--port 0` gives real free
ports, SIGTERM and SIGINT stop it with status 0 and no traceback, `--help` works."""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import _proc

# app -> the endpoints it announces, in order: (scheme, service)
APPS = {
    "echo": [("tcp", "echo")],
    "udp": [("udp", "time"), ("udp", "echo")],
    "recipe1112": [("udp", "time"), ("udp", "echo"), ("tcp", "echo")],
}
SIGNALS = [signal.SIGTERM, signal.SIGINT]
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def answers(endpoint: _proc.Endpoint) -> bool:
    """One exchange with the endpoint, as its service defines it."""
    if endpoint.scheme == "tcp":
        return _proc.echo_roundtrip(endpoint.address, b"hello\n") == b"hello\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"hello", endpoint.address)
        data, peer = sock.recvfrom(8192)
    assert peer == endpoint.address
    return data == b"hello" if endpoint.service == "echo" else len(data) > 0


@pytest.mark.parametrize("app", APPS)
def test_listening_lines_name_free_ports(app):
    with _proc.running(app, count=len(APPS[app])) as (proc, endpoints):
        assert proc.stdout_lines == [
            f"listening {e.scheme}://127.0.0.1:{e.port} {e.service}" for e in endpoints]
        assert [(e.scheme, e.service) for e in endpoints] == APPS[app]
        ports = [e.port for e in endpoints]
        assert all(1024 <= p <= 65535 for p in ports), ports
        assert len(set((e.scheme, e.port) for e in endpoints)) == len(endpoints)
        for endpoint in endpoints:
            assert answers(endpoint), endpoint
    assert proc.returncode == 0, proc.stderr_text


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("app", APPS)
def test_signal_stops_with_status_0(app, sig):
    proc, endpoints = _proc.start(app, count=len(APPS[app]))
    try:
        assert all(answers(e) for e in endpoints)      # the loop is running
    finally:
        status = _proc.stop(proc, sig)
    assert status == 0, proc.stderr_text
    assert "Traceback" not in proc.stderr_text, proc.stderr_text
    assert proc.stdout_rest == ""                      # nothing printed after `listening`


def caught_signals(pid: int) -> set[int]:
    """The signals the process has handlers for (SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigCgt:")).split()[1], 16)
    return {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}


@pytest.mark.parametrize("app", APPS)
def test_stop_signals_are_handled_once_it_announces(app):
    """A supervisor may send SIGTERM as soon as it reads a `listening` line, so the graceful
    handler must be in place when the app prints it.  The race made deterministic: stdout is
    a full one-page pipe, so the app blocks inside the write of its first `listening` line, and
    we read its signal dispositions right then."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 4096)      # one page
        os.set_blocking(w, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"-" * 512)
        os.set_blocking(w, True)                # the app's end must block, not fail
        proc = _proc.AppProcess([sys.executable, "-m", f"apps.{app}", "--port", "0"],
                                cwd=_proc.REPO, stdin=subprocess.DEVNULL, stdout=w,
                                stderr=subprocess.PIPE)
    finally:
        os.close(w)
    try:
        deadline = time.monotonic() + 10
        while "pipe_write" not in Path(f"/proc/{proc.pid}/wchan").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "never wrote stdout"
            select.select([], [], [], 0.005)    # a poll interval, not a synchronisation
        caught = caught_signals(proc.pid)
        with os.fdopen(r, "rb") as pipe:
            r = -1
            out = pipe.read(4096)
            while out.count(b"\n") < len(APPS[app]):
                out += pipe.read1(4096)
    finally:
        if r >= 0:
            os.close(r)
        status = _proc.stop(proc)
    assert out[:4096] == b"-" * 4096 and out[4096:].startswith(b"listening ")
    assert signal.SIGTERM in caught          # else SIGTERM now kills it: status -15
    assert status == 0, proc.stderr_text


@pytest.mark.parametrize("app", APPS)
def test_help(app):
    out = subprocess.run([sys.executable, "-m", f"apps.{app}", "--help"], cwd=_proc.REPO,
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:")
    for flag in ("--host", "--port", "--grace", "--log-level"):
        assert flag in out.stdout
    assert out.stderr == ""


def test_bad_flag_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "apps.echo", "--no-such-flag"], cwd=_proc.REPO,
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 2
    assert "usage:" in out.stderr and "Traceback" not in out.stderr
