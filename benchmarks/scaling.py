# Does the cost of a loop turn depend on connections that do nothing? It must not: the reactor
# dispatches to ready handlers only (DESIGN.md, "The core contract"), so 10 busy connections
# should run as fast beside 10,000 idle ones as beside none.
#
# For each idle count, each round opens the idle connections to one server, in batches under
# the listen backlog, checks through /proc that the server really accepted them (its descriptor
# count grows by that many), runs the usual ping-pong round on 10 active connections, then
# resets the idle ones and waits until the server has closed them, so that no round pays for
# the previous round's teardown. Ours and asyncio alternate round by round. Each server's rate is
# reported against its own 0-idle rate ("flat" within 10%), beside the ratio ours/asyncio.
"""Benchmark active echo throughput while thousands of idle connections are held open."""
import argparse
import contextlib
import json
import logging
import sys
import time

from benchmarks import _harness, _load
from benchmarks._harness import fmt, median

log = logging.getLogger(__name__)

IDLE_COUNTS = (0, 1_000, 10_000)
ACTIVE, SIZE = 10, 1024
FD_MARGIN = 256            # descriptors beyond the connections: std streams, epoll, pipes, ...
FLAT = 0.10                # within 10% of the 0-idle rate counts as flat
SETTLE_TIMEOUT = 30.0      # seconds for a server to accept or close the idle connections


def settle(server: _harness.Server, timeout: float = SETTLE_TIMEOUT) -> int | None:
    """Wait until the server's descriptor count stops changing; return it (None without /proc)."""
    deadline, count = time.monotonic() + timeout, server.fd_count()
    while count is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        now = server.fd_count()
        if now == count:
            return count
        count = now
    return count


def idle_round(client, server: _harness.Server, idle: int, warmup: float,
               duration: float) -> _load.RoundResult:
    """Hold idle connections open to server and run one active round beside them."""
    base = settle(server)
    started = time.monotonic()
    socks = _load.open_idle(server.host, server.port, idle)
    try:
        held = len(socks)
        if held:
            count = server.wait_fds(lambda c: c >= base + held, SETTLE_TIMEOUT)
            if count is not None and count < base + held:
                log.warning("%s accepted only %d of %d idle connections", server.name,
                            count - base, held)
                held = count - base
            log.debug("%s: %d idle connections open and accepted in %.2f s", server.name, held,
                      time.monotonic() - started)
        result = _load.run_round(client, server, ACTIVE, SIZE, warmup, duration)
    finally:
        _load.close_idle(socks)
        if base is not None and server.wait_fds(lambda c: c <= base, SETTLE_TIMEOUT) > base:
            log.warning("%s still holds more descriptors than before the round", server.name)
    result.idle_held = held
    return result


def relative(value: float | None, base: float | None) -> str:
    """'0.97 flat' or '0.71 NOT flat' against the 0-idle rate."""
    if value is None or not base:
        return "-"
    ratio = value / base
    return f"{ratio:.2f} {'flat' if abs(ratio - 1) <= FLAT else 'NOT flat'}"


def main(argv: list[str] | None = None) -> int:
    """Run the idle-connection scaling benchmark and print the table (or JSON lines)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__)
    _harness.add_common_args(parser)
    parser.add_argument("--idle", metavar="COUNTS", default=",".join(map(str, IDLE_COUNTS)),
                        help="comma-separated idle connection counts (default %(default)s)")
    args = parser.parse_args(argv)
    _harness.setup_logging(args.verbose)
    rounds, duration, warmup = _harness.timing(args, (3, 2), (1.0, 0.5), (0.25, 0.1))
    try:
        wanted = sorted({int(x) for x in args.idle.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--idle {args.idle!r}: expected comma-separated integers") from None
    if not wanted or wanted[0] < 0:
        raise SystemExit("--idle needs counts >= 0")

    server_cpu, client_cpu, pinning = _harness.plan_cpus()
    _harness.pin_self(client_cpu)
    needed = wanted[-1] + ACTIVE + FD_MARGIN
    nofile = _harness.raise_nofile(needed)
    client = _load.make_client(args.client)
    servers = _harness.echo_servers(args, server_cpu, needed)

    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        _load.prime(client, servers)
        limits = [nofile] + [_harness.nofile_limit(s.pid) or needed for s in servers]
        most = max(0, min(limits) - ACTIVE - FD_MARGIN)
        notes = []
        if most < wanted[-1]:
            notes.append(f"descriptor limit {min(limits)} allows only {most} idle connections "
                         f"(wanted {wanted[-1]}); running up to {most}")
            log.warning(notes[-1])
            wanted = sorted({min(w, most) for w in wanted})
        if not args.json:
            print(f"echo scaling: {ACTIVE} active ping-pong connections of {SIZE} B beside idle "
                  f"ones, 127.0.0.1; {pinning}; client: {client.name}")
            for server in servers:
                print(f"  {server.name}: {' '.join(['python'] + server.argv[1:])}")
            print(f"  RLIMIT_NOFILE soft: client {nofile}, servers "
                  f"{', '.join(str(x) for x in limits[1:])}; {rounds} rounds per server and idle "
                  f"count, {duration:g} s each after {warmup:g} s warm-up, alternating; medians; "
                  f"vs 0-idle = rate / own 0-idle rate, flat within {FLAT:.0%}")
            for note in notes:
                print(f"  NOTE: {note}")
            print(f"{'idle':>7} {'ours rt/s':>11} {'asyncio rt/s':>13} {'ours/asyncio':>12} "
                  f"{'ours vs 0-idle':>15} {'asyncio vs 0-idle':>18} {'ours us/rt':>10} "
                  f"{'asyncio us/rt':>13}")
            sys.stdout.flush()
        zero: dict[str, float | None] = {}
        any_short, worst_others = False, 0.0
        for idle in wanted:
            results = _load.alternate(
                servers, rounds, args.retries, f"idle {idle}",
                lambda server: idle_round(client, server, idle, warmup, duration))
            held = {name: [x.idle_held for x in rs] for name, rs in results.items()}
            kept = {name: _load.usable(rs) for name, rs in results.items()}
            rate = {name: median([x.rate for x in rs]) for name, rs in kept.items()}
            cpu = {name: median([x.cpu_us_per_rt for x in rs]) for name, rs in kept.items()}
            if idle == wanted[0]:
                zero = dict(rate)
            ratio = rate["ours"] / rate["asyncio"] if rate["asyncio"] else None
            short = {name: min(h) for name, h in held.items() if min(h) < idle}
            for name, n in short.items():
                log.warning("%s: only %d of %d idle connections were held in some round", name, n, idle)
            any_short = any_short or bool(short)
            others = max((x.other_load for rs in results.values() for x in rs
                          if x.other_load is not None), default=None)
            all_rounds = [x for rs in results.values() for x in rs]
            disturbed = sum(1 for x in all_rounds if x.disturbed)
            worst_others = max(worst_others, others or 0.0)
            if args.json:
                print(json.dumps({"benchmark": "scaling", "idle": idle, "active": ACTIVE, "size": SIZE,
                                  "client": client.name, "pinning": pinning, "ratio": ratio,
                                  "other_load_max": others, "disturbed_rounds": disturbed,
                                  **{name: {"rt_per_s": rate[name], "cpu_us_per_rt": cpu[name],
                                            "vs_0_idle": rate[name] / zero[name] if zero.get(name) else None,
                                            "idle_held": held[name],
                                            "rounds": [_load.round_record(x) for x in rs]}
                                     for name, rs in results.items()}}), flush=True)
                continue
            label = f"{idle:,}" + ("*" if short else "")
            print(f"{label:>7} {fmt(rate['ours']):>11} {fmt(rate['asyncio']):>13} "
                  f"{fmt(ratio, '.2f'):>12} {relative(rate['ours'], zero.get('ours')):>15} "
                  f"{relative(rate['asyncio'], zero.get('asyncio')):>18} "
                  f"{fmt(cpu['ours'], '.1f'):>10} {fmt(cpu['asyncio'], '.1f'):>13}"
                  f"{f' !{disturbed}/{len(all_rounds)}' if disturbed else ''}", flush=True)
        if not args.json and worst_others > _load.DISTURBED:
            print(_load.disturbance_note(args.retries, worst_others))
        if not args.json and any_short:
            print("  * fewer idle connections than asked were open or accepted in some round (see log)")
        if not args.json and wanted[0] != 0:
            print("  NOTE: no 0-idle count was run; 'vs 0-idle' is against the smallest count")
    return 0


if __name__ == "__main__":
    sys.exit(_load.run_cli(main))
