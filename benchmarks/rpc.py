# Calling code in another process (recipes 11.6-11.8): each of our services against the
# recipe's own server, same client, same run, alternating rounds, medians.
#
#   xmlrpc   one xmlrpc.client.ServerProxy calling set/get alternately:
#            apps.kvstore vs the recipe's SimpleXMLRPCServer KeyValueServer
#   mp1/50   multiprocessing.connection echo of a 100-byte object, Client.send / Client.recv,
#            from 1 and from 50 concurrent stdlib Clients: apps.mpecho vs the recipe's
#            Listener loop (which serves one client at a time)
#   rpc1/50  add(i, 1) through the recipe's own client (Client + RPCProxy, pickle), 1 and 50
#            clients: apps.rpc --codec pickle vs the recipe's RPCHandler (a thread per client)
#
# The clients are the standard library's, so they run in worker processes of their own (this
# module with --worker), 25 client threads each (measured on 2 cores: 50 clients as 2 x 25
# threads reach about twice the calls/s of 5 x 10 or 50 x 1 processes), pinned with this process to the client CPU
# while the servers are pinned to the other (benchmarks._harness). A round: the workers connect
# their clients, staggered by a few milliseconds because the recipe's Listener has a backlog of
# 1 and a burst of connects would lose SYNs to it; a client that cannot connect within a
# second of the last attempt (every client but one against the one-at-a-time recipe server)
# waits and counts nothing. Then all start together on the parent's signal: warm-up, a measured
# window whose edges the parent also uses to read the server's CPU time, and the end. A round in
# which the server waited for its CPU (another process on it) is redone, as in the echo
# benchmark.
"""Benchmark XML-RPC, multiprocessing.connection messaging and RPC: ours vs the recipes."""
import argparse
import contextlib
import fnmatch
import json
import logging
import os
import pickle
import select
import subprocess
import sys
import threading
import time

from benchmarks import _harness, _load
from benchmarks._harness import fmt, median

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
AUTHKEY = "peekaboo"
THREADS_PER_WORKER = int(os.environ.get("RPC_BENCH_THREADS", "25"))
STAGGER = 0.005             # seconds between two clients' connects
CONNECT_GRACE = 1.0         # seconds after the last connect attempt before a round starts anyway
READY_TIMEOUT = 30.0
PAYLOAD = b"x" * 100

# case id -> (kind, clients, label, target ratio)
CASES = {
    "xmlrpc": ("xmlrpc", 1, "XML-RPC set/get x 1", 1.5),
    "mp1": ("mp", 1, "mp echo 100 B x 1", 1.0),
    "mp50": ("mp", 50, "mp echo 100 B x 50", 5.0),
    "rpc1": ("rpc", 1, "RPC add x 1", 1.0),
    "rpc50": ("rpc", 50, "RPC add x 50", 5.0),
}
# kind -> ((ours name, argv after the interpreter), (recipe name, argv))
SERVERS = {
    "xmlrpc": (("ours", ["-m", "apps.kvstore"]),
               ("recipe", ["-m", "benchmarks._rpc_peers", "xmlrpc"])),
    "mp": (("ours", ["-m", "apps.mpecho", "--authkey", AUTHKEY]),
           ("recipe", ["-m", "benchmarks._rpc_peers", "mpecho", "--authkey", AUTHKEY])),
    "rpc": (("ours", ["-m", "apps.rpc", "--codec", "pickle", "--authkey", AUTHKEY]),
            ("recipe", ["-m", "benchmarks._rpc_peers", "rpc", "--authkey", AUTHKEY])),
}


# -- the worker: stdlib clients in threads ----------------------------------------------------------

class RecipeRPCProxy:
    """The recipe's client proxy, as printed (11.8)."""

    def __init__(self, connection):
        self._connection = connection

    def __getattr__(self, name):
        def do_rpc(*args, **kwargs):
            self._connection.send(pickle.dumps((name, args, kwargs)))
            result = pickle.loads(self._connection.recv())
            if isinstance(result, Exception):
                raise result
            return result
        return do_rpc


def _client_op(kind: str, host: str, port: int):
    """Connect one client; return a function doing one checked call."""
    if kind == "xmlrpc":
        import xmlrpc.client
        proxy = xmlrpc.client.ServerProxy(f"http://{host}:{port}", allow_none=True)
        state = {"i": 0}

        def op():
            i = state["i"] = state["i"] + 1
            key = f"k{((i - 1) >> 1) % 100}"
            if i & 1:
                proxy.set(key, i)
            elif proxy.get(key) != i - 1:
                raise AssertionError("get returned another value than set")
        return op
    from multiprocessing.connection import Client
    conn = Client((host, port), authkey=AUTHKEY.encode())
    if kind == "mp":
        def op():
            conn.send(PAYLOAD)
            if conn.recv() != PAYLOAD:
                raise AssertionError("echo differs")
        return op
    proxy = RecipeRPCProxy(conn)
    state = {"i": 0}

    def op():
        i = state["i"] = state["i"] + 1
        if proxy.add(i, 1) != i + 1:
            raise AssertionError("add returned a wrong sum")
    return op


def worker(kind: str, host: str, port: int, threads: int, first_index: int) -> int:
    """Run `threads` clients: connect (staggered), say ready, wait for `go START END` on stdin,
    count the calls completed in [START, END], print them as JSON, exit."""
    t0 = time.monotonic()
    window = {}
    go = threading.Event()
    counts = [0] * threads
    connected = [False] * threads
    errors: list[str] = []

    def client(k: int) -> None:
        time.sleep(max(0.0, t0 + (first_index + k) * STAGGER - time.monotonic()))
        try:
            op = _client_op(kind, host, port)
        except Exception as exc:
            errors.append(f"connect: {exc!r}")
            return
        connected[k] = True
        go.wait()
        start, end, n = window["start"], window["end"], 0
        try:
            while True:
                op()
                t = time.monotonic()
                if t >= end:
                    break
                if t >= start:
                    n += 1
        except Exception as exc:
            errors.append(f"call: {exc!r}")
        counts[k] = n

    pool = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    last_attempt = t0 + (first_index + threads - 1) * STAGGER
    deadline = last_attempt + CONNECT_GRACE
    while not all(connected) and time.monotonic() < deadline and not errors:
        time.sleep(0.01)
    print(json.dumps({"ready": sum(connected)}), flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        os._exit(2)
    window["start"], window["end"] = float(line[1]), float(line[2])
    go.set()
    for t in pool:
        t.join(max(0.0, window["end"] + 5.0 - time.monotonic()))
    print(json.dumps({"counts": counts, "connected": sum(connected), "errors": errors[:3]}),
          flush=True)
    sys.stdout.flush()
    os._exit(0)        # clients still stuck in Client() (a one-at-a-time server) are abandoned


# -- the parent -------------------------------------------------------------------------------------

def _read_json_line(proc: subprocess.Popen, deadline: float) -> dict:
    fd = proc.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError("a client worker did not answer in time")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError(f"a client worker exited ({proc.wait()})")
        buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def run_round(kind: str, clients: int, server: _harness.Server, warmup: float,
              duration: float) -> _load.RoundResult:
    """One measured round of `clients` clients against server."""
    workers = []
    n_workers = -(-clients // THREADS_PER_WORKER)
    try:
        for w in range(n_workers):
            threads = min(THREADS_PER_WORKER, clients - w * THREADS_PER_WORKER)
            argv = [sys.executable, "-m", "benchmarks.rpc", "--worker", kind, server.host,
                    str(server.port), str(threads), str(w)]
            workers.append(subprocess.Popen(argv, cwd=_harness.REPO_ROOT, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE))
        deadline = time.monotonic() + READY_TIMEOUT
        ready = sum(_read_json_line(p, deadline)["ready"] for p in workers)
        log.debug("%s: %d of %d clients connected", server.name, ready, clients)
        start = time.monotonic() + warmup
        end = start + duration
        for p in workers:
            p.stdin.write(f"go {start!r} {end!r}\n".encode())
            p.stdin.flush()
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0, delay0, wall0 = server.cpu_seconds(), _harness.run_delay(server.pid), time.monotonic()
        time.sleep(max(0.0, end - time.monotonic()))
        cpu1, delay1, wall1 = server.cpu_seconds(), _harness.run_delay(server.pid), time.monotonic()
        total, errors = 0, []
        for p in workers:
            result = _read_json_line(p, end + 30.0)
            total += sum(result["counts"])
            errors += result["errors"]
        if errors:
            raise RuntimeError(f"{server.name}: client errors: {errors[:3]}")
    finally:
        for p in workers:
            if p.poll() is None:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    result = _load.RoundResult(total, duration, None if cpu0 is None else cpu1 - cpu0)
    if delay0 is not None and delay1 is not None:
        result.other_load = (delay1 - delay0) / max(wall1 - wall0, 1e-9)
    return result


def summarize(rounds: list[_load.RoundResult]) -> dict:
    kept = _load.usable(rounds)
    return {"calls_per_s": median([r.rate for r in kept]),
            "cpu_us_per_call": median([r.cpu_us_per_rt for r in kept]),
            "server_busy": median([None if r.server_cpu is None else r.server_cpu / r.elapsed
                                   for r in kept]),
            "disturbed_rounds": sum(1 for r in rounds if r.disturbed),
            "rounds": [_load.round_record(r) for r in rounds]}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.rpc", description=__doc__)
    p.add_argument("--rounds", type=int, help="measured rounds per server and case (3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds in each measured window (1; quick 0.3)")
    p.add_argument("--warmup", type=float, help="seconds of load before each window (0.3; quick 0.1)")
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    p.add_argument("--retries", type=int, default=2,
                   help="times to redo a turn that other processes disturbed (default 2)")
    p.add_argument("--cases", metavar="PATTERNS",
                   help=f"comma-separated case ids or globs (all: {','.join(CASES)})")
    p.add_argument("--json", action="store_true", help="print one JSON line per case, no table")
    p.add_argument("-v", "--verbose", action="store_true", help="log every round")
    p.add_argument("--worker", nargs=5, metavar=("KIND", "HOST", "PORT", "THREADS", "INDEX"),
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        kind, host, port, threads, index = args.worker
        return worker(kind, host, int(port), int(threads), int(index) * THREADS_PER_WORKER)
    _harness.setup_logging(args.verbose)
    rounds, duration, warmup = _harness.timing(args, (3, 1), (1.0, 0.3), (0.3, 0.1))
    cases = list(CASES)
    if args.cases:
        patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
        cases = [c for c in cases if any(fnmatch.fnmatch(c, p) for p in patterns)]
        if not cases:
            raise SystemExit(f"--cases {args.cases!r} matches no case")
    server_cpu, client_cpu, pinning = _harness.plan_cpus()
    _harness.pin_self(client_cpu)
    nofile = _harness.raise_nofile(1024)
    kinds = sorted({CASES[c][0] for c in cases}, key=list(SERVERS).index)

    with contextlib.ExitStack() as stack:
        servers = {}
        for kind in kinds:
            servers[kind] = [stack.enter_context(_harness.Server(
                f"{name}-{kind}", [sys.executable, *argv, "--host", HOST, "--port", "0"],
                server_cpu, nofile)) for name, argv in SERVERS[kind]]
            for server in servers[kind]:            # a new process runs its first load slowly
                run_round(kind, 1, server, 0.0, 0.3 if args.quick else 0.5)
        if not args.json:
            print(f"RPC and messaging over 127.0.0.1; {pinning}; clients: the standard library's "
                  f"({THREADS_PER_WORKER} threads per worker process)")
            for kind in kinds:
                for server in servers[kind]:
                    print(f"  {server.name + ':':<14} {' '.join(['python'] + server.argv[1:])}")
            print(f"  {rounds} rounds per server and case, {duration:g} s each after {warmup:g} s "
                  "warm-up, alternating ours / recipe; medians; us/call = server CPU per call; "
                  "busy = server CPU / wall")
            print(f"{'case':<22} {'ours calls/s':>12} {'recipe calls/s':>15} {'ratio':>6} "
                  f"{'target':>7} {'ours us/call':>13} {'recipe us/call':>15} {'busy ours/recipe':>17}")
            sys.stdout.flush()
        worst = 0.0
        for case in cases:
            kind, clients, label, target = CASES[case]
            group = servers[kind]
            results = _load.alternate(group, rounds, args.retries, case,
                                      lambda s: run_round(kind, clients, s, warmup, duration))
            ours, recipe = (summarize(results[s.name]) for s in group)
            ratio = (ours["calls_per_s"] / recipe["calls_per_s"]
                     if ours["calls_per_s"] and recipe["calls_per_s"] else None)
            others = max((r.other_load for rs in results.values() for r in rs
                          if r.other_load is not None), default=None)
            worst = max(worst, others or 0.0)
            disturbed = ours["disturbed_rounds"] + recipe["disturbed_rounds"]
            if args.json:
                print(json.dumps({"benchmark": "rpc", "case": case, "clients": clients,
                                  "ratio": ratio, "target": target, "pinning": pinning,
                                  "other_load_max": others, "ours": ours, "recipe": recipe}),
                      flush=True)
                continue
            busy = "/".join("-" if s["server_busy"] is None else f"{s['server_busy'] * 100:.0f}%"
                            for s in (ours, recipe))
            print(f"{label:<22} {fmt(ours['calls_per_s']):>12} {fmt(recipe['calls_per_s']):>15} "
                  f"{fmt(ratio, '.2f'):>6} {f'>={target:g}':>7} "
                  f"{fmt(ours['cpu_us_per_call'], '.1f'):>13} {fmt(recipe['cpu_us_per_call'], '.1f'):>15} "
                  f"{busy:>17}{f' !{disturbed}/{2 * rounds}' if disturbed else ''}", flush=True)
        if not args.json and worst > _load.DISTURBED:
            print(_load.disturbance_note(args.retries, worst))
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(main())
    sys.exit(_load.run_cli(main))
