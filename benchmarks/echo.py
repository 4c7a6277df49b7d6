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
#
# --workers N runs a second table instead: apps.echo in-process and with 1, 2, 4 ... N worker
# processes (recipe 11.11: the parent accepts and hands sockets over; --reuse-port: each worker
# listens and the kernel balances), against the same asyncio server.  Nothing is pinned there,
# since the workers must be free to spread over the cores, so the load client competes with them:
# on 2 cores the table shows how much a second worker gains while the client holds ~1 core, not
# how the reactor scales on idle cores.  The server's CPU time is summed over all its processes
# (read from /proc around the whole round, then scaled to the measured window).
"""Benchmark TCP echo ping-pong: ours vs asyncio over message sizes and connection counts."""
import argparse
import contextlib
import fnmatch
import json
import logging
import os
import sys
import time

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
    parser.add_argument("--workers", type=int, metavar="N",
                        help="compare apps.echo in-process and with 1..N worker processes "
                             "against asyncio (not pinned; default cases: 10 and 100 connections)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="with --workers: workers listen with SO_REUSEPORT (no hand-off)")
    args = parser.parse_args(argv)
    _harness.setup_logging(args.verbose)
    rounds, duration, warmup = _harness.timing(args, (5, 2), (1.0, 0.5), (0.25, 0.1))

    cases = [(s, c) for s in SIZES for c in CONNS]
    if args.workers is not None and not args.cases:
        cases = [(s, c) for s, c in cases if c > 1]       # one connection lives in one worker
    if args.cases:
        patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
        cases = [(s, c) for s, c in cases if any(fnmatch.fnmatch(case_id(s, c), p) for p in patterns)]
        if not cases:
            raise SystemExit(f"--cases {args.cases!r} matches no case")
    if args.workers is not None:
        return main_workers(args, cases, rounds, duration, warmup)
    if args.reuse_port:
        raise SystemExit("--reuse-port goes with --workers")

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



# -- --workers: the 11.11 worker processes against in-process and asyncio ------------------------

def worker_counts(n: int) -> list[int]:
    """1, 2, 4 ... up to n, and n itself."""
    counts, k = {n}, 1
    while k < n:
        counts.add(k)
        k *= 2
    return sorted(counts)


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (a worker server's parent and its workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            parents.setdefault(int(stat[stat.rindex(b")") + 2:].split()[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, ()))
    return tree


def tree_ticks(pids: list[int]) -> int | None:
    ticks = [_harness.cpu_ticks(p) for p in pids]
    return None if None in ticks else sum(ticks)


def tree_round(client, server, conns: int, size: int, warmup: float,
               duration: float) -> _load.RoundResult:
    """One round, with the server's CPU summed over its processes (read around the whole
    round, scaled to the measured window: the load is the same in warm-up and window)."""
    pids = process_tree(server.pid)
    ticks0, wall0 = tree_ticks(pids), time.monotonic()
    result = client.run(server.host, server.port, conns, size, warmup, duration, None)
    ticks1, wall = tree_ticks(pids), time.monotonic() - wall0
    if ticks0 is not None and ticks1 is not None and wall > 0:
        result.server_cpu = (ticks1 - ticks0) / _harness.CLK_TCK * result.elapsed / wall
    return result


def main_workers(args: argparse.Namespace, cases: list[tuple[int, int]], rounds: int,
                 duration: float, warmup: float) -> int:
    """The --workers table: in-process, 1..N workers and asyncio, same client, nothing pinned."""
    if args.workers < 1:
        raise SystemExit("--workers must be 1 or more")
    if args.ours_cmd:
        raise SystemExit("--ours-cmd does not go with --workers")
    nofile = _harness.raise_nofile(max(c for _, c in cases) + 256)
    client = _load.make_client(args.client)
    tail = ["--host", _harness.HOST, "--port", "0"]
    mode = ["--reuse-port"] if args.reuse_port else []
    servers = [_harness.Server("in-process", _harness.module_argv(_harness.OURS_MODULE, *tail),
                               None, nofile)]
    for n in worker_counts(args.workers):
        servers.append(_harness.Server(
            f"{n} worker{'s' if n > 1 else ''}",
            _harness.module_argv(_harness.OURS_MODULE, "--workers", str(n), *mode, *tail),
            None, nofile))
    servers.append(_harness.Server("asyncio", _harness.PEER_ARGV + tail, None, nofile))
    one, most, peer = servers[1].name, servers[-2].name, servers[-1].name
    cpus = os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        _load.prime(client, servers)
        if not args.json:
            print(f"echo ping-pong over 127.0.0.1 with worker processes "
                  f"({'SO_REUSEPORT' if args.reuse_port else 'socket hand-off'}); client: {client.name}")
            print(f"  NOT pinned: every server process and the load client share {cpus} CPUs, so "
                  "the client takes CPU the workers would use; more workers than the CPUs left "
                  "over cannot gain" + (" (here: 2 cores, so the load generator shares the "
                                        "machine with the workers)" if cpus <= 2 else ""))
            for server in servers:
                print(f"  {server.name}: {' '.join(['python'] + server.argv[1:])}")
            print(f"  {rounds} rounds per server and case, {duration:g} s each after {warmup:g} s "
                  "warm-up, alternating; medians; rt/s = round trips per second; busy = server "
                  "CPU (all its processes) / wall, 100% = one core")
            names = [s.name for s in servers]
            print(f"{'case':<16}" + "".join(f"{n + ' rt/s':>16}" for n in names)
                  + f"{most + '/' + one:>20} {most + '/asyncio':>18}   busy "
                  + "/".join(names) + "/client")
            sys.stdout.flush()
        for size, conns in cases:
            results = _load.alternate(
                servers, rounds, args.retries, case_id(size, conns),
                lambda server: tree_round(client, server, conns, size, warmup, duration))
            summary = {s.name: summarize(results[s.name], size) for s in servers}
            rate = {name: row["rt_per_s"] for name, row in summary.items()}
            scaling = rate[most] / rate[one] if rate[most] and rate[one] else None
            versus = rate[most] / rate[peer] if rate[most] and rate[peer] else None
            client_busy = median([r.client_busy for rs in results.values() for r in rs])
            if args.json:
                print(json.dumps({"benchmark": "echo-workers", "case": case_id(size, conns),
                                  "size": size, "conns": conns, "client": client.name,
                                  "pinning": "none", "cpus": cpus, "reuse_port": args.reuse_port,
                                  "scaling": scaling, "ratio": versus, "client_busy": client_busy,
                                  "servers": summary}), flush=True)
                continue
            busy = [percent(summary[s.name]["server_busy"]) for s in servers] + [percent(client_busy)]
            print(f"{case_label(size, conns):<16}"
                  + "".join(f"{fmt(rate[s.name]):>16}" for s in servers)
                  + f"{fmt(scaling, '.2f'):>20} {fmt(versus, '.2f'):>18}   {'/'.join(busy)}",
                  flush=True)
    return 0

if __name__ == "__main__":
    sys.exit(_load.run_cli(main))
