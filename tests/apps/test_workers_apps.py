"""--workers and --reuse-port as a user runs them: real forked workers, stdlib clients, /proc.

Worker processes are found as the children of the app we started (/proc/PID/stat's ppid), and
descriptors are counted in /proc/PID/fd.  Each app is stopped by SIGTERM to the PID we started;
the parent stops its workers itself, and `_proc.stop` waits until the workers too have closed
the stdout they inherited, so no test leaves a process behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from protocols import rpc

from . import _proc

CERTS = Path(__file__).resolve().parents[1] / "certs"


def children(pid: int) -> list[int]:
    """PIDs whose parent is pid (live or zombie)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        select.select([], [], [], 0.01)        # a poll interval, bounded by the deadline


def workers_of(proc, count: int = 2) -> list[int]:
    return wait_for(lambda: (kids := children(proc.pid)) and len(kids) == count and kids,
                    what=f"{count} workers")


def roundtrip(address, payload: bytes = b"ping", deadline: float = 10.0) -> int:
    """One answered request, retried until deadline; returns the failed attempts (a connection
    in flight to a worker that was just killed is reset, and its client retries)."""
    failures, end = 0, time.monotonic() + deadline
    while True:
        try:
            assert _proc.echo_roundtrip(address, payload, timeout=2.0) == payload
            return failures
        except (OSError, AssertionError):
            failures += 1
            if time.monotonic() >= end:
                raise


@contextlib.contextmanager
def app(name: str, *args: str):
    proc, [endpoint] = _proc.start(name, *args)
    try:
        yield proc, endpoint
    finally:
        _proc.stop(proc)


@pytest.mark.parametrize("mode", [(), ("--reuse-port",)], ids=["handoff", "reuse-port"])
def test_echo_workers_answer(mode):
    with app("echo", "--workers", "2", *mode) as (proc, endpoint):
        assert (endpoint.scheme, endpoint.service) == ("tcp", "echo")
        assert len(workers_of(proc)) == 2
        socks = [socket.create_connection(endpoint.address, timeout=5) for _ in range(8)]
        for i, sock in enumerate(socks):
            sock.sendall(b"hello %d" % i)
        for i, sock in enumerate(socks):
            assert _proc.recv_n(sock, len(b"hello %d" % i)) == b"hello %d" % i
            sock.close()
    assert proc.returncode == 0
    assert proc.stdout_lines == [f"listening tcp://127.0.0.1:{endpoint.port} echo"]


@pytest.mark.parametrize("mode", [(), ("--reuse-port",)], ids=["handoff", "reuse-port"])
def test_rest_workers_answer_urllib(mode):
    with app("rest", "--workers", "2", *mode) as (proc, endpoint):
        assert (endpoint.scheme, endpoint.service) == ("http", "rest")
        base = f"http://127.0.0.1:{endpoint.port}"
        for i in range(6):
            with urllib.request.urlopen(f"{base}/hello?name=w{i}", timeout=5) as resp:
                assert resp.status == 200
                assert f"Hello w{i}!" in resp.read().decode()
    assert proc.returncode == 0


@pytest.mark.parametrize("mode", [(), ("--reuse-port",)], ids=["handoff", "reuse-port"])
def test_rpc_workers_share_one_generated_key(mode):
    """apps.rpc resolves its key before forking: one `authkey` line, and a client holding that
    key is served by whichever worker gets its connection."""
    with app("rpc", "--workers", "2", *mode) as (proc, endpoint):
        assert (endpoint.scheme, endpoint.service) == ("tcp", "rpc")
        workers = workers_of(proc)
        assert proc.authkey is not None
        assert rpc.connect(endpoint.address, proc.authkey, timeout=5).add(0, 0) == 0   # warm up
        wait_for(lambda: _settled(workers), what="descriptor counts settling")
        before = {pid: fd_count(pid) for pid in workers}
        proxies = [rpc.connect(endpoint.address, proc.authkey, timeout=5) for _ in range(16)]
        try:
            for proxy in proxies:
                assert proxy.add(2, 3) == 5
            held = {pid: fd_count(pid) - before[pid] for pid in workers}
            assert all(n > 0 for n in held.values()), f"connections per worker: {held}"
            for proxy in proxies:                  # all still answering, in another order
                assert proxy.sub(2, 3) == -1
        finally:
            for proxy in proxies:
                proxy.close()
        stranger = rpc.connect(endpoint.address, b"not the key", timeout=5)
        try:
            with pytest.raises(ConnectionError):         # closed after the failed challenge
                stranger.add(2, 3)
        finally:
            stranger.close()
        assert _proc.stop(proc) == 0
    lines = proc.stdout_lines + proc.stdout_rest.splitlines()
    assert lines == [f"authkey {proc.authkey.hex()}",
                     f"listening tcp://127.0.0.1:{endpoint.port} rpc"]


def test_reuse_port_alone_lets_two_servers_share_a_port():
    with app("echo", "--reuse-port") as (first, endpoint):
        second, [again] = _proc.start("echo", "--reuse-port", port=str(endpoint.port))
        try:
            assert again.port == endpoint.port
            for _ in range(10):
                assert roundtrip(endpoint.address) == 0
        finally:
            assert _proc.stop(second) == 0


def test_wsgi_workers_answer_while_one_is_blocked(tmp_path):
    """A blocking app without --threads blocks its worker's reactor; the acceptor sees that
    worker busy (an outstanding connection) and hands the next one to the other worker."""
    with app("wsgi", "tests.apps.sample_wsgi:slow_app", "--workers", "2") as (proc, endpoint):
        with socket.create_connection(endpoint.address, timeout=10) as slow:
            slow.sendall(f"GET /slow?dir={tmp_path} HTTP/1.1\r\nHost: x\r\n"
                         "Connection: close\r\n\r\n".encode())
            wait_for(lambda: (tmp_path / "started").exists(), what="the slow request running")
            url = f"http://127.0.0.1:{endpoint.port}/fast"
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert json.loads(resp.read())["path"] == "/fast"
            (tmp_path / "release").touch()
            answer = _proc.recv_to_eof(slow)
        assert answer.startswith(b"HTTP/1.1 200") and b'"released": true' in answer
    assert proc.returncode == 0


def test_tls_is_done_by_the_workers():
    """The acceptor hands raw TCP over; each worker runs the TLS handshake itself."""
    with app("echo", "--workers", "2", "--tls-cert", str(CERTS / "server.pem"),
             "--tls-key", str(CERTS / "server.key")) as (proc, endpoint):
        assert endpoint.scheme == "tls"
        ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
        for _ in range(3):
            with socket.create_connection(endpoint.address, timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"secret")
                assert _proc.recv_n(tls, 6) == b"secret"
    assert proc.returncode == 0


@pytest.mark.parametrize("mode", [(), ("--reuse-port",)], ids=["handoff", "reuse-port"])
def test_killed_worker_is_replaced_while_clients_are_served(mode):
    with app("echo", "--workers", "2", *mode) as (proc, endpoint):
        first = workers_of(proc)
        for _ in range(10):
            assert roundtrip(endpoint.address) == 0
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        answered = failed = 0
        deadline = time.monotonic() + 20
        while True:                       # clients keep coming while the worker is replaced
            failed += roundtrip(endpoint.address)
            answered += 1
            kids = children(proc.pid)
            if victim not in kids and len(kids) == 2 and answered >= 30:
                break
            assert time.monotonic() < deadline, f"no replacement: workers {kids}"
        assert failed <= 5, f"{failed} failed attempts for {answered} answers"
        [fresh] = set(kids) - set(first)
        # The replacement serves too: while connections are held open, its descriptors grow
        # (it may still be starting: retry until it takes its share).
        wait_for(lambda: serves(fresh, endpoint.address), what=f"new worker {fresh} serving")
    assert proc.returncode == 0


@pytest.mark.parametrize("mode", [(), ("--reuse-port",)], ids=["handoff", "reuse-port"])
def test_connections_held_across_a_worker_kill(mode):
    """Connections opened before a SIGKILL: those the dead worker held end (EOF or reset), and
    every one the surviving worker holds keeps echoing, without a reset, before and after the
    replacement starts.  Which worker holds which is read from /proc: the server-side socket's
    inode (/proc/net/tcp) among each worker's descriptors."""
    with app("echo", "--workers", "2", *mode) as (proc, endpoint):
        first = workers_of(proc)
        held: dict[int, list[socket.socket]] = {pid: [] for pid in first}
        try:
            while min(len(socks) for socks in held.values()) < 3:      # both workers hold some
                spread = {pid: len(socks) for pid, socks in held.items()}
                assert sum(spread.values()) < 64, f"connections per worker: {spread}"
                sock = socket.create_connection(endpoint.address, timeout=5)
                sock.sendall(b"hello")
                assert _proc.recv_n(sock, 5) == b"hello"
                pid = wait_for(lambda: owner(sock, first), what="the worker holding it")
                held[pid].append(sock)
            victim, survivor = first
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: exited(victim), what=f"worker {victim} dying")
            for sock in held[victim]:
                assert ended(sock), "a connection of the killed worker was left open"
            assert echo_each(held[survivor], b"during")
            kids = wait_for(lambda: (kids := children(proc.pid)) and victim not in kids
                            and len(kids) == 2 and kids, what="a replacement worker")
            assert survivor in kids
            for _ in range(10):                   # new connections are served
                assert roundtrip(endpoint.address) == 0
            [fresh] = set(kids) - {survivor}
            wait_for(lambda: serves(fresh, endpoint.address), what=f"new worker {fresh} serving")
            for i in range(3):                    # and the held ones still echo, none reset
                assert echo_each(held[survivor], b"after %d" % i)
        finally:
            for socks in held.values():
                for sock in socks:
                    sock.close()
    assert proc.returncode == 0


def owner(sock: socket.socket, pids: list[int]) -> int | None:
    """The PID among pids holding the server side of this loopback connection."""
    me, server = sock.getsockname()[1], sock.getpeername()[1]
    local, remote = f"0100007F:{server:04X}", f"0100007F:{me:04X}"
    with open("/proc/net/tcp") as f:
        inodes = {fields[9] for fields in map(str.split, f) if fields[1:3] == [local, remote]}
    links = {f"socket:[{inode}]" for inode in inodes}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):         # a descriptor closed meanwhile
                if os.readlink(f"/proc/{pid}/fd/{fd}") in links:
                    return pid
    return None


def ended(sock: socket.socket) -> bool:
    """Whether the server side is gone: EOF or a reset (on the send or the read)."""
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def echo_each(socks: list[socket.socket], payload: bytes) -> bool:
    """Send on every socket first, then read each answer back (a reset raises)."""
    for sock in socks:
        sock.sendall(payload)
    return all(_proc.recv_n(sock, len(payload)) == payload for sock in socks)


def serves(pid: int, address) -> bool:
    """Whether pid holds more descriptors while 8 connections are open than before them."""
    base = wait_for(lambda: _settled([pid]) and fd_count(pid), what="a settled count")
    held = [socket.create_connection(address, timeout=5) for _ in range(8)]
    try:
        for sock in held:
            sock.sendall(b"x")
            assert _proc.recv_n(sock, 1) == b"x"
        return fd_count(pid) > base
    finally:
        for sock in held:
            sock.close()


def test_no_descriptor_leaks_after_1000_handoffs():
    with app("echo", "--workers", "2") as (proc, endpoint):
        pids = [proc.pid, *workers_of(proc)]
        for _ in range(20):               # warm up: whatever is allocated once, is
            roundtrip(endpoint.address)
        wait_for(lambda: _settled(pids), what="descriptor counts settling")
        before = {pid: fd_count(pid) for pid in pids}
        for _ in range(20):               # 1,000 hand-offs, 50 connections at a time
            batch = [socket.create_connection(endpoint.address, timeout=5) for _ in range(50)]
            for sock in batch:
                sock.sendall(b"0123456789")
            for sock in batch:
                assert _proc.recv_n(sock, 10) == b"0123456789"
                sock.close()
        counts = wait_for(lambda: (now := {pid: fd_count(pid) for pid in pids}) == before and now,
                          timeout=15, what=f"descriptor counts back to {before}")
        assert counts == before
        assert children(proc.pid) == pids[1:]         # and no worker died meanwhile
    assert proc.returncode == 0


def _settled(pids: list[int]) -> bool:
    first = [fd_count(pid) for pid in pids]
    select.select([], [], [], 0.05)            # counts that hold over an interval
    return first == [fd_count(pid) for pid in pids]


@pytest.mark.parametrize("mode", [(), ("--reuse-port",)], ids=["handoff", "reuse-port"])
def test_sigterm_stops_every_worker_and_exits_0(mode):
    proc, [endpoint] = _proc.start("echo", "--workers", "2", "--grace", "0.5", *mode)
    try:
        pids = workers_of(proc)
        conn = socket.create_connection(endpoint.address, timeout=5)
        conn.sendall(b"before")
        assert _proc.recv_n(conn, 6) == b"before"
    except BaseException:
        _proc.stop(proc)
        raise
    started = time.monotonic()
    assert _proc.stop(proc, signal.SIGTERM) == 0          # waits for the workers' stdout too
    assert time.monotonic() - started < 8
    with conn:
        assert conn.recv(1) == b""                       # closed by its worker, not left open
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the parent"


def test_sigterm_lets_workers_flush_queued_echo():
    """A client sends and reads nothing until its worker stops reading with echo queued in its
    own memory; SIGTERM to the parent then: the worker still delivers every byte it had read,
    in order and without a reset, then EOF (the in-process test's measure: /proc/net/tcp)."""
    proc, [endpoint] = _proc.start("echo", "--workers", "2")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(5)
        sock.connect(endpoint.address)
        me, server = sock.getsockname()[1], endpoint.port
        payload = os.urandom(8 << 20)
        sock.setblocking(False)
        sent = 0
        while sent < len(payload):
            try:
                sent += sock.send(payload[sent:sent + (1 << 20)])
            except BlockingIOError:
                if not select.select([], [sock], [], 0.5)[1]:
                    break                        # the worker has stopped reading

        def server_state():
            queues = _proc.tcp_queues_pair(me, server)
            (my_tx, my_rx), (srv_tx, srv_rx) = queues[me], queues[server]
            read = sent - my_tx - srv_rx
            return read, read - srv_tx - my_rx
        server_read, queued = wait_for(lambda: _steady(server_state), what="echo queued")
        assert queued > 0
        proc.send_signal(signal.SIGTERM)
        sock.setblocking(True)
        sock.settimeout(10)
        received = bytearray()
        while data := sock.recv(1 << 20):
            received += data
        assert bytes(received) == payload[:len(received)]
        assert server_read <= len(received) <= sent
    finally:
        sock.close()
        status = _proc.stop(proc, None)
    assert status == 0


def _steady(measure):
    first = measure()
    select.select([], [], [], 0.02)
    second = measure()
    return second if first == second and second[1] > 0 else None


def test_workers_stop_when_the_parent_is_killed():
    """An orphan must not keep serving: a worker notices its parent's death on its channel."""
    proc, [endpoint] = _proc.start("echo", "--workers", "2", "--reuse-port", "--grace", "1")
    pids = workers_of(proc)
    assert _proc.stop(proc, signal.SIGKILL) == -signal.SIGKILL    # returns once workers exit
    for pid in pids:              # reparented, so reaped by whoever adopts orphans: a zombie will do
        wait_for(lambda: exited(pid), what=f"orphan {pid} exiting")


def exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def test_max_connections_is_the_services_total():
    with app("echo", "--workers", "2", "--max-connections", "2") as (proc, endpoint):
        first = [socket.create_connection(endpoint.address, timeout=5) for _ in range(2)]
        for sock in first:
            sock.sendall(b"a")
            assert _proc.recv_n(sock, 1) == b"a"
        third = socket.create_connection(endpoint.address, timeout=5)     # kernel backlog
        third.sendall(b"c")
        third.settimeout(0.3)
        with pytest.raises(socket.timeout):
            third.recv(1)
        first[0].close()
        third.settimeout(5)
        assert third.recv(1) == b"c"
        for sock in (third, *first[1:]):
            sock.close()


STARTUP_FAILURE = """
import sys
from apps import _cli, _workers
def make_factory():
    raise RuntimeError("no factory today")
p = _cli.parser("t", 0)
_workers.add_worker_flags(p)
args = p.parse_args(sys.argv[1:])
sys.exit(_workers.serve_workers(args, make_factory, "tcp", "broken"))
"""


def test_a_worker_that_cannot_start_fails_the_service():
    done = subprocess.run([sys.executable, "-c", STARTUP_FAILURE, "--port", "0", "--workers", "2"],
                          cwd=_proc.REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "listening" not in done.stdout
    assert "no factory today" in done.stderr and "before it was ready" in done.stderr


@pytest.mark.timeout(120)
def test_echo_benchmark_workers_table_runs():
    """`python -m benchmarks.echo --workers 2` measures in-process, 1 and 2 workers and asyncio
    (one tiny round: speed is the benchmark's business, not this test's)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.echo", "--workers", "2", "--cases",
                           "64x10", "--rounds", "1", "--duration", "0.2", "--warmup", "0.05",
                           "--client", "python", "--json"],
                          cwd=_proc.REPO, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert row["benchmark"] == "echo-workers" and row["case"] == "64x10"
    assert set(row["servers"]) == {"in-process", "1 worker", "2 workers", "asyncio"}
    for name, server in row["servers"].items():
        assert server["rt_per_s"] > 0, name
    assert row["servers"]["2 workers"]["cpu_us_per_rt"] is not None
    assert row["scaling"] > 0
