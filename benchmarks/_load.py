# Load clients: ping-pong echo over N connections, and idle connections held open.
#
# The client must cost as little as it can, or it and not the server is what gets measured: on a
# 2-core machine it has one core to itself. So the Python client is a single process, drives
# non-blocking TCP_NODELAY sockets from `select.epoll` directly (no selectors layer, no
# callbacks), receives with `recv_into` into buffers allocated before the clock starts, and
# compares bytes with one `==` (a memcmp). Measured on 2 cores, it keeps up with a Python server
# for small messages (~190k round trips/s with the client 90% busy) but saturates first with
# 100 KiB ones (~37k/s against ~47k/s). So when a C compiler is on PATH the same protocol in C
# (echo_client.c, compiled once into a cache directory) is used instead; the Python client stays
# as the fallback that always works. Both verify every echoed byte: each connection alternates
# between two distinct random messages, so a stale, short or crossed echo is caught.
#
# A round is warm-up, a measured window, then a drain in which nothing new is sent and the
# echoes in flight are awaited, so connections close cleanly. The server's CPU time is read at
# the two edges of the window, by whichever client runs it.
"""Ping-pong echo load (Python or C) and idle connections for the benchmarks."""
import dataclasses
import errno
import hashlib
import json
import logging
import os
import resource
import select
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._harness import CLK_TCK, cpu_ticks, run_delay

log = logging.getLogger(__name__)

MAX_ROUND_TRIPS = 50_000_000   # count bound on one measured window
MAX_POLLS = 100_000_000        # count bound on one round's loop turns
DRAIN_TIMEOUT = 5.0            # seconds to wait for the echoes in flight after the window
CONNECT_TIMEOUT = 5.0
DISTURBED = 0.05               # a round is disturbed when a side waited > 5% of it for a CPU
C_SOURCE = Path(__file__).with_name("echo_client.c")

# Event bits as epoll numbers them; the selectors fallback maps its own onto these.
IN, OUT, ERR, HUP = 0x001, 0x004, 0x008, 0x010


class EchoError(Exception):
    """The server echoed something other than what was sent, or hung up mid-round."""


@dataclasses.dataclass
class RoundResult:
    """Round trips completed in one measured window and the server CPU it cost."""
    round_trips: int
    elapsed: float
    server_cpu: float | None     # seconds of server user+system time in the window, if known
    client_busy: float | None = None   # client CPU / wall time over the whole round (0..1)
    client_delay: float | None = None  # seconds the client was runnable but waiting for its CPU
    other_load: float | None = None    # max share of the round server or client waited for a CPU
    idle_held: int = 0                 # idle connections held open to the server meanwhile

    @property
    def disturbed(self) -> bool:
        """Whether server or client waited for a CPU long enough to spoil this round."""
        return (self.other_load or 0.0) > DISTURBED

    @property
    def rate(self) -> float:
        """Round trips per second."""
        return self.round_trips / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_us_per_rt(self) -> float | None:
        """Server CPU microseconds per round trip, if known."""
        if self.server_cpu is None or self.round_trips == 0:
            return None
        return self.server_cpu * 1e6 / self.round_trips


class _EpollPoller:
    def __init__(self, size: int):
        self._ep = select.epoll(size)
        self.register, self.modify, self.close = self._ep.register, self._ep.modify, self._ep.close

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._ep.poll(timeout)


class _SelectorPoller:
    # For systems without epoll; slower, but the same loop runs on it.
    def __init__(self, size: int):
        self._sel = selectors.DefaultSelector()

    @staticmethod
    def _events(mask: int) -> int:
        return (selectors.EVENT_READ if mask & IN else 0) | (selectors.EVENT_WRITE if mask & OUT else 0)

    def register(self, fd: int, mask: int) -> None:
        self._sel.register(fd, self._events(mask))

    def modify(self, fd: int, mask: int) -> None:
        self._sel.modify(fd, self._events(mask))

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return [(key.fd, (IN if ev & selectors.EVENT_READ else 0)
                 | (OUT if ev & selectors.EVENT_WRITE else 0)) for key, ev in self._sel.select(timeout)]

    def close(self) -> None:
        self._sel.close()


_Poller = _EpollPoller if hasattr(select, "epoll") else _SelectorPoller


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def pingpong_python(host: str, port: int, conns: int, size: int, warmup: float, duration: float,
                    server_pid: int | None = None,
                    max_round_trips: int = MAX_ROUND_TRIPS) -> RoundResult:
    """Run one ping-pong round from this process and return what the window measured."""
    socks = []
    try:
        for _ in range(conns):
            socks.append(_connect(host, port))
        return _pingpong(socks, size, warmup, duration, server_pid, max_round_trips)
    finally:
        for sock in socks:
            sock.close()


def _pingpong(socks, size, warmup, duration, server_pid, max_round_trips) -> RoundResult:
    # The hot loop: locals only, lists indexed by connection, one poll per turn.
    n = len(socks)
    pool = os.urandom(size + 2 * n)
    expect = [(pool[i:i + size], pool[n + i:n + i + size]) for i in range(n)]
    bufs = [bytearray(size) for _ in range(n)]
    views = [memoryview(b) for b in bufs]
    got, parity, pending = [0] * n, [0] * n, [None] * n
    fds = [s.fileno() for s in socks]
    index = {fd: i for i, fd in enumerate(fds)}
    recv_into = [s.recv_into for s in socks]
    send = [s.send for s in socks]
    poller = _Poller(n)
    monotonic, probe = time.monotonic, (lambda: cpu_ticks(server_pid) if server_pid else None)
    in_mask, out_mask, readable = IN, IN | OUT, IN | ERR | HUP

    def start_send(i: int) -> None:
        msg = expect[i][parity[i]]
        try:
            sent = send[i](msg)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < size:
            pending[i] = memoryview(msg)[sent:]
            poller.modify(fds[i], out_mask)

    try:
        for fd in fds:
            poller.register(fd, in_mask)
        for i in range(n):
            start_send(i)
        phase, count, inflight = 0, 0, n          # phases: 0 warm-up, 1 measured, 2 drain
        begin = monotonic()
        boundary, t0, t1, ticks0, ticks1, measured = begin + warmup, begin, begin, None, None, 0
        for _ in range(MAX_POLLS):
            now = monotonic()
            if phase == 1 and count >= max_round_trips:
                boundary = now
            if now >= boundary:
                if phase == 0:
                    phase, t0, ticks0, count, boundary = 1, now, probe(), 0, now + duration
                elif phase == 1:
                    phase, t1, ticks1, measured, boundary = 2, now, probe(), count, now + DRAIN_TIMEOUT
                else:
                    raise EchoError(f"{inflight} echoes still in flight after {DRAIN_TIMEOUT:.0f} s")
            if phase == 2 and inflight == 0:
                break
            for fd, ev in poller.poll(max(0.0, boundary - now)):
                i = index[fd]
                if ev & OUT:
                    rest = pending[i]
                    try:
                        sent = send[i](rest)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    if sent < len(rest):
                        pending[i] = rest[sent:]
                    else:
                        pending[i] = None
                        poller.modify(fd, in_mask)
                if not ev & readable:
                    continue
                g = got[i]
                try:
                    k = recv_into[i](views[i][g:] if g else views[i])
                except (BlockingIOError, InterruptedError):
                    continue
                if k == 0:
                    raise EchoError("server closed a connection mid-round")
                g += k
                if g < size:
                    got[i] = g
                    continue
                got[i] = 0
                if bufs[i] != expect[i][parity[i]]:
                    raise EchoError("echo differs from what was sent")
                count += 1
                if phase == 2:
                    inflight -= 1
                    continue
                parity[i] ^= 1
                start_send(i)
        else:
            raise EchoError(f"round gave up after {MAX_POLLS} polls")
    finally:
        poller.close()
    cpu = None if ticks0 is None or ticks1 is None else (ticks1 - ticks0) / CLK_TCK
    return RoundResult(measured, t1 - t0, cpu)


class PythonClient:
    """The always-available load client: this process, epoll (or selectors), recv_into."""

    def __init__(self):
        self.name = f"python ({'epoll' if _Poller is _EpollPoller else 'selectors'}, in-process)"

    def run(self, host: str, port: int, conns: int, size: int, warmup: float, duration: float,
            server_pid: int | None = None) -> RoundResult:
        """Run one ping-pong round."""
        wall, cpu, delay = time.monotonic(), time.process_time(), run_delay()
        result = pingpong_python(host, port, conns, size, warmup, duration, server_pid)
        result.client_busy = (time.process_time() - cpu) / max(1e-9, time.monotonic() - wall)
        if delay is not None:
            result.client_delay = run_delay() - delay
        return result


class CClient:
    """echo_client.c compiled with the system C compiler, run as a child process."""

    def __init__(self, binary: Path, compiler: str):
        self.binary = binary
        self.name = f"c ({C_SOURCE.name}, {compiler} -O2, child process)"

    def run(self, host: str, port: int, conns: int, size: int, warmup: float, duration: float,
            server_pid: int | None = None) -> RoundResult:
        """Run one ping-pong round in a child process."""
        argv = [str(self.binary), host, str(port), str(conns), str(size), repr(warmup),
                repr(duration), str(MAX_ROUND_TRIPS), str(server_pid or 0)]
        timeout = CONNECT_TIMEOUT + warmup + duration + DRAIN_TIMEOUT + 10
        wall, usage = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy = ((after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
                / max(1e-9, time.monotonic() - wall))
        if done.returncode != 0:
            raise EchoError(f"C client exited with {done.returncode}: {done.stderr.strip()}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        cpu = None if out["cpu_ticks"] < 0 else out["cpu_ticks"] / CLK_TCK
        delay = None if out["run_delay_ns"] < 0 else out["run_delay_ns"] / 1e9
        return RoundResult(out["round_trips"], out["elapsed"], cpu, busy, delay)


def _cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "reactor-benchmarks"
    return Path(tempfile.gettempdir()) / f"reactor-benchmarks-{os.getuid()}"


def compile_c(source: Path) -> tuple[Path, str] | None:
    """Compile a C load client (cached by source hash): (binary, compiler name), or None if
    there is no epoll, no compiler, or the compile fails."""
    if not hasattr(select, "epoll"):
        log.info("no epoll here; the C client needs it")
        return None
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler on PATH")
        return None
    shared = source.with_name("client_common.h")        # included by every C client
    digest = hashlib.sha256(source.read_bytes() + shared.read_bytes()
                            + compiler.encode()).hexdigest()[:16]
    cache = _cache_dir()
    binary = cache / f"{source.stem}-{digest}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{source.stem}-{digest}-{os.getpid()}"
        cmd = [compiler, "-O2", "-Wall", "-o", str(tmp), str(source)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("compiling %s failed: %s", source.name, exc)
            return None
        if done.returncode != 0:
            log.warning("compiling %s failed:\n%s", source.name, done.stderr.strip())
            tmp.unlink(missing_ok=True)
            return None
        os.replace(tmp, binary)
        log.info("compiled %s into %s", source.name, binary)
    return binary, os.path.basename(compiler)


def build_c_client() -> CClient | None:
    """The compiled echo_client.c, or None."""
    built = compile_c(C_SOURCE)
    return CClient(*built) if built else None


def make_client(kind: str = "auto") -> PythonClient | CClient:
    """The load client asked for: 'c', 'python', or 'auto' (C if it compiles, else Python)."""
    if kind in ("auto", "c"):
        client = build_c_client()
        if client is not None:
            return client
        if kind == "c":
            raise SystemExit("--client c: the C client could not be built (see the log)")
        log.info("falling back to the Python client")
    return PythonClient()


def open_idle(host: str, port: int, count: int, batch: int = 256,
              timeout: float = 60.0) -> list[socket.socket]:
    """Open up to count idle connections in batches of non-blocking connects; return the connected."""
    # Batches stay well under the listen backlog, so no SYN is dropped and retried a second later.
    socks: list[socket.socket] = []
    failures, deadline = 0, time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for _ in range(count // max(1, batch) + 1 + count):     # each turn connects >= 1 or fails
            if len(socks) >= count or failures > count // 10 + 10 or time.monotonic() >= deadline:
                break
            waiting = 0
            for _ in range(min(batch, count - len(socks))):
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                except OSError as exc:
                    log.warning("cannot create more sockets after %d: %s", len(socks), exc)
                    failures = count + 100
                    break
                sock.setblocking(False)
                err = sock.connect_ex((host, port))
                if err in (0, errno.EINPROGRESS):
                    sel.register(sock, selectors.EVENT_WRITE)
                    waiting += 1
                else:
                    sock.close()
                    failures += 1
            while waiting and (remaining := deadline - time.monotonic()) > 0:
                for key, _ in sel.select(remaining):
                    sock = key.fileobj
                    sel.unregister(sock)
                    waiting -= 1
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        socks.append(sock)
                    else:
                        sock.close()
                        failures += 1
            for key in list(sel.get_map().values()):       # connects the deadline cut short
                sel.unregister(key.fileobj)
                key.fileobj.close()
                failures += 1
    if len(socks) < count:
        log.warning("opened %d of %d idle connections (%d failed)", len(socks), count, failures)
    return socks


def close_idle(socks: list[socket.socket]) -> None:
    """Close idle connections with a reset, so no TIME_WAIT piles up across rounds."""
    linger = struct.pack("ii", 1, 0)
    for sock in socks:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        sock.close()
    socks.clear()


PRIME_SECONDS = 0.5


def run_round(client: "PythonClient | CClient", server, conns: int, size: int, warmup: float,
              duration: float) -> RoundResult:
    """One round against server, noting how long server and client waited for their CPUs."""
    # Other processes on the pinned CPUs (a test suite running beside the benchmark, another
    # guest's steal) would show up as noise in the ratio; run_delay says when they were there.
    delay, wall = run_delay(server.pid), time.monotonic()
    result = client.run(server.host, server.port, conns, size, warmup, duration, server.pid)
    after, wall = run_delay(server.pid), time.monotonic() - wall
    if delay is not None and after is not None and result.client_delay is not None:
        result.other_load = max(after - delay, result.client_delay) / wall
    return result


def usable(rounds: list[RoundResult]) -> list[RoundResult]:
    """The undisturbed rounds, or all of them when every one was disturbed."""
    return [r for r in rounds if not r.disturbed] or rounds


def round_record(r: RoundResult) -> dict:
    """One round as a JSON-ready dict."""
    return {"round_trips": r.round_trips, "elapsed": round(r.elapsed, 6),
            "server_cpu": r.server_cpu, "other_load": r.other_load}


def prime(client: "PythonClient | CClient", servers, conns: int = 10, size: int = 1024,
          seconds: float = PRIME_SECONDS) -> None:
    """Run one unmeasured round against each freshly started server."""
    # Measured here: the first ~0.2 s of load on a new server process runs at a quarter of the
    # steady rate (both ours and asyncio), which would otherwise land in the first case's round.
    for server in servers:
        result = client.run(server.host, server.port, conns, size, 0.0, seconds, server.pid)
        log.info("primed %s: %.0f round trips/s (not counted)", server.name, result.rate)


def alternate(servers, rounds: int, retries: int, label: str,
              one_round) -> dict[str, list[RoundResult]]:
    """Run one_round(server) for each server in turn, rounds times; redo a disturbed turn."""
    # A turn (one round of every server) is redone as a whole, up to retries times, when another
    # process took a pinned CPU during it: both sides then meet the same conditions again.
    results: dict[str, list[RoundResult]] = {s.name: [] for s in servers}
    for r in range(rounds):
        for attempt in range(retries + 1):
            turn = [one_round(server) for server in servers]
            if not any(x.disturbed for x in turn):
                break
            if attempt < retries:
                log.info("%s round %d disturbed: a side waited %.0f%% of it for a CPU; redoing it",
                         label, r + 1, 100 * max(x.other_load or 0.0 for x in turn))
        for server, result in zip(servers, turn):
            results[server.name].append(result)
            log.debug("%s %s round %d: %.0f rt/s, %s us/rt", label, server.name, r + 1, result.rate,
                      "-" if result.cpu_us_per_rt is None else f"{result.cpu_us_per_rt:.1f}")
    return results


def run_cli(main) -> int:
    """Entry point: run main, turning a failed server or a wrong echo into exit status 1."""
    try:
        return main()
    except (EchoError, RuntimeError, OSError) as exc:
        log.error("benchmark failed: %s", exc)
        return 1


def disturbance_note(retries: int, worst: float) -> str:
    """The footnote that explains a table's !N/M marks."""
    return (f"  !N/M: in N of that row's M rounds (after up to {retries} retries) server or "
            f"client waited over {DISTURBED:.0%} of the round (at worst {worst:.0%}) "
            "for a CPU other processes held; medians leave those rounds out unless all of a "
            "server's rounds were disturbed")
