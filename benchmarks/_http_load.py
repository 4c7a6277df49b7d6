# HTTP load clients for benchmarks/http.py: wrk, a C client, or a Python one, same interface.
#
# Each runs one round of GETs on N connections: every connection sends a request, reads the
# whole response and sends the next (keep-alive), or, when the server says it will close (the
# wsgiref peer speaks HTTP/1.0) or the round asks for `Connection: close`, opens a new
# connection for the next request; every complete response counts. The server's CPU time is read
# from /proc around the measured window, as in the echo benchmark.
#
# The clients, best first:
# * wrk, when installed: the standard tool, written in C, with its own HTTP parser. It has no
#   warm-up phase and counts whole seconds, so a round is one `wrk -t 1 -c N -d S` run (S the
#   duration rounded up, at least 1 s); the servers are primed once before the first case. Its
#   "Requests/sec" line is the rate; the server's CPU is read before wrk starts and after it
#   exits. Its threads' CPU waits are sampled from /proc while it runs (for disturbance marks).
# * http_client.c, compiled like echo_client.c when a C compiler is on PATH: epoll, the same
#   warm-up / window / drain rounds as the echo client, parsing the status line, Content-Length
#   and Connection (no chunked responses: no server here sends them).
# * Python, in this process: the same loop on `select.epoll`; it always works, but it is slower
#   than the servers it measures at 10 and 100 connections, so its figures bound the client.
"""Keep-alive or connection-per-request HTTP GET load: wrk, C, or Python."""
import dataclasses
import errno
import glob
import json
import logging
import math
import os
import re
import resource
import shutil
import socket
import subprocess
import time

from benchmarks import _load
from benchmarks._harness import CLK_TCK, cpu_ticks, run_delay

log = logging.getLogger(__name__)

MAX_REQUESTS = 50_000_000       # count bound on one measured window
MAX_POLLS = 100_000_000         # count bound on one round's loop turns
MAX_ERRORS = 100_000            # failed connects, resets and early closes before giving up
DRAIN_TIMEOUT = 5.0             # seconds to wait for the responses in flight after the window
MAX_HEAD = 64 * 1024            # a response head longer than this is a broken server
C_SOURCE = _load.C_SOURCE.with_name("http_client.c")
WRK_TIMEOUT = "5s"              # wrk's per-request timeout (its default of 2 s is below a SYN retry)


class HTTPLoadError(_load.EchoError):
    """The server answered something the client cannot parse, or kept failing."""


@dataclasses.dataclass
class HTTPResult(_load.RoundResult):
    """One round: round_trips counts complete responses in the window."""
    connects: int | None = None     # connections completed in the window (None: not counted)
    errors: int = 0                 # failed connects, resets, early closes, timeouts (whole run)
    non2xx: int = 0                 # responses whose status was not 2xx (3xx too, for wrk)
    unfinished: int = 0             # requests unanswered when the drain timed out


def request_bytes(host: str, port: int, path: str, close: bool) -> bytes:
    """The GET every client sends (wrk sends the same two headers)."""
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode("latin-1")


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_CONNECTION = re.compile(rb"\r\nconnection:[ \t]*([!-~]+)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:", re.I)


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, body length or -1 when the close ends it, keep-alive) of a response head."""
    if not head.startswith(b"HTTP/1.") or len(head) < 12 or head[8:9] != b" ":
        raise HTTPLoadError(f"not an HTTP/1.x response: {head[:40]!r}")
    status = int(head[9:12])
    if _CHUNKED.search(head):
        raise HTTPLoadError("chunked (or other) transfer-encoding is not supported")
    match = _CONTENT_LENGTH.search(head)
    length = int(match[1]) if match else -1
    if status in (204, 304) or 100 <= status < 200:
        length = 0
    match = _CONNECTION.search(head)
    token = match[1].lower() if match else b""
    keep_alive = token == b"keep-alive" if head[7:8] == b"0" else token != b"close"
    return status, length, keep_alive and length >= 0


def http_python(host: str, port: int, path: str, conns: int, warmup: float, duration: float,
                server_pid: int | None, close: bool,
                max_requests: int = MAX_REQUESTS) -> HTTPResult:
    """One round of GETs from this process over epoll; reconnects as the C client does."""
    request = request_bytes(host, port, path, close)
    addr = (host, port)
    poller = _load._Poller(conns)
    IN, OUT = _load.IN, _load.OUT
    socks: list[socket.socket | None] = [None] * conns
    connecting = [False] * conns
    waiting = [False] * conns       # a request is out and unanswered
    bufs = [b""] * conns
    body_end = [0] * conns          # index in the buffer where the response ends; 0: head not seen
    keep = [True] * conns
    slot: dict[int, int] = {}       # fd -> connection index
    stats = {"errors": 0, "non2xx": 0, "connects": 0}
    monotonic = time.monotonic
    probe = (lambda: cpu_ticks(server_pid)) if server_pid else (lambda: None)

    def drop(i: int) -> None:
        sock = socks[i]
        if sock is not None:
            slot.pop(sock.fileno(), None)
            sock.close()            # also leaves the epoll set
        socks[i] = None
        waiting[i] = connecting[i] = False

    def failed(i: int, again: bool) -> None:
        stats["errors"] += 1
        if stats["errors"] > MAX_ERRORS:
            raise HTTPLoadError(f"giving up after {MAX_ERRORS} failed connects or early closes")
        drop(i)
        if again:
            connect(i)

    def connect(i: int) -> None:
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks[i], connecting[i], waiting[i] = sock, True, False
            fd = sock.fileno()
            slot[fd] = i
            poller.register(fd, OUT)
            if sock.connect_ex(addr) in (0, errno.EINPROGRESS):
                return                # EPOLLOUT reports the outcome either way
            failed(i, False)

    def send_request(i: int) -> bool:
        bufs[i], body_end[i], waiting[i] = b"", 0, True
        try:
            sent = socks[i].send(request)
        except OSError:
            return False
        if sent != len(request):             # under 100 bytes into an empty socket buffer
            raise HTTPLoadError(f"short send of a {len(request)}-byte request: {sent}")
        return True

    for i in range(conns):
        connect(i)
    phase, count, connects_at = 0, 0, 0       # phases: 0 warm-up, 1 measured, 2 drain
    begin = monotonic()
    boundary, t0, t1, ticks0, ticks1, measured, measured_connects = begin + warmup, begin, begin, \
        None, None, 0, 0
    unfinished = 0
    try:
        for _ in range(MAX_POLLS):
            now = monotonic()
            if phase == 1 and count >= max_requests:
                boundary = now
            if now >= boundary:
                if phase == 0:
                    phase, t0, ticks0, count, boundary = 1, now, probe(), 0, now + duration
                    connects_at = stats["connects"]
                elif phase == 1:
                    phase, t1, ticks1, measured, boundary = 2, now, probe(), count, now + DRAIN_TIMEOUT
                    measured_connects = stats["connects"] - connects_at
                    for i in range(conns):
                        if socks[i] is not None and not waiting[i]:
                            drop(i)
                else:
                    unfinished = sum(waiting)
                    break
            if phase == 2 and not slot:
                break
            for fd, ev in poller.poll(max(0.0, boundary - now)):
                i = slot.get(fd)
                if i is None:
                    continue                  # closed earlier in this batch
                sock = socks[i]
                if connecting[i]:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        failed(i, phase != 2)
                        continue
                    if not ev & OUT:
                        continue
                    connecting[i] = False
                    stats["connects"] += 1
                    if phase == 2:
                        drop(i)
                        continue
                    poller.modify(fd, IN)
                    if not send_request(i):
                        failed(i, True)
                    continue
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = None               # reset
                if not data:
                    if data is not None and waiting[i] and body_end[i] < 0:
                        done = True           # a body delimited by the close
                    else:
                        failed(i, phase != 2)
                        continue
                else:
                    buf = bufs[i] + data if bufs[i] else data
                    end = body_end[i]
                    if end == 0:
                        head_end = buf.find(b"\r\n\r\n")
                        if head_end < 0:
                            if len(buf) > MAX_HEAD:
                                raise HTTPLoadError(f"response head over {MAX_HEAD} bytes")
                            bufs[i] = buf
                            continue
                        status, length, keep[i] = parse_head(buf[:head_end])
                        if not 200 <= status < 300:
                            stats["non2xx"] += 1
                        end = body_end[i] = -1 if length < 0 else head_end + 4 + length
                    if end < 0 or len(buf) < end:
                        bufs[i] = b"" if end < 0 else buf
                        continue
                    if len(buf) > end:
                        raise HTTPLoadError("bytes after the response (none was pipelined)")
                    done = True
                if done:
                    count += 1
                    waiting[i] = False
                    if not keep[i] or close or not data:
                        drop(i)
                        if phase != 2:
                            connect(i)
                    elif phase == 2:
                        drop(i)
                    elif not send_request(i):
                        failed(i, True)
        else:
            raise HTTPLoadError(f"round gave up after {MAX_POLLS} polls")
    finally:
        for i in range(conns):
            drop(i)
        poller.close()
    cpu = None if ticks0 is None or ticks1 is None else (ticks1 - ticks0) / CLK_TCK
    return HTTPResult(measured, t1 - t0, cpu, connects=measured_connects, errors=stats["errors"],
                      non2xx=stats["non2xx"], unfinished=unfinished)


class PythonHTTPClient:
    """The always-available client: this process, epoll (or selectors)."""

    def __init__(self):
        self.name = f"python ({'epoll' if _load._Poller is _load._EpollPoller else 'selectors'}, " \
                    "in-process)"

    def run(self, host: str, port: int, path: str, conns: int, warmup: float, duration: float,
            server_pid: int | None = None, close: bool = False) -> HTTPResult:
        """Run one round."""
        wall, cpu, delay = time.monotonic(), time.process_time(), run_delay()
        result = http_python(host, port, path, conns, warmup, duration, server_pid, close)
        result.client_busy = (time.process_time() - cpu) / max(1e-9, time.monotonic() - wall)
        if delay is not None:
            result.client_delay = run_delay() - delay
        return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CHTTPClient:
    """http_client.c compiled with the system C compiler, run as a child process."""

    def __init__(self, binary, compiler: str):
        self.binary = binary
        self.name = f"c ({C_SOURCE.name}, {compiler} -O2, child process)"

    def run(self, host: str, port: int, path: str, conns: int, warmup: float, duration: float,
            server_pid: int | None = None, close: bool = False) -> HTTPResult:
        """Run one round in a child process."""
        argv = [str(self.binary), host, str(port), str(conns), repr(warmup), repr(duration),
                str(MAX_REQUESTS), str(server_pid or 0), "1" if close else "0", path]
        timeout = warmup + duration + DRAIN_TIMEOUT + 30
        wall, cpu = time.monotonic(), _children_cpu()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        busy = (_children_cpu() - cpu) / max(1e-9, time.monotonic() - wall)
        if done.returncode != 0:
            raise HTTPLoadError(f"C client exited with {done.returncode}: {done.stderr.strip()}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        cpu_s = None if out["cpu_ticks"] < 0 else out["cpu_ticks"] / CLK_TCK
        delay = None if out["run_delay_ns"] < 0 else out["run_delay_ns"] / 1e9
        return HTTPResult(out["requests"], out["elapsed"], cpu_s, busy, delay,
                          connects=out["connects"], errors=out["errors"], non2xx=out["non2xx"],
                          unfinished=out["unfinished"])


_WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.M)
_WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wrk(text: str) -> tuple[int, float, float, int, int]:
    """(requests, seconds, requests/s, socket errors, non-2xx/3xx) from wrk's report."""
    count, rate = _WRK_REQUESTS.search(text), _WRK_RATE.search(text)
    if not count or not rate:
        raise HTTPLoadError(f"no 'requests in' / 'Requests/sec' line in wrk's output:\n{text}")
    errors = _WRK_SOCKET.search(text)
    non2xx = _WRK_NON2XX.search(text)
    return (int(count[1]), float(count[2]) * _UNITS[count[3]], float(rate[1]),
            sum(map(int, errors.groups())) if errors else 0, int(non2xx[1]) if non2xx else 0)


def _threads_delay(pid: int) -> dict[str, int]:
    # Run delay (ns) per thread of a live process; a thread that has exited is no longer listed.
    delays = {}
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                delays[path] = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return delays


class WrkClient:
    """wrk -t 1, one run per round; no warm-up of its own (see the module comment)."""

    def __init__(self, binary: str):
        self.binary = binary
        try:
            version = subprocess.run([binary, "-v"], capture_output=True, text=True,
                                     timeout=10).stdout.split("[")[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            version = "wrk"
        self.name = f"wrk ({version or 'wrk'}, -t 1, child process)"

    def run(self, host: str, port: int, path: str, conns: int, warmup: float, duration: float,
            server_pid: int | None = None, close: bool = False) -> HTTPResult:
        """Run wrk for the duration rounded up to whole seconds."""
        seconds = max(1, math.ceil(duration - 1e-9))
        argv = [self.binary, "-t", "1", "-c", str(conns), "-d", f"{seconds}s",
                "--timeout", WRK_TIMEOUT, f"http://{host}:{port}{path}"]
        if close:
            argv[1:1] = ["-H", "Connection: close"]
        wall, cpu = time.monotonic(), _children_cpu()
        ticks0 = cpu_ticks(server_pid) if server_pid else None
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        delays: dict[str, int] = {}
        deadline = wall + seconds + DRAIN_TIMEOUT + 30
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise HTTPLoadError(f"wrk still running {deadline - wall:.0f} s after start")
                delays.update(_threads_delay(proc.pid))
                time.sleep(0.05)
            out, err = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ticks1 = cpu_ticks(server_pid) if server_pid else None
        busy = (_children_cpu() - cpu) / max(1e-9, time.monotonic() - wall)
        if proc.returncode != 0:
            raise HTTPLoadError(f"wrk exited with {proc.returncode}: {(err or out).strip()}")
        requests, elapsed, rate, errors, non2xx = parse_wrk(out)
        server_cpu = None if ticks0 is None or ticks1 is None else (ticks1 - ticks0) / CLK_TCK
        # Keep wrk's own figure: rate * elapsed == requests, within its rounding.
        elapsed = requests / rate if rate > 0 else elapsed
        return HTTPResult(requests, elapsed, server_cpu, busy,
                          sum(delays.values()) / 1e9 if delays else None,
                          connects=requests if close else None, errors=errors, non2xx=non2xx)


def build_c_client() -> CHTTPClient | None:
    """The compiled http_client.c, or None."""
    built = _load.compile_c(C_SOURCE)
    return CHTTPClient(*built) if built else None


def make_client(kind: str = "auto") -> WrkClient | CHTTPClient | PythonHTTPClient:
    """The client asked for: 'wrk', 'c', 'python', or 'auto' (wrk, else C, else Python)."""
    if kind in ("auto", "wrk"):
        wrk = shutil.which("wrk")
        if wrk:
            return WrkClient(wrk)
        if kind == "wrk":
            raise SystemExit("--client wrk: wrk is not on PATH (apt-get install wrk)")
        log.info("wrk is not installed; trying the C client")
    if kind in ("auto", "c"):
        client = build_c_client()
        if client is not None:
            return client
        if kind == "c":
            raise SystemExit("--client c: the C client could not be built (see the log)")
        log.info("falling back to the Python client")
    return PythonHTTPClient()


def run_round(client, server, path: str, conns: int, warmup: float, duration: float,
              close: bool) -> HTTPResult:
    """One round against server, noting how long server and client waited for their CPUs."""
    delay, wall = run_delay(server.pid), time.monotonic()
    result = client.run(server.host, server.port, path, conns, warmup, duration, server.pid, close)
    after, wall = run_delay(server.pid), time.monotonic() - wall
    if delay is not None and after is not None and result.client_delay is not None:
        result.other_load = max(after - delay, result.client_delay) / wall
    return result
