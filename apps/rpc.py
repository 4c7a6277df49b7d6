"""RPC service (recipe 11.8) serving add(x, y) and sub(x, y).

    python -m apps.rpc --port 17000 [--codec json|pickle] [--authkey KEY] [--mutual] [--no-md5]

JSON (default): the HMAC challenge of recipe 11.9 first (`protocols.auth.client_authenticate`
answers it), then length-prefixed JSON frames; `protocols.rpc.connect(address, key)` is the
blocking client.  pickle (`--codec pickle`): the recipe's own wire, multiprocessing.connection
with its authkey handshake, so the recipe's `Client(address, authkey=...)` plus its RPCProxy
works unchanged; pickles are read only after authentication, by a restricted Unpickler.
The key is as for apps.mpecho: --authkey, $REACTOR_AUTHKEY, or printed as `authkey <hex>`.
"""
from __future__ import annotations

import sys

from protocols.rpc import RPCHandler, json_rpc_server, pickle_rpc_server
from reactor import Reactor, listen_tcp

from . import _cli, _tls, _workers

DEFAULT_PORT = 17000


def add(x, y):
    return x + y


def sub(x, y):
    return x - y


def make_handler() -> RPCHandler:
    """The recipe's registry with its two example functions."""
    handler = RPCHandler()
    handler.register_function(add)
    handler.register_function(sub)
    return handler


def build_parser():
    p = _cli.parser("RPC server (Cookbook 11.8, with 11.9 authentication)", DEFAULT_PORT)
    p.add_argument("--codec", choices=["json", "pickle"], default="json",
                   help="json frames behind HMAC auth (default), or pickle over "
                        "multiprocessing.connection")
    _cli.add_authkey_flags(p)
    p.add_argument("--mutual", action="store_true",
                   help="json: the client checks the server too (both sides must agree)")
    p.add_argument("--no-md5", action="store_true",
                   help="pickle: refuse the HMAC-MD5 handshake of Python <= 3.11 clients")
    _cli.add_cidr_flags(p)
    _tls.add_tls_flags(p)
    _workers.add_worker_flags(p)
    return p


def make_factory(args, key: bytes):
    rpc = make_handler()
    if args.codec == "pickle":
        return pickle_rpc_server(rpc, key, allow_legacy_md5=not args.no_md5,
                                 auth_timeout=args.auth_timeout)
    return json_rpc_server(rpc, key, mutual=args.mutual, auth_timeout=args.auth_timeout)


def mount(reactor: Reactor, args, ctx=None) -> _cli.Mounted:
    """Put the RPC listener on reactor (main() and apps.serve)."""
    listener = listen_tcp(reactor, args.host, args.port, make_factory(args, _cli.resolve_authkey(args)),
                          ssl_context=ctx, reuse_port=args.reuse_port,
                          max_connections=args.max_connections, allow=args.allow, deny=args.deny)
    return _cli.Mounted([listener], [(_tls.scheme("tcp", ctx), listener.address, "rpc")])


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    ctx = _tls.context_or_exit(p, args)
    _cli.setup_logging(args.log_level)
    if args.workers:
        key = _cli.resolve_authkey(args)          # before the fork: every worker has the same
        return _workers.serve_workers(args, lambda: make_factory(args, key),
                                      _tls.scheme("tcp", ctx), "rpc", ssl_context=ctx)
    reactor = Reactor()
    return _cli.run(reactor, mount(reactor, args, ctx), args.grace)


if __name__ == "__main__":
    sys.exit(main())
