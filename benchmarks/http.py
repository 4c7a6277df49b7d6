# HTTP/1.1: keep-alive GETs of a small response at 1, 10 and 100 connections, and a
# connection-per-request case, against four servers in the same run, with the same client:
#
#   ours-raw   benchmarks._ours_http: our HTTP/1.1 handler, no WSGI (GET /)
#   ours-wsgi  apps.rest: WSGI + PathDispatcher, recipe 11.5's app on our reactor
#              (GET /hello?name=bench)
#   asyncio    benchmarks._peers http: an asyncio Protocol with a minimal parser (GET /)
#   asyncio-core  benchmarks._peers http-core: asyncio's loop driving our own HTTP core
#              (protocols.http), so that against ours-raw only the loops differ (GET /)
#   wsgiref    benchmarks._peers wsgiref: recipe 11.5's own server, wsgiref.simple_server with
#              its backlog of 5, HTTP/1.0, one request per connection, one thread (GET /)
#
# As in the echo benchmark, all servers are started once, pinned to one CPU (the client to the
# other), primed, and measured in alternating rounds (ours-raw, ours-wsgi, asyncio, wsgiref,
# ours-raw, ...), a turn that another process disturbed being redone; medians are reported.
# wsgiref closes after every response even in the keep-alive cases, so there it measures a new
# connection per request, as the recipe's server does; the client reconnects and counts each
# response. The close case sends `Connection: close` on 10 concurrent connections: every
# request is a new connection, so its req/s is new connections per second.
"""Benchmark HTTP/1.1 GETs: ours (raw handler and WSGI) vs asyncio and wsgiref."""
import argparse
import contextlib
import fnmatch
import json
import logging
import socket
import sys

from benchmarks import _harness, _http_load, _load
from benchmarks._harness import fmt, median

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# name -> (default argv after the interpreter, path requested)
SERVERS = {
    "ours-raw": (["-m", "benchmarks._ours_http"], "/"),
    "ours-wsgi": (["-m", "apps.rest"], "/hello?name=bench"),
    "asyncio": (["-m", "benchmarks._peers", "http"], "/"),
    "asyncio-core": (["-m", "benchmarks._peers", "http-core"], "/"),
    "wsgiref": (["-m", "benchmarks._peers", "wsgiref"], "/"),
}
# (case id, connections, Connection: close)
CASES = (("ka1", 1, False), ("ka10", 10, False), ("ka100", 100, False), ("close10", 10, True))
CLOSE_SERVERS = ("ours-raw", "asyncio", "asyncio-core", "wsgiref")
RATIOS = {False: (("ours-raw", "asyncio"), ("ours-wsgi", "asyncio"), ("ours-wsgi", "wsgiref"),
                  ("ours-raw", "asyncio-core")),
          True: (("ours-raw", "asyncio"), ("ours-raw", "wsgiref"), ("ours-raw", "asyncio-core"))}
PRIME_SECONDS = 0.5
FD_MARGIN = 256


def case_label(conns: int, close: bool) -> str:
    """Human name for a case."""
    return f"new conn x {conns}" if close else f"keep-alive x {conns}"


def ours_missing(name: str) -> str | None:
    """Why the default command of an `ours-*` server cannot run yet, or None when it can."""
    if name == "ours-raw":
        try:
            from protocols.handlers import HTTPServerHandler  # noqa: F401
        except Exception as exc:       # not written yet, or half-written: say which
            return f"protocols.handlers.HTTPServerHandler is not importable ({exc})"
    elif name == "ours-wsgi" and not (_harness.REPO_ROOT / "apps" / "rest.py").exists():
        return "apps/rest.py does not exist"
    return None


def check_server(server: _harness.Server, path: str) -> str:
    """One GET with `Connection: close`; return 'STATUS, N-byte body' or raise if not 2xx."""
    request = _http_load.request_bytes(server.host, server.port, path, close=True)
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise RuntimeError(f"{server.name} sent no complete response to GET {path}: {data[:200]!r}")
    status, length, _ = _http_load.parse_head(head)
    if not 200 <= status < 300:
        raise RuntimeError(f"{server.name} answered GET {path} with {head.splitlines()[0]!r}")
    if length >= 0 and len(body) != length:
        raise RuntimeError(f"{server.name}: Content-Length {length} but {len(body)} body bytes")
    return f"{status}, {len(body)}-byte body"


def summarize(rounds: list[_http_load.HTTPResult]) -> dict:
    """Medians of one server's undisturbed rounds in one case (all rounds if none is)."""
    kept = _load.usable(rounds)
    return {"req_per_s": median([r.rate for r in kept]),
            "cpu_us_per_req": median([r.cpu_us_per_rt for r in kept]),
            "server_busy": median([None if r.server_cpu is None else r.server_cpu / r.elapsed
                                   for r in kept]),
            "client_busy": median([r.client_busy for r in kept]),
            "connects_per_s": median([None if r.connects is None or not r.elapsed
                                      else r.connects / r.elapsed for r in kept]),
            "errors": sum(r.errors for r in rounds),
            "non2xx": sum(r.non2xx for r in rounds),
            "unfinished": sum(r.unfinished for r in rounds),
            "disturbed_rounds": sum(1 for r in rounds if r.disturbed),
            "rounds": [dict(_load.round_record(r), requests=r.round_trips, connects=r.connects,
                            errors=r.errors, non2xx=r.non2xx, unfinished=r.unfinished)
                       for r in rounds]}


def percent(value: float | None) -> str:
    """'98%' for 0.98, '-' when unknown."""
    return "-" if value is None else f"{value * 100:.0f}%"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: echo's options, plus which servers and how to start ours."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http", description=__doc__)
    parser.add_argument("--rounds", type=int, help="measured rounds per server and case (5; quick 2)")
    parser.add_argument("--duration", type=float,
                        help="seconds in each measured window (1; quick 0.5; wrk rounds up to "
                             "whole seconds)")
    parser.add_argument("--warmup", type=float,
                        help="seconds of load before each window (0.25; quick 0.1; wrk has none)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--retries", type=int, default=2,
                        help="times to redo a turn that other processes disturbed (default 2)")
    parser.add_argument("--client", choices=["auto", "wrk", "c", "python"], default="auto",
                        help="load client: wrk if installed, else C if it compiles, else Python "
                             "(auto); or force one")
    parser.add_argument("--cases", metavar="PATTERNS",
                        help="comma-separated case ids or globs, e.g. 'ka*' "
                             f"(all: {','.join(c[0] for c in CASES)})")
    parser.add_argument("--servers", metavar="NAMES", default=",".join(SERVERS),
                        help=f"comma-separated servers to run (default {','.join(SERVERS)})")
    parser.add_argument("--ours-raw-cmd", metavar="CMD",
                        help="command for ours-raw instead of `python -m benchmarks._ours_http`; "
                             f"`--host {HOST} --port 0` is appended")
    parser.add_argument("--ours-wsgi-cmd", metavar="CMD",
                        help="command for ours-wsgi instead of `python -m apps.rest`; "
                             f"`--host {HOST} --port 0` is appended")
    parser.add_argument("--ours-wsgi-path", metavar="PATH", default=SERVERS["ours-wsgi"][1],
                        help=f"what ours-wsgi is asked for (default {SERVERS['ours-wsgi'][1]})")
    parser.add_argument("--json", action="store_true", help="print one JSON line per case, no table")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every round")
    return parser.parse_args(argv)


def make_servers(args: argparse.Namespace, cpu: int | None,
                 nofile: int) -> list[tuple[_harness.Server, str]]:
    """(server, path) for each server asked for, in the order of SERVERS (not yet started)."""
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown or not names:
        raise SystemExit(f"--servers: unknown {unknown}; choose from {','.join(SERVERS)}")
    overrides = {"ours-raw": args.ours_raw_cmd, "ours-wsgi": args.ours_wsgi_cmd}
    tail = ["--host", HOST, "--port", "0"]
    chosen = []
    for name, (argv, path) in SERVERS.items():
        if name not in names:
            continue
        if overrides.get(name):
            full = _harness.command_argv(overrides[name]) + tail
        else:
            missing = ours_missing(name)
            if missing:
                raise SystemExit(f"{name} cannot run: {missing}. Use --servers to leave it out "
                                 f"or --{name}-cmd to give its command")
            full = [sys.executable, *argv, *tail]
        if name == "ours-wsgi":
            path = args.ours_wsgi_path
        chosen.append((_harness.Server(name, full, cpu, nofile), path))
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run the HTTP cases and print the table (or JSON lines)."""
    args = parse_args(argv)
    _harness.setup_logging(args.verbose)
    rounds, duration, warmup = _harness.timing(args, (5, 2), (1.0, 0.5), (0.25, 0.1))
    cases = list(CASES)
    if args.cases:
        patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
        cases = [c for c in cases if any(fnmatch.fnmatch(c[0], p) for p in patterns)]
        if not cases:
            raise SystemExit(f"--cases {args.cases!r} matches no case")

    server_cpu, client_cpu, pinning = _harness.plan_cpus()
    _harness.pin_self(client_cpu)
    nofile = _harness.raise_nofile(max(c[1] for c in cases) + FD_MARGIN)
    client = _http_load.make_client(args.client)
    chosen = make_servers(args, server_cpu, nofile)
    log.info("client: %s", client.name)
    paths = {server.name: path for server, path in chosen}
    if "wrk" in client.name:
        duration = float(max(1, int(-(-duration // 1))))   # what wrk will run, for the header

    with contextlib.ExitStack() as stack:
        for server, _ in chosen:
            stack.enter_context(server)
        servers = [server for server, _ in chosen]
        checks = {}
        for server in servers:
            checks[server.name] = check_server(server, paths[server.name])
            log.info("%s: GET %s -> %s", server.name, paths[server.name], checks[server.name])
        for server in servers:
            result = client.run(server.host, server.port, paths[server.name], 10, 0.0,
                                PRIME_SECONDS, server.pid)
            log.info("primed %s: %.0f requests/s (not counted)", server.name, result.rate)
        if not args.json:
            print(f"HTTP/1.1 GET over 127.0.0.1; {pinning}; client: {client.name}")
            for server in servers:
                print(f"  {server.name + ':':<13} {' '.join(['python'] + server.argv[1:])}  "
                      f"GET {paths[server.name]} ({checks[server.name]})")
            print(f"  {rounds} rounds per server and case, {duration:g} s each"
                  f"{'' if 'wrk' in client.name else f' after {warmup:g} s warm-up'}, alternating "
                  f"{' / '.join(s.name for s in servers)}; medians; us/req = server CPU per "
                  "request; busy = server CPU / wall in the window, and the client's")
            print("  'new conn' cases send Connection: close, so req/s there is new connections/s; "
                  "wsgiref closes after every response in every case (HTTP/1.0)")
            print(f"{'case':<20} {'server':<12} {'req/s':>10} {'us/req':>8} "
                  f"{'busy srv/cli':>13} {'errors':>7}")
            sys.stdout.flush()
        worst = 0.0
        for case, conns, close in cases:
            group = [s for s in servers if not close or s.name in CLOSE_SERVERS]
            if not group:
                continue
            results = _load.alternate(
                group, rounds, args.retries, case,
                lambda server: _http_load.run_round(client, server, paths[server.name], conns,
                                                    warmup, duration, close))
            summary = {name: summarize(rs) for name, rs in results.items()}
            ratios = {f"{a}/{b}": (summary[a]["req_per_s"] / summary[b]["req_per_s"]
                                   if summary[a]["req_per_s"] and summary[b]["req_per_s"] else None)
                      for a, b in RATIOS[close] if a in summary and b in summary}
            others = max((r.other_load for rs in results.values() for r in rs
                          if r.other_load is not None), default=None)
            worst = max(worst, others or 0.0)
            if args.json:
                print(json.dumps({"benchmark": "http", "case": case, "conns": conns, "close": close,
                                  "client": client.name, "pinning": pinning,
                                  "duration": duration, "rounds": rounds,
                                  "paths": {s.name: paths[s.name] for s in group},
                                  "ratios": ratios, "other_load_max": others,
                                  "servers": summary}), flush=True)
                continue
            for k, server in enumerate(group):
                s = summary[server.name]
                errors = s["errors"] + s["non2xx"] + s["unfinished"]
                mark = (f" !{s['disturbed_rounds']}/{len(s['rounds'])}"
                        if s["disturbed_rounds"] else "")
                print(f"{case_label(conns, close) if k == 0 else '':<20} {server.name:<12} "
                      f"{fmt(s['req_per_s']):>10} {fmt(s['cpu_us_per_req'], '.1f'):>8} "
                      f"{percent(s['server_busy']) + '/' + percent(s['client_busy']):>13} "
                      f"{errors:>7}{mark}")
            if ratios:
                print(f"{'':<20} " + "   ".join(f"{name} {fmt(value, '.2f')}"
                                                for name, value in ratios.items()), flush=True)
        if not args.json:
            print("  errors: failed connects, resets, early closes, timeouts, non-2xx and "
                  "unanswered requests, summed over the rounds")
            if worst > _load.DISTURBED:
                print(_load.disturbance_note(args.retries, worst))
    return 0


if __name__ == "__main__":
    sys.exit(_load.run_cli(main))
