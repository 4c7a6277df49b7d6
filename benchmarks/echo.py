# TCP echo, ping-pong: this reactor's `apps.echo` against asyncio's Protocol echo, same run, same
# client, same cores.
#
# Both servers are started once and stay up for the whole run; every case then runs rounds
# alternately (ours, asyncio, ours, asyncio, ...), each round on fresh connections, so drift in
# the machine (frequency, caches, other load) falls on both sides alike. The medians are
# reported: round trips/s, payload MiB/s (one way), ours/asyncio, and the server's own CPU time
# per round trip, which stays meaningful when the client, not the server, is the limit (on
# 2 cores above ~150k round trips/s it is; "busy" shows who ran out of CPU).
"""Benchmark TCP echo ping-pong: ours vs asyncio over message sizes and connection counts."""
import argparse
import contextlib
import fnmatch
import json
import logging
import sys

from benchmarks import _harness, _load
from benchmarks._harness import fmt, median

log = logging.getLogger(__name__)

SIZES = (64, 1024, 100 * 1024)
CONNS = (1, 10, 100)


def case_id(size: int, conns: int) -> str:
    """Short name for a case, as --cases takes it: 64x1, 1kx10, 100kx100."""
    name = f"{size // 1024}k" if size % 1024 == 0 else str(size)
    return f"{name}x{conns}"


def case_label(size: int, conns: int) -> str:
    """Human name for a case: '1 KiB x 10'."""
    name = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"
    return f"{name} x {conns}"


def summarize(rounds: list[_load.RoundResult], size: int) -> dict:
    """Medians of one server's rounds in one case."""
    rate = median([r.rate for r in rounds])
    return {"rt_per_s": rate,
            "mib_per_s": None if rate is None else rate * size / 2**20,
            "cpu_us_per_rt": median([r.cpu_us_per_rt for r in rounds]),
            "server_busy": median([None if r.server_cpu is None else r.server_cpu / r.elapsed
                                   for r in rounds]),
            "client_busy": median([r.client_busy for r in rounds]),
            "rounds": [{"round_trips": r.round_trips, "elapsed": round(r.elapsed, 6),
                        "server_cpu": r.server_cpu} for r in rounds]}


def busy(summary: dict) -> str:
    """'98%' of a server's core used in the window, or '-'."""
    value = summary["server_busy"]
    return "-" if value is None else f"{value * 100:.0f}%"


def main(argv: list[str] | None = None) -> int:
    """Run the echo matrix and print the table (or JSON lines)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo", description=__doc__)
    _harness.add_common_args(parser)
    parser.add_argument("--cases", metavar="PATTERNS",
                        help="comma-separated case names or globs, e.g. '64x*,100kx1' "
                             f"(all: {','.join(case_id(s, c) for s in SIZES for c in CONNS)})")
    args = parser.parse_args(argv)
    _harness.setup_logging(args.verbose)
    rounds, duration, warmup = _harness.timing(args, (5, 2), (1.0, 0.5), (0.25, 0.1))

    cases = [(s, c) for s in SIZES for c in CONNS]
    if args.cases:
        patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
        cases = [(s, c) for s, c in cases if any(fnmatch.fnmatch(case_id(s, c), p) for p in patterns)]
        if not cases:
            raise SystemExit(f"--cases {args.cases!r} matches no case")

    server_cpu, client_cpu, pinning = _harness.plan_cpus()
    _harness.pin_self(client_cpu)
    nofile = _harness.raise_nofile(max(c for _, c in cases) + 256)
    client = _load.make_client(args.client)
    servers = _harness.echo_servers(args, server_cpu, nofile)

    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        if not args.json:
            print(f"echo ping-pong over 127.0.0.1; {pinning}; client: {client.name}")
            for server in servers:
                print(f"  {server.name}: {' '.join(['python'] + server.argv[1:])}")
            print(f"  {rounds} rounds per server and case, {duration:g} s each after {warmup:g} s "
                  f"warm-up, alternating {' / '.join(s.name for s in servers)}; medians; "
                  "MiB/s = payload one way; us/rt = server CPU per round trip; "
                  "busy = server CPU / wall in the window")
            print(f"{'case':<16} {'ours rt/s':>11} {'MiB/s':>8} {'asyncio rt/s':>13} {'MiB/s':>8} "
                  f"{'ours/asyncio':>12} {'ours us/rt':>10} {'asyncio us/rt':>13} "
                  f"{'busy ours/asyncio/client':>25}")
            sys.stdout.flush()
        for size, conns in cases:
            results: dict[str, list[_load.RoundResult]] = {s.name: [] for s in servers}
            for r in range(rounds):
                for server in servers:
                    result = client.run(server.host, server.port, conns, size, warmup, duration,
                                        server.pid)
                    results[server.name].append(result)
                    log.debug("%s %s round %d: %.0f rt/s, %s us/rt", case_id(size, conns),
                              server.name, r + 1, result.rate, fmt(result.cpu_us_per_rt, ".1f"))
            ours, peer = (summarize(results[s.name], size) for s in servers)
            ratio = (ours["rt_per_s"] / peer["rt_per_s"]) if peer["rt_per_s"] else None
            client_busy = median([r.client_busy for rs in results.values() for r in rs])
            if args.json:
                print(json.dumps({"benchmark": "echo", "case": case_id(size, conns), "size": size,
                                  "conns": conns, "client": client.name, "pinning": pinning,
                                  "ratio": ratio, "client_busy": client_busy,
                                  "ours": ours, "asyncio": peer}), flush=True)
                continue
            print(f"{case_label(size, conns):<16} {fmt(ours['rt_per_s']):>11} "
                  f"{fmt(ours['mib_per_s'], ',.1f'):>8} {fmt(peer['rt_per_s']):>13} "
                  f"{fmt(peer['mib_per_s'], ',.1f'):>8} {fmt(ratio, '.2f'):>12} "
                  f"{fmt(ours['cpu_us_per_rt'], '.1f'):>10} {fmt(peer['cpu_us_per_rt'], '.1f'):>13} "
                  f"{busy(ours) + '/' + busy(peer) + '/' + fmt(None if client_busy is None else client_busy * 100, '.0f') + '%':>25}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
