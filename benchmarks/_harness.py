# What every benchmark shares: the servers under test as subprocesses, and the machine set up so
# that ours and asyncio meet the same conditions.
#
# A server runs in its own process (`sys.executable -m ...`, cwd the repository root), so that it
# owns its interpreter, its GIL and its core; the harness only reads its `listening` line, reads
# its CPU time and open descriptors from /proc around each measured round, and stops it with
# SIGTERM. The server is pinned to one CPU and the client (this process, and any load process it
# starts, which inherit its affinity) to another, so that on a 2-core machine neither steals the
# other's core. Descriptor limits are raised here because the scaling benchmark holds 10,000
# connections on each side. Only the result tables are printed; everything else is logged.
"""Start, measure and stop benchmark servers; pin CPUs; raise descriptor limits."""
import argparse
import logging
import os
import re
import resource
import selectors
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0        # seconds for a server to print its listening line
STOP_TIMEOUT = 10.0         # seconds for a server to exit after SIGTERM before it is killed
MAX_BANNER = 64 * 1024      # bytes of stdout read while looking for the listening line
_LISTENING = re.compile(rb"^listening (?:tcp|http)://(?P<host>[^\s]+):(?P<port>\d+)(?:\s.*)?$")


def median(values: list[float]) -> float | None:
    """Median of values, or None when there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr, so stdout carries only the result tables."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def raise_nofile(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards needed; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("the system forbids raising RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
        return soft
    if target < needed:
        log.warning("RLIMIT_NOFILE hard limit is %d, below the %d descriptors wanted", hard, needed)
    return target


def plan_cpus() -> tuple[int | None, int | None, str]:
    """Choose (server CPU, client CPU, description); None when there are too few CPUs to pin."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None, "not pinned (no sched_setaffinity)"
    if (os.cpu_count() or 1) < 2 or len(cpus) < 2:
        return None, None, f"not pinned (only CPUs {cpus} available)"
    return cpus[0], cpus[1], f"server pinned to CPU {cpus[0]}, client to CPU {cpus[1]}"


def pin_self(cpu: int | None) -> None:
    """Pin this process (and the children it starts later) to one CPU."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


CLK_TCK = _clock_ticks()


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of pid in clock ticks from /proc/PID/stat, or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()   # fields from 3 (state) on; comm may hold spaces
    return int(fields[11]) + int(fields[12])          # fields 14 (utime) and 15 (stime)


def fd_count(pid: int) -> int | None:
    """Number of descriptors pid has open, or None without /proc."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def nofile_limit(pid: int) -> int | None:
    """Soft RLIMIT_NOFILE of pid from /proc/PID/limits, or None."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    value = line.split()[3]
                    return None if value == "unlimited" else int(value)
    except (OSError, ValueError, IndexError):
        pass
    return None


def module_argv(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def command_argv(command: str) -> list[str]:
    """argv from a shell-like command string; a leading `python` means this interpreter."""
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


class Server:
    """One server under test, running as a subprocess of the harness."""

    def __init__(self, name: str, argv: list[str], cpu: int | None = None, nofile: int = 1024):
        self.name, self.argv, self.cpu, self.nofile = name, argv, cpu, nofile
        self.proc: subprocess.Popen | None = None
        self.host, self.port = "127.0.0.1", 0

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        return self.proc.pid

    def _preexec(self) -> None:
        # Runs in the child between fork and exec: no logging here, failures are checked after.
        if self.cpu is not None:
            try:
                os.sched_setaffinity(0, {self.cpu})
            except OSError:
                pass
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            target = self.nofile if hard == resource.RLIM_INFINITY else min(self.nofile, hard)
            if target > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass

    def start(self) -> "Server":
        """Start the server and wait for its listening line."""
        log.info("starting %s: %s", self.name, shlex.join(self.argv))
        self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, preexec_fn=self._preexec)
        try:
            self.host, self.port = self._read_listening(START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        limit = nofile_limit(self.pid)
        if limit is not None and limit < self.nofile:
            log.warning("%s may open only %d descriptors (wanted %d)", self.name, limit, self.nofile)
        if self.cpu is not None:
            try:
                actual = os.sched_getaffinity(self.pid)
            except OSError:
                actual = None
            if actual != {self.cpu}:
                log.warning("%s could not be pinned to CPU %d (affinity %s)", self.name, self.cpu, actual)
        log.info("%s (pid %d) listening on %s:%d", self.name, self.pid, self.host, self.port)
        return self

    def _read_listening(self, timeout: float) -> tuple[str, int]:
        # Read stdout until a `listening tcp://HOST:PORT` (or http://) line, with a deadline.
        # Nothing reads stdout afterwards; a server may log to stderr (inherited) but should
        # print no more.
        deadline = time.monotonic() + timeout
        fd, buf = self.proc.stdout.fileno(), b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(buf) < MAX_BANNER:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"{self.name} printed no listening line in {timeout:.0f} s")
                if not sel.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait(timeout=STOP_TIMEOUT)
                    raise RuntimeError(f"{self.name} exited with {code} before listening")
                buf += chunk
                for line in buf.splitlines():
                    match = _LISTENING.match(line.strip())
                    if match:
                        return match["host"].decode(), int(match["port"])
        raise RuntimeError(f"{self.name} printed {MAX_BANNER} bytes but no listening line")

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server has used so far, or None without /proc."""
        ticks = cpu_ticks(self.pid)
        return None if ticks is None else ticks / CLK_TCK

    def fd_count(self) -> int | None:
        """Descriptors the server has open, or None without /proc."""
        return fd_count(self.pid)

    def wait_fds(self, predicate, timeout: float) -> int | None:
        """Poll the server's descriptor count until predicate(count) holds or timeout; return it."""
        deadline = time.monotonic() + timeout
        count = self.fd_count()
        while count is not None and not predicate(count) and time.monotonic() < deadline:
            time.sleep(0.02)
            count = self.fd_count()
        return count

    def stop(self) -> int | None:
        """Send SIGTERM, wait, kill this one process if it lingers; return its exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        try:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it",
                        self.name, self.pid, STOP_TIMEOUT)
            self.proc.kill()
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        finally:
            self.proc.stdout.close()
        if code != 0:
            log.warning("%s exited with %s after SIGTERM (expected 0)", self.name, code)
        return code

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# The command-line surface echo.py and scaling.py share.
HOST = "127.0.0.1"
OURS_MODULE = "apps.echo"
PEER_ARGV = module_argv("benchmarks._peers", "echo")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the options every echo-style benchmark takes."""
    parser.add_argument("--rounds", type=int, help="measured rounds per server and case")
    parser.add_argument("--duration", type=float, help="seconds in each measured window")
    parser.add_argument("--warmup", type=float, help="seconds of load before each window")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--retries", type=int, default=2,
                        help="times to redo a round that other processes disturbed (default 2)")
    parser.add_argument("--client", choices=["auto", "c", "python"], default="auto",
                        help="load client: C if it compiles (auto), or always C / Python")
    parser.add_argument("--ours-cmd", metavar="CMD",
                        help=f"command for the 'ours' server instead of `python -m {OURS_MODULE}`; "
                             "`--host 127.0.0.1 --port 0` is appended")
    parser.add_argument("--json", action="store_true", help="print one JSON line per case, no table")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every round")


def timing(args: argparse.Namespace, rounds: tuple[int, int], duration: tuple[float, float],
           warmup: tuple[float, float]) -> tuple[int, float, float]:
    """(rounds, duration, warmup) from the options, each default given as (normal, quick)."""
    pick = 1 if args.quick else 0
    chosen = (args.rounds or rounds[pick],
              args.duration or duration[pick],
              warmup[pick] if args.warmup is None else args.warmup)
    if chosen[0] < 1 or chosen[1] <= 0 or chosen[2] < 0 or args.retries < 0:
        raise SystemExit("--rounds must be >= 1, --duration > 0, --warmup >= 0, --retries >= 0")
    return chosen


def echo_servers(args: argparse.Namespace, cpu: int | None, nofile: int) -> list[Server]:
    """The two servers compared, ours first and the asyncio peer second (not yet started)."""
    tail = ["--host", HOST, "--port", "0"]
    if args.ours_cmd:
        ours = command_argv(args.ours_cmd) + tail
    else:
        if not (REPO_ROOT / Path(*OURS_MODULE.split("."))).with_suffix(".py").exists():
            raise SystemExit(f"{OURS_MODULE} does not exist yet; try "
                             "--ours-cmd 'python -m benchmarks._peers echo' to try the harness")
        ours = module_argv(OURS_MODULE, *tail)
    return [Server("ours", ours, cpu, nofile), Server("asyncio", PEER_ARGV + tail, cpu, nofile)]


def fmt(value: float | None, spec: str = ",.0f") -> str:
    """A number for a table cell, '-' when unknown."""
    return "-" if value is None else format(value, spec)



def run_delay(pid: int | str = "self") -> float | None:
    """Seconds pid has spent runnable but waiting for a CPU (/proc/PID/schedstat), or None."""
    # The cleanest sign that another process shared a pinned CPU: a ping-pong server or client
    # that wakes on an idle CPU waits ~0.3% of the time; one that shares it waits 20-50%.
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None
