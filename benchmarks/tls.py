# TLS: this reactor's TLS layer (reactor/tls.py) against asyncio's (sslproto), same run, same
# client, same cores, same certificate (tests/certs: ECDSA P-256) and the same server context.
#
#   echo       1 KiB ping-pong over 10 TLS connections: apps.echo --tls-cert vs an asyncio
#              Protocol echo with create_server(ssl=). Client: Python, one process, epoll over
#              non-blocking SSLSockets (recv_into, every echo compared), as benchmarks/_load.py
#              does in plaintext. Round trips/s and the server's CPU per round trip.
#   https      keep-alive GET over 10 connections with wrk (skipped when wrk is not installed):
#              our raw HTTP/1.1 handler over TLS (benchmarks._tls_peers ours-http), apps.rest
#              over TLS (GET /hello?name=bench, WSGI + dispatcher), and benchmarks._peers' asyncio
#              HTTP Protocol with create_server(ssl=).
#   handshake  a new connection per exchange on 10 concurrent slots: TCP connect, a full TLS 1.3
#              handshake (no session resumption), one 1 KiB echo, reset; echo servers as above.
#              Python client; the rate is handshakes/s, us/op the server's CPU per handshake.
#   resumed    wrk with `Connection: close`: a new connection per request, but wrk resumes the
#              TLS session (PSK), so this is the abbreviated handshake; HTTP servers as above.
#
# As in echo.py and http.py: servers start once, pinned to one CPU (the client to the other), are
# primed, and each case runs alternating rounds (ours, asyncio, ours, ...), a turn that another
# process disturbed being redone; medians are printed with the ratios ours/asyncio. The client
# verifies nothing (CERT_NONE): its cost is not what is measured, and the server's is the same.
"""Benchmark TLS: ours vs asyncio's TLS over echo, HTTPS keep-alive, and handshakes."""
import argparse
import contextlib
import errno
import fnmatch
import json
import logging
import math
import os
import re
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time

from benchmarks import _harness, _http_load, _load
from benchmarks._harness import CLK_TCK, cpu_ticks, fmt, median, run_delay

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
CERTS = _harness.REPO_ROOT / "tests" / "certs"
CERT, KEY = str(CERTS / "server.pem"), str(CERTS / "server.key")
SIZE = 1024
CONNS = 10
HELLO_PATH = "/hello?name=bench"
MAX_POLLS = 100_000_000
MAX_ERRORS = 10_000
DRAIN_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
_LISTENING = re.compile(rb"^listening (?:tls|https)://(?P<host>[^\s]+):(?P<port>\d+)(?:\s.*)?$")

# name -> argv after the interpreter, path requested (HTTP servers)
SERVERS = {
    "ours-echo": ["-m", "apps.echo", "--tls-cert", CERT, "--tls-key", KEY],
    "asyncio-echo": ["-m", "benchmarks._tls_peers", "asyncio-echo", "--cert", CERT, "--key", KEY],
    "ours-raw": ["-m", "benchmarks._tls_peers", "ours-http", "--cert", CERT, "--key", KEY],
    "ours-wsgi": ["-m", "apps.rest", "--tls-cert", CERT, "--tls-key", KEY],
    "asyncio-http": ["-m", "benchmarks._tls_peers", "asyncio-http", "--cert", CERT, "--key", KEY],
}
PATHS = {"ours-raw": "/", "ours-wsgi": HELLO_PATH, "asyncio-http": "/"}
# case id -> (label, kind, servers, ratios)
CASES = {
    "echo": ("1 KiB echo x 10", "echo", ("ours-echo", "asyncio-echo"),
             (("ours-echo", "asyncio-echo"),)),
    "https": ("HTTPS keep-alive x 10", "wrk", ("ours-raw", "ours-wsgi", "asyncio-http"),
              (("ours-raw", "asyncio-http"), ("ours-wsgi", "asyncio-http"))),
    "handshake": ("full handshake x 10", "handshake", ("ours-echo", "asyncio-echo"),
                  (("ours-echo", "asyncio-echo"),)),
    "resumed": ("resumed, new conn x 10", "wrk-close", ("ours-raw", "asyncio-http"),
                (("ours-raw", "asyncio-http"),)),
}


class TLSServer(_harness.Server):
    """A benchmark server whose listening line says tls:// or https://."""

    def _read_listening(self, timeout: float) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        fd, buf = self.proc.stdout.fileno(), b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(buf) < _harness.MAX_BANNER:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"{self.name} printed no listening line in {timeout:.0f} s")
                if not sel.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait(timeout=_harness.STOP_TIMEOUT)
                    raise RuntimeError(f"{self.name} exited with {code} before listening")
                buf += chunk
                for line in buf.splitlines():
                    match = _LISTENING.match(line.strip())
                    if match:
                        return match["host"].decode(), int(match["port"])
        raise RuntimeError(f"{self.name} printed {_harness.MAX_BANNER} bytes but no listening line")


def client_context() -> ssl.SSLContext:
    """The load clients' context: TLS 1.3 as negotiated, no verification (see the top)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# -- the Python TLS clients ----------------------------------------------------------------------

def _window(warmup: float, duration: float, server_pid: int | None):
    """The round's clock: phase 0 warm-up, 1 measured, 2 drain; returns a stepper."""
    probe = (lambda: cpu_ticks(server_pid)) if server_pid else (lambda: None)
    state = {"phase": 0, "boundary": time.monotonic() + warmup, "t0": 0.0, "t1": 0.0,
             "ticks0": None, "ticks1": None, "count": 0, "measured": 0}

    def step(now: float, count: int) -> int:
        if now >= state["boundary"]:
            if state["phase"] == 0:
                state.update(phase=1, t0=now, ticks0=probe(), count=count, boundary=now + duration)
            elif state["phase"] == 1:
                state.update(phase=2, t1=now, ticks1=probe(), measured=count - state["count"],
                             boundary=now + DRAIN_TIMEOUT)
            else:
                raise _load.EchoError(f"exchanges still in flight {DRAIN_TIMEOUT:.0f} s after the window")
        return state["phase"]

    def result(**extra) -> _load.RoundResult:
        t0, t1, a, b = state["t0"], state["t1"], state["ticks0"], state["ticks1"]
        cpu = None if a is None or b is None else (b - a) / CLK_TCK
        return _load.RoundResult(state["measured"], t1 - t0, cpu, **extra)

    return state, step, result


def echo_round(host: str, port: int, conns: int, size: int, warmup: float, duration: float,
               server_pid: int | None = None) -> _load.RoundResult:
    """One ping-pong round over TLS; every echo is compared with what was sent."""
    ctx = client_context()
    socks: list[ssl.SSLSocket] = []
    try:
        for _ in range(conns):
            raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(ctx.wrap_socket(raw))
        for s in socks:
            s.setblocking(False)
        return _echo_loop(socks, size, warmup, duration, server_pid)
    finally:
        for s in socks:
            s.close()


def _echo_loop(socks, size, warmup, duration, server_pid) -> _load.RoundResult:
    n = len(socks)
    pool = os.urandom(size + 2 * n)
    expect = [(pool[i:i + size], pool[n + i:n + i + size]) for i in range(n)]
    bufs = [bytearray(size) for _ in range(n)]
    views = [memoryview(b) for b in bufs]
    got, parity, blocked = [0] * n, [0] * n, [False] * n
    index = {s.fileno(): i for i, s in enumerate(socks)}
    poller = _load._Poller(n)
    IN, OUT = _load.IN, _load.OUT
    want_read, want_write = ssl.SSLWantReadError, ssl.SSLWantWriteError
    state, step, result = _window(warmup, duration, server_pid)
    monotonic = time.monotonic
    count = inflight = 0

    def send(i: int) -> None:
        try:
            socks[i].send(expect[i][parity[i]])      # one record; all or nothing
            if blocked[i]:
                blocked[i] = False
                poller.modify(socks[i].fileno(), IN)
        except (want_write, want_read, BlockingIOError):
            if not blocked[i]:                       # retried with the same buffer
                blocked[i] = True
                poller.modify(socks[i].fileno(), IN | OUT)

    try:
        for s in socks:
            poller.register(s.fileno(), IN)
        for i in range(n):
            send(i)
        inflight = n
        for _ in range(MAX_POLLS):
            now = monotonic()
            phase = step(now, count)
            if phase == 2 and inflight == 0:
                break
            for fd, ev in poller.poll(max(0.0, state["boundary"] - now)):
                i = index[fd]
                if blocked[i] and ev & OUT:
                    send(i)
                s, view = socks[i], views[i]
                while True:
                    g = got[i]
                    try:
                        k = s.recv_into(view[g:] if g else view)
                    except (want_read, want_write, BlockingIOError):
                        break
                    if k == 0:
                        raise _load.EchoError("server closed a connection mid-round")
                    g += k
                    if g < size:
                        got[i] = g
                        if not s.pending():
                            break
                        continue
                    got[i] = 0
                    if bufs[i] != expect[i][parity[i]]:
                        raise _load.EchoError("echo differs from what was sent")
                    count += 1
                    if state["phase"] == 2:
                        inflight -= 1
                        break
                    parity[i] ^= 1
                    send(i)
                    break
        else:
            raise _load.EchoError(f"round gave up after {MAX_POLLS} polls")
    finally:
        poller.close()
    return result()


def handshake_round(host: str, port: int, conns: int, size: int, warmup: float, duration: float,
                    server_pid: int | None = None) -> _load.RoundResult:
    """New connections on conns slots: connect, full handshake, one echo, reset, again."""
    ctx = client_context()             # an SSLSocket resumes nothing unless given a session
    message = os.urandom(size)
    sel = selectors.DefaultSelector()
    slots: list[dict | None] = [None] * conns
    IN, OUT = selectors.EVENT_READ, selectors.EVENT_WRITE
    linger = struct.pack("ii", 1, 0)
    errors = 0
    state, step, result = _window(warmup, duration, server_pid)
    count = 0

    def start(i: int) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = raw.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            raw.close()
            raise _load.EchoError(f"connect failed: {os.strerror(err)}")
        slots[i] = {"sock": raw, "tls": None, "got": bytearray()}
        sel.register(raw, OUT, i)

    def finish(i: int, failed: bool = False) -> None:
        nonlocal errors
        slot = slots[i]
        slots[i] = None
        sock = slot["tls"] or slot["sock"]
        sel.unregister(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)   # no TIME_WAIT pile-up
        except OSError:
            pass
        sock.close()
        if failed:
            errors += 1
            if errors > MAX_ERRORS:
                raise _load.EchoError(f"giving up after {MAX_ERRORS} failed connections")
        if state["phase"] != 2:
            start(i)

    def advance(i: int) -> None:
        nonlocal count
        slot = slots[i]
        tls = slot["tls"]
        if tls is None:
            raw = slot["sock"]
            if raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                finish(i, failed=True)
                return
            sel.unregister(raw)
            tls = slot["tls"] = ctx.wrap_socket(raw, do_handshake_on_connect=False)
            sel.register(tls, OUT, i)
        if not slot.get("shaken"):
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                sel.modify(tls, IN, i)
                return
            except ssl.SSLWantWriteError:
                sel.modify(tls, OUT, i)
                return
            except (ssl.SSLError, OSError):
                finish(i, failed=True)
                return
            slot["shaken"] = True
            try:
                tls.send(message)
            except (ssl.SSLError, OSError):
                finish(i, failed=True)
                return
            sel.modify(tls, IN, i)
        while True:
            try:
                data = tls.recv(size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (ssl.SSLError, OSError):
                finish(i, failed=True)
                return
            if not data:
                finish(i, failed=True)
                return
            slot["got"] += data
            if len(slot["got"]) >= size:
                if slot["got"] != message:
                    raise _load.EchoError("echo differs from what was sent")
                count += 1
                finish(i)
                return

    try:
        for i in range(conns):
            start(i)
        for _ in range(MAX_POLLS):
            now = time.monotonic()
            phase = step(now, count)
            if phase == 2 and not any(slots):
                break
            for key, _ in sel.select(max(0.0, state["boundary"] - now)):
                if slots[key.data] is not None:
                    advance(key.data)
        else:
            raise _load.EchoError(f"round gave up after {MAX_POLLS} polls")
    finally:
        for slot in slots:
            if slot is not None:
                (slot["tls"] or slot["sock"]).close()
        sel.close()
    return result()


class PythonTLSClient:
    """A Python client for `_load.run_round`: echo or handshake rounds, in this process."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"python ({'echo ping-pong' if kind == 'echo' else 'new connections'}, in-process)"

    def run(self, host: str, port: int, conns: int, size: int, warmup: float, duration: float,
            server_pid: int | None = None) -> _load.RoundResult:
        wall, cpu, delay = time.monotonic(), time.process_time(), run_delay()
        body = echo_round if self.kind == "echo" else handshake_round
        result = body(host, port, conns, size, warmup, duration, server_pid)
        result.client_busy = (time.process_time() - cpu) / max(1e-9, time.monotonic() - wall)
        if delay is not None:
            result.client_delay = run_delay() - delay
        return result


class HTTPSWrkClient(_http_load.WrkClient):
    """wrk over https://, one run per round, as _http_load.WrkClient does over http://."""

    def run(self, host: str, port: int, path: str, conns: int, warmup: float, duration: float,
            server_pid: int | None = None, close: bool = False) -> _http_load.HTTPResult:
        seconds = max(1, math.ceil(duration - 1e-9))
        argv = [self.binary, "-t", "1", "-c", str(conns), "-d", f"{seconds}s",
                "--timeout", _http_load.WRK_TIMEOUT, f"https://{host}:{port}{path}"]
        if close:
            argv[1:1] = ["-H", "Connection: close"]
        wall, cpu = time.monotonic(), _http_load._children_cpu()
        ticks0 = cpu_ticks(server_pid) if server_pid else None
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        delays: dict[str, int] = {}
        deadline = wall + seconds + DRAIN_TIMEOUT + 30
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise _http_load.HTTPLoadError(f"wrk still running {deadline - wall:.0f} s after start")
                delays.update(_http_load._threads_delay(proc.pid))
                time.sleep(0.05)
            out, err = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ticks1 = cpu_ticks(server_pid) if server_pid else None
        busy = (_http_load._children_cpu() - cpu) / max(1e-9, time.monotonic() - wall)
        if proc.returncode != 0:
            raise _http_load.HTTPLoadError(f"wrk exited with {proc.returncode}: {(err or out).strip()}")
        requests, elapsed, rate, errors, non2xx = _http_load.parse_wrk(out)
        server_cpu = None if ticks0 is None or ticks1 is None else (ticks1 - ticks0) / CLK_TCK
        elapsed = requests / rate if rate > 0 else elapsed
        return _http_load.HTTPResult(requests, elapsed, server_cpu, busy,
                                     sum(delays.values()) / 1e9 if delays else None,
                                     connects=requests if close else None, errors=errors,
                                     non2xx=non2xx)


# -- checks, summaries, the table ----------------------------------------------------------------

def check_https(server: _harness.Server, path: str) -> str:
    """One GET over TLS with `Connection: close`; 'STATUS, N-byte body', or raise if not 2xx."""
    request = _http_load.request_bytes(server.host, server.port, path, close=True)
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        with client_context().wrap_socket(raw) as tls:
            tls.sendall(request)
            data = b""
            while len(data) < 1 << 20:
                try:
                    chunk = tls.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not chunk:
                    break
                data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise RuntimeError(f"{server.name} sent no complete response to GET {path}: {data[:200]!r}")
    status, length, _ = _http_load.parse_head(head)
    if not 200 <= status < 300 or (length >= 0 and len(body) != length):
        raise RuntimeError(f"{server.name} answered GET {path} with {head.splitlines()[0]!r}")
    return f"{status}, {len(body)}-byte body"


def check_echo(server: _harness.Server) -> str:
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        with client_context().wrap_socket(raw) as tls:
            tls.sendall(b"ping")
            if tls.recv(4) != b"ping":
                raise RuntimeError(f"{server.name} did not echo over TLS")
            return tls.version()


def summarize(rounds: list) -> dict:
    kept = _load.usable(rounds)
    return {"rate": median([r.rate for r in kept]),
            "cpu_us_per_op": median([r.cpu_us_per_rt for r in kept]),
            "server_busy": median([None if r.server_cpu is None else r.server_cpu / r.elapsed
                                   for r in kept]),
            "client_busy": median([r.client_busy for r in kept]),
            "errors": sum(getattr(r, "errors", 0) + getattr(r, "non2xx", 0) for r in rounds),
            "disturbed_rounds": sum(1 for r in rounds if r.disturbed),
            "rounds": [_load.round_record(r) for r in rounds]}


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tls", description=__doc__)
    parser.add_argument("--rounds", type=int, help="measured rounds per server and case (5; quick 2)")
    parser.add_argument("--duration", type=float,
                        help="seconds in each measured window (1; quick 0.5; wrk rounds up to "
                             "whole seconds)")
    parser.add_argument("--warmup", type=float,
                        help="seconds of load before each window (0.25; quick 0.1; wrk has none)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--retries", type=int, default=2,
                        help="times to redo a turn that other processes disturbed (default 2)")
    parser.add_argument("--cases", metavar="PATTERNS",
                        help=f"comma-separated case ids or globs (all: {','.join(CASES)})")
    parser.add_argument("--json", action="store_true", help="print one JSON line per case, no table")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every round")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the TLS cases and print the table (or JSON lines)."""
    args = parse_args(argv)
    _harness.setup_logging(args.verbose)
    rounds, duration, warmup = _harness.timing(args, (5, 2), (1.0, 0.5), (0.25, 0.1))
    cases = list(CASES)
    if args.cases:
        patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
        cases = [c for c in cases if any(fnmatch.fnmatch(c, p) for p in patterns)]
        if not cases:
            raise SystemExit(f"--cases {args.cases!r} matches no case")
    wrk = shutil.which("wrk")
    skipped = []
    if wrk is None:
        skipped = [c for c in cases if CASES[c][1].startswith("wrk")]
        cases = [c for c in cases if c not in skipped]
        log.warning("wrk is not installed: skipping %s", ", ".join(skipped) or "nothing")
    server_cpu, client_cpu, pinning = _harness.plan_cpus()
    _harness.pin_self(client_cpu)
    nofile = _harness.raise_nofile(CONNS * 4 + 256)
    needed = [name for name in SERVERS if any(name in CASES[c][2] for c in cases)]
    servers = {name: TLSServer(name, [sys.executable, *SERVERS[name], "--host", HOST, "--port", "0"],
                               server_cpu, nofile) for name in needed}
    clients = {"echo": PythonTLSClient("echo"), "handshake": PythonTLSClient("handshake")}
    wrk_client = HTTPSWrkClient(wrk) if wrk else None

    def one_round(kind: str, server: _harness.Server):
        if kind in ("echo", "handshake"):
            return _load.run_round(clients[kind], server, CONNS, SIZE, warmup, duration)
        return _http_load.run_round(wrk_client, server, PATHS[server.name], CONNS, warmup,
                                    duration, kind == "wrk-close")

    with contextlib.ExitStack() as stack:
        for server in servers.values():
            stack.enter_context(server)
        checks = {name: check_https(s, PATHS[name]) if name in PATHS else check_echo(s)
                  for name, s in servers.items()}
        for name, server in servers.items():          # a new process runs slowly at first
            kind = "wrk" if name in PATHS and wrk_client else "echo"
            if name in PATHS and not wrk_client:
                continue
            result = one_round(kind, server)
            log.info("primed %s: %.0f/s (not counted)", name, result.rate)
        if not args.json:
            print(f"TLS over 127.0.0.1 (TLS 1.3, ECDSA P-256, tests/certs); {pinning}")
            print(f"  clients: echo and handshake: {clients['echo'].name.split(' (')[0]} "
                  f"(epoll, ssl); HTTPS: {wrk_client.name if wrk_client else 'wrk not installed'}")
            for name, server in servers.items():
                print(f"  {name + ':':<14} {' '.join(['python'] + server.argv[1:-4])}  ({checks[name]})")
            print(f"  {rounds} rounds per server and case, {duration:g} s each, alternating; "
                  "medians; us/op = server CPU per round trip, request or handshake; "
                  "busy = server CPU / wall, and the client's")
            print(f"{'case':<24} {'server':<13} {'per s':>10} {'us/op':>8} {'busy srv/cli':>13} "
                  f"{'errors':>7}")
            sys.stdout.flush()
        worst = 0.0
        for case in cases:
            label, kind, names, ratio_pairs = CASES[case]
            group = [servers[n] for n in names]
            results = _load.alternate(group, rounds, args.retries, case,
                                      lambda server: one_round(kind, server))
            summary = {name: summarize(rs) for name, rs in results.items()}
            ratios = {f"{a}/{b}": (summary[a]["rate"] / summary[b]["rate"]
                                   if summary[a]["rate"] and summary[b]["rate"] else None)
                      for a, b in ratio_pairs}
            cpu_ratios = {f"{a}/{b}": (summary[b]["cpu_us_per_op"] / summary[a]["cpu_us_per_op"]
                                       if summary[a]["cpu_us_per_op"] and summary[b]["cpu_us_per_op"]
                                       else None)
                          for a, b in ratio_pairs}
            others = max((r.other_load for rs in results.values() for r in rs
                          if r.other_load is not None), default=None)
            worst = max(worst, others or 0.0)
            if args.json:
                print(json.dumps({"benchmark": "tls", "case": case, "label": label, "conns": CONNS,
                                  "size": SIZE if kind in ("echo", "handshake") else None,
                                  "client": (clients[kind].name if kind in clients
                                             else wrk_client.name),
                                  "pinning": pinning, "ratios": ratios,
                                  "cpu_ratios": cpu_ratios, "other_load_max": others,
                                  "servers": summary}), flush=True)
                continue
            for k, server in enumerate(group):
                s = summary[server.name]
                mark = f" !{s['disturbed_rounds']}/{len(s['rounds'])}" if s["disturbed_rounds"] else ""
                print(f"{label if k == 0 else '':<24} {server.name:<13} {fmt(s['rate']):>10} "
                      f"{fmt(s['cpu_us_per_op'], '.1f'):>8} "
                      f"{percent(s['server_busy']) + '/' + percent(s['client_busy']):>13} "
                      f"{s['errors']:>7}{mark}")
            print(f"{'':<24} " + "   ".join(
                f"{name} {fmt(value, '.2f')}x (CPU/op {fmt(cpu_ratios[name], '.2f')}x)"
                for name, value in ratios.items()), flush=True)
            client_busy = max((s["client_busy"] or 0.0) for s in summary.values())
            if client_busy > 0.9:
                print(f"{'':<24} the client ran at {client_busy:.0%} of its CPU: the rates are "
                      "its limit, us/op compares the servers", flush=True)
        if not args.json:
            for case in skipped:
                print(f"{CASES[case][0]:<24} skipped: wrk is not installed")
            if worst > _load.DISTURBED:
                print(_load.disturbance_note(args.retries, worst))
    return 0


if __name__ == "__main__":
    sys.exit(_load.run_cli(main))
