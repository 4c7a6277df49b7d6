"""Run an app as the user does (`python -m apps.<name> --port 0`) and talk to it from outside.

`start()` waits for the app's own readiness signal, its `listening` lines, with a select()
deadline instead of a sleep; `stop()` signals the process we started (by PID, never by name)
and returns its exit status, killing it only if it outlives the deadline.  `running()` is the
two as a context manager, so a failing test still ends its server.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]

# `listening <scheme>://<host>:<port> <service>`, the whole line and nothing else.
LISTENING = re.compile(
    r"listening (?P<scheme>[a-z]+)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\d{1,5})"
    r" (?P<service>[A-Za-z0-9_.-]+)")

AUTHKEY = re.compile(r"authkey [0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    service: str

    @property
    def address(self) -> tuple[str, int]:
        return (self.host.strip("[]"), self.port)


class AppProcess(subprocess.Popen):
    """A Popen that remembers what the app printed."""

    stdout_lines: list[str]
    authkey: bytes | None = None         # from an `authkey <hex>` line, if the app printed one
    stderr_text: str = ""
    stdout_rest: str = ""


def start(name: str, *args: str, count: int = 1, timeout: float = 10.0,
          port: str = "0") -> tuple[AppProcess, list[Endpoint]]:
    """Start `python -m apps.<name> --port 0 *args`; return it once `count` endpoints listen."""
    cmd = [sys.executable, "-m", f"apps.{name}", "--port", port, *args]
    proc = AppProcess(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    proc.stdout_lines = []
    proc.authkey = None
    try:
        endpoints = _read_listening(proc, count, timeout)
    except BaseException:
        stop(proc, signal.SIGKILL)
        raise
    return proc, endpoints


def _read_listening(proc: AppProcess, count: int, timeout: float) -> list[Endpoint]:
    deadline = time.monotonic() + timeout
    fd, buf, endpoints = proc.stdout.fileno(), b"", []
    while len(endpoints) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{proc.args}: {len(endpoints)} of {count} listening lines "
                               f"within {timeout} s; stdout so far {proc.stdout_lines!r}")
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            proc.wait(5)
            err = proc.stderr.read().decode(errors="replace")
            raise RuntimeError(f"{proc.args} exited ({proc.returncode}) before listening; "
                               f"stdout {proc.stdout_lines!r}; stderr:\n{err}")
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.decode()
            proc.stdout_lines.append(line)
            if AUTHKEY.fullmatch(line):
                proc.authkey = bytes.fromhex(line.split()[1])     # a generated key, printed once
                continue
            m = LISTENING.fullmatch(line)
            if m is None:
                raise AssertionError(f"not a `listening` or `authkey` line: {line!r}")
            endpoints.append(Endpoint(m["scheme"], m["host"], int(m["port"]), m["service"]))
    if buf:
        raise AssertionError(f"partial line after the listening lines: {buf!r}")
    return endpoints


def stop(proc: AppProcess, sig: int | None = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Send sig (None: none, it was sent) to the process we started, collect its output and
    return its exit status; SIGKILL if it has not exited after timeout seconds."""
    if proc.returncode is not None:
        return proc.returncode          # already stopped (and reaped) once
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    proc.stdout_rest = (out or b"").decode(errors="replace")
    proc.stderr_text = (err or b"").decode(errors="replace")
    return proc.returncode


@contextlib.contextmanager
def running(name: str, *args: str, count: int = 1) -> Iterator[tuple[AppProcess, list[Endpoint]]]:
    """start() ... stop(), the stop also when the test fails."""
    proc, endpoints = start(name, *args, count=count)
    try:
        yield proc, endpoints
    finally:
        if proc.returncode is None:
            stop(proc)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/PID/stat utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()      # the name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])    # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def tcp_queues_pair(port_a: int, port_b: int) -> dict[int, tuple[int, int]]:
    """{port: (tx_queue, rx_queue)} for both ends of the loopback TCP connection a <-> b,
    read from one snapshot of /proc/net/tcp.  tx_queue is what that end sent and its peer has
    not acknowledged (on loopback: not yet taken), rx_queue what it received and its
    application has not read."""
    ends = {(f"0100007F:{a:04X}", f"0100007F:{b:04X}"): a for a, b in ((port_a, port_b),
                                                                      (port_b, port_a))}
    found = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            fields = row.split()
            port = ends.get((fields[1], fields[2]))
            if port is not None:
                tx, rx = fields[4].split(":")
                found[port] = (int(tx, 16), int(rx, 16))
    if len(found) != 2:
        raise LookupError(f"no TCP connection 127.0.0.1:{port_a} <-> 127.0.0.1:{port_b}")
    return found


def echo_roundtrip(address: tuple[str, int], payload: bytes = b"ping", timeout: float = 5.0) -> bytes:
    """Connect, send payload, read len(payload) bytes back, close."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(payload)
        return recv_n(sock, len(payload))


def recv_n(sock: socket.socket, n: int) -> bytes:
    """Read n bytes (the socket's timeout bounds each wait); short on EOF."""
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(n - len(buf), 1 << 20))
        if not data:
            break
        buf += data
    return bytes(buf)


def recv_to_eof(sock: socket.socket) -> bytes:
    """Read until EOF (the socket's timeout bounds each wait)."""
    parts = []
    while data := sock.recv(1 << 20):
        parts.append(data)
    return b"".join(parts)
