# The HTTP client benchmark (issue 4): small GETs against one local server, four clients in the
# same run and against the same server process:
#
#   ours x1      protocols.client.HTTPClient on one reactor, 1 request in flight, kept alive
#   ours x10     the same with 10 in flight (10 kept-alive connections, one reactor, one thread)
#   http.client  one HTTPConnection kept alive, requests one after another
#   urllib       urllib.request.urlopen, a new connection for every request (what it does)
#
# The server (benchmarks._ours_http by default: the raw HTTP/1.1 handler, so that the clients,
# not the server, are what differs) runs in its own process pinned to one CPU, the clients in
# this process pinned to the other, as in the other benchmarks.  Every client makes the same
# number of requests per round, rounds alternate between the clients (x1, x10, http.client,
# urllib, x1, ...), and medians are reported with each client's CPU time per request, which a
# shared machine disturbs less than wall-clock rates.  Every response is checked (status 200
# and the expected body); a wrong one fails the run.
"""Benchmark the HTTP client: ours (1 and 10 in flight) vs http.client and urllib.request."""
from __future__ import annotations

import argparse
import gc
import http.client
import json
import logging
import sys
import time
import urllib.request

from benchmarks import _harness, _load
from benchmarks._harness import fmt, median
from protocols.client import HTTPClient
from reactor import Reactor

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVERS = {"raw": (["-m", "benchmarks._ours_http"], "/", b"Hello, world!\n"),
           "rest": (["-m", "apps.rest"], "/hello?name=bench", None)}
CLIENTS = ("ours x1", "ours x10", "http.client", "urllib")
TARGETS = (("ours x10", "urllib", 3.0), ("ours x1", "http.client", 1.0))


class BenchError(_load.EchoError):
    """A client got a wrong answer: the figures would mean nothing."""


def _check(status: int, body: bytes, expected: bytes | None) -> None:
    if status != 200 or (expected is not None and body != expected):
        raise BenchError(f"unexpected response: {status} {body[:80]!r}")


def run_ours(url: str, n: int, inflight: int, expected: bytes | None) -> float:
    """n GETs with `inflight` outstanding at a time on one reactor; returns the elapsed seconds."""
    reactor = Reactor()
    client = HTTPClient(reactor, max_per_host=inflight)
    left, done, errors = [n], [0], []

    def next_request(future=None) -> None:
        if future is not None:
            exc = future._exception
            if exc is not None:
                errors.append(exc)
                reactor.stop()
                return
            response = future._result
            _check(response.status_code, response.content, expected)
            done[0] += 1
            if done[0] == n:
                reactor.stop()
        if left[0]:
            left[0] -= 1
            client.request("GET", url, callback=next_request)

    try:
        start = time.perf_counter()
        for _ in range(inflight):
            next_request()
        reactor.run()
        elapsed = time.perf_counter() - start
    finally:
        client.close()
        reactor.close()
    if errors:
        raise BenchError(f"ours x{inflight}: {errors[0]!r}")
    if done[0] != n:
        raise BenchError(f"ours x{inflight}: {done[0]} of {n} responses")
    return elapsed


def run_http_client(host: str, port: int, path: str, n: int, expected: bytes | None) -> float:
    """n GETs one after another on one kept-alive http.client connection."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        start = time.perf_counter()
        for _ in range(n):
            conn.request("GET", path)
            response = conn.getresponse()
            _check(response.status, response.read(), expected)
        return time.perf_counter() - start
    finally:
        conn.close()


def run_urllib(url: str, n: int, expected: bytes | None) -> float:
    """n urlopen() calls: a new connection (and Connection: close) for each."""
    start = time.perf_counter()
    for _ in range(n):
        with urllib.request.urlopen(url, timeout=10) as response:
            _check(response.status, response.read(), expected)
    return time.perf_counter() - start


def one_round(name: str, server: _harness.Server, path: str, n: int, expected: bytes | None) -> dict:
    """Run one client for n requests; its rate, CPU per request and the server's."""
    url = f"http://{server.host}:{server.port}{path}"
    gc.collect()
    cpu0, srv0 = time.process_time(), server.cpu_seconds()
    if name == "ours x1":
        elapsed = run_ours(url, n, 1, expected)
    elif name == "ours x10":
        elapsed = run_ours(url, n, 10, expected)
    elif name == "http.client":
        elapsed = run_http_client(server.host, server.port, path, n, expected)
    else:
        elapsed = run_urllib(url, n, expected)
    cpu, srv1 = time.process_time() - cpu0, server.cpu_seconds()
    return {"rate": n / elapsed, "cpu_us": cpu / n * 1e6,
            "server_us": None if srv0 is None or srv1 is None else (srv1 - srv0) / n * 1e6}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client", description=__doc__)
    parser.add_argument("--requests", type=int, help="GETs per client per round (2000; quick 300)")
    parser.add_argument("--rounds", type=int, help="rounds per client (5; quick 2)")
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--server", choices=sorted(SERVERS), default="raw",
                        help="raw: benchmarks._ours_http (default); rest: apps.rest /hello")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help=f"comma-separated subset of: {','.join(CLIENTS)}")
    parser.add_argument("--json", action="store_true", help="print one JSON line, no table")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every round")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _harness.setup_logging(args.verbose)
    n = args.requests or (300 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 5)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if n < 1 or rounds < 1 or not clients or any(c not in CLIENTS for c in clients):
        raise SystemExit(f"--requests and --rounds must be >= 1; --clients from {','.join(CLIENTS)}")
    argv_tail, path, expected = SERVERS[args.server]
    server_cpu, client_cpu, pinning = _harness.plan_cpus()
    _harness.pin_self(client_cpu)
    server = _harness.Server(args.server, [sys.executable, *argv_tail, "--host", HOST, "--port", "0"],
                             server_cpu)
    results: dict[str, list[dict]] = {c: [] for c in clients}
    with server:
        for name in clients:                    # warm up: connections, caches, the server's too
            one_round(name, server, path, max(50, n // 10), expected)
        for r in range(rounds):
            order = clients[r % len(clients):] + clients[:r % len(clients)]
            for name in order:
                result = one_round(name, server, path, n, expected)
                results[name].append(result)
                log.debug("round %d %s: %.0f req/s, %.1f us CPU/req", r + 1, name, result["rate"],
                          result["cpu_us"])
    summary = {name: {"req_per_s": median([x["rate"] for x in rs]),
                      "client_cpu_us": median([x["cpu_us"] for x in rs]),
                      "server_cpu_us": median([x["server_us"] for x in rs]),
                      "rounds": [round(x["rate"]) for x in rs]}
               for name, rs in results.items()}
    ratios = {f"{a}/{b}": summary[a]["req_per_s"] / summary[b]["req_per_s"]
              for a, b, _ in TARGETS if a in summary and b in summary}
    if args.json:
        print(json.dumps({"benchmark": "client", "server": args.server, "requests": n,
                          "rounds": rounds, "pinning": pinning, "clients": summary,
                          "ratios": ratios}), flush=True)
        return 0
    print(f"HTTP client: {n} GETs of {path} per client per round against {args.server} "
          f"(python {' '.join(argv_tail)}), {rounds} rounds alternating, medians; {pinning}")
    print(f"{'client':<13} {'in flight':>9} {'connections':>12} {'req/s':>9} {'cpu us/req':>11} "
          f"{'srv us/req':>11} {'vs urllib':>10} {'vs http.client':>15}")
    shape = {"ours x1": (1, "1 kept alive"), "ours x10": (10, "10 kept alive"),
             "http.client": (1, "1 kept alive"), "urllib": (1, "new each")}
    for name in clients:
        s = summary[name]
        vs = [s["req_per_s"] / summary[b]["req_per_s"] if b in summary else None
              for b in ("urllib", "http.client")]
        print(f"{name:<13} {shape[name][0]:>9} {shape[name][1]:>12} {fmt(s['req_per_s']):>9} "
              f"{fmt(s['client_cpu_us'], '.1f'):>11} {fmt(s['server_cpu_us'], '.1f'):>11} "
              f"{fmt(vs[0], '.2f') + 'x':>10} {fmt(vs[1], '.2f') + 'x':>15}")
    for a, b, target in TARGETS:
        if f"{a}/{b}" in ratios:
            value = ratios[f"{a}/{b}"]
            print(f"  {a} / {b}: {value:.2f}x (target >= {target:g}x: "
                  f"{'met' if value >= target else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(_load.run_cli(main))
