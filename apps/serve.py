"""Every service on one reactor: the README's main command.

    python -m apps.serve [--port 0] [--host H] [--only NAMES | --skip NAMES] [--authkey KEY]
                         [--data PATH] [--allow CIDR] [--deny CIDR] [--max-connections N]
                         [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]

One process, one thread, one loop, and on it:

    echo     tcp  20000   TCP echo (11.2, 11.12)
    udp      udp  14000   UDP time server (11.3), and UDP echo on 15000 (11.12)
    rest     http  8080   HTTP/1.1 + WSGI + PathDispatcher (11.5)
    kvstore  http 15000   XML-RPC key-value store (11.6); --data keeps it across restarts
    mpecho   tcp  25000   multiprocessing.connection echo (11.7)
    rpc      tcp  17000   RPC, JSON frames behind the HMAC handshake (11.8, 11.9)
    arrays   tcp  16000   large-array store (11.13)

`--port 0` puts every endpoint on a free port.  Each prints its `listening` line; mpecho and rpc
share one key (--authkey, $REACTOR_AUTHKEY, or generated and printed once as `authkey <hex>`).
With --tls-cert every stream service speaks TLS (tls://, https://); --allow, --deny and
--max-connections apply to every stream service (UDP has no connections to refuse), the limit
to each service's own connections.  SIGINT/SIGTERM stop all of them gracefully.  Each service
is the same code its own `python -m apps.<name>` runs (its mount()), so a flag that module
lacks here is one to run it alone for (--workers, --threads).
"""
from __future__ import annotations

import sys

from reactor import Reactor

from . import _cli, _tls, arrays, echo, kvstore, mpecho, rest, rpc, udp

SERVICES = {"echo": echo, "udp": udp, "rest": rest, "kvstore": kvstore, "mpecho": mpecho,
            "rpc": rpc, "arrays": arrays}
AUTHENTICATED = ("mpecho", "rpc")
STREAM = ("echo", "rest", "kvstore", "mpecho", "rpc", "arrays")     # they take --allow/--deny


def build_parser():
    p = _cli.parser("Every service of the Cookbook's network chapter on one reactor", None)
    names = ",".join(SERVICES)
    p.add_argument("--only", metavar="NAMES", help=f"comma-separated services to run ({names})")
    p.add_argument("--skip", metavar="NAMES", help="comma-separated services to leave out")
    p.add_argument("--data", metavar="PATH", help="kvstore journal: keep its data across restarts")
    _cli.add_authkey_flags(p)
    _cli.add_cidr_flags(p)
    _tls.add_tls_flags(p)
    return p


def chosen(p, args) -> list[str]:
    def names(text: str | None) -> list[str]:
        found = [n.strip() for n in (text or "").split(",") if n.strip()]
        unknown = [n for n in found if n not in SERVICES]
        if unknown:
            p.error(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
        return found
    only, skip = names(args.only), names(args.skip)
    return [n for n in SERVICES if (not only or n in only) and n not in skip]


def service_args(name: str, args) -> list[str]:
    """The command line that service would get run alone."""
    argv = ["--host", args.host, "--log-level", args.log_level, "--grace", str(args.grace)]
    if args.port == 0:
        argv += ["--port", "0"]
    if name == "kvstore" and args.data:
        argv += ["--data", args.data]
    if name in AUTHENTICATED:
        argv += ["--auth-timeout", str(args.auth_timeout)]
    if name in STREAM:
        for flag, networks in (("--allow", args.allow), ("--deny", args.deny)):
            argv += [f"{flag}={network}" for network in networks]
        if args.max_connections is not None:
            argv += ["--max-connections", str(args.max_connections)]
    return argv


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.port not in (None, 0):
        p.error("--port: 0 (every service on a free port) or leave it out (their own ports)")
    names = chosen(p, args)
    if not names:
        p.error("no service left to run")
    stream_ctx = _tls.context_or_exit(p, args)
    http_ctx = _tls.context_or_exit(p, args, alpn=["http/1.1"])
    _cli.setup_logging(args.log_level)
    key = _cli.resolve_authkey(args) if any(n in AUTHENTICATED for n in names) else None
    reactor = Reactor()
    mounts = []
    try:
        for name in names:
            module = SERVICES[name]
            sub = module.build_parser().parse_args(service_args(name, args))
            sub.authkey_bytes = key
            ctx = None if name == "udp" else http_ctx if name in ("rest", "kvstore") else stream_ctx
            mounts.append(module.mount(reactor, sub, ctx))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"serve: cannot start {name}: {exc}", file=sys.stderr)
        for mount in mounts:
            for cleanup in mount.cleanups:
                cleanup()
        reactor.close()
        return 1
    return _cli.run(reactor, mounts, args.grace)


if __name__ == "__main__":
    sys.exit(main())
