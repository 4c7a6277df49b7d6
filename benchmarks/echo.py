# TCP echo, ping-pong: this reactor's `apps.echo` against asyncio's Protocol echo, same run, same
# client, same cores.
#
# Both servers are started once, primed (a new process runs its first ~0.2 s of load several
# times slower) and stay up for the whole run; every case then runs rounds alternately (ours,
# asyncio, ours, asyncio, ...), each on fresh connections, so drift in the machine falls on both
# sides alike, and a turn in which another process held a pinned CPU is redone. The medians are
# reported: round trips/s, payload MiB/s (one way), ours/asyncio, and the server's own CPU time
# per round trip, which stays meaningful when the client, not the server, is the limit; "busy"
# shows who ran out of CPU (one connection is latency-bound and leaves both cores half idle).
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
    """Medians of one server's undisturbed rounds in one case (all rounds if none is)."""
    kept = _load.usable(rounds)
    rate = median([r.rate for r in kept])
    return {"rt_per_s": rate,
            "mib_per_s": None if rate is None else rate * size / 2**20,
            "cpu_us_per_rt": median([r.cpu_us_per_rt for r in kept]),
            "server_busy": median([None if r.server_cpu is None else r.server_cpu / r.elapsed
                                   for r in kept]),
            "client_busy": median([r.client_busy for r in kept]),
            "rounds": [_load.round_record(r) for r in rounds]}


def percent(value: float | None) -> str:
    """'98%' for 0.98, '-' when unknown."""
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
        _load.prime(client, servers)
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
        worst_others = 0.0
        for size, conns in cases:
            results = _load.alternate(
                servers, rounds, args.retries, case_id(size, conns),
                lambda server: _load.run_round(client, server, conns, size, warmup, duration))
            ours, peer = (summarize(results[s.name], size) for s in servers)
            ratio = (ours["rt_per_s"] / peer["rt_per_s"]) if peer["rt_per_s"] else None
            client_busy = median([r.client_busy for rs in results.values() for r in _load.usable(rs)])
            others = max((r.other_load for rs in results.values() for r in rs
                          if r.other_load is not None), default=None)
            all_rounds = [r for rs in results.values() for r in rs]
            disturbed = sum(1 for r in all_rounds if r.disturbed)
            worst_others = max(worst_others, others or 0.0)
            if args.json:
                print(json.dumps({"benchmark": "echo", "case": case_id(size, conns), "size": size,
                                  "conns": conns, "client": client.name, "pinning": pinning,
                                  "ratio": ratio, "client_busy": client_busy, "other_load_max": others,
                                  "disturbed_rounds": disturbed,
                                  "ours": ours, "asyncio": peer}), flush=True)
                continue
            print(f"{case_label(size, conns):<16} {fmt(ours['rt_per_s']):>11} "
                  f"{fmt(ours['mib_per_s'], ',.1f'):>8} {fmt(peer['rt_per_s']):>13} "
                  f"{fmt(peer['mib_per_s'], ',.1f'):>8} {fmt(ratio, '.2f'):>12} "
                  f"{fmt(ours['cpu_us_per_rt'], '.1f'):>10} {fmt(peer['cpu_us_per_rt'], '.1f'):>13} "
                  f"{'/'.join(map(percent, (ours['server_busy'], peer['server_busy'], client_busy))):>25}"
                  f"{f' !{disturbed}/{len(all_rounds)}' if disturbed else ''}", flush=True)
        if not args.json and worst_others > _load.DISTURBED:
            print(_load.disturbance_note(args.retries, worst_others))
    return 0


if __name__ == "__main__":
    sys.exit(_load.run_cli(main))
