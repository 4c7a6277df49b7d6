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

from . import _cli
from .mpecho import add_authkey_flags, resolve_authkey

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


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser("RPC server (Cookbook 11.8, with 11.9 authentication)", DEFAULT_PORT)
    p.add_argument("--codec", choices=["json", "pickle"], default="json",
                   help="json frames behind HMAC auth (default), or pickle over "
                        "multiprocessing.connection")
    add_authkey_flags(p)
    p.add_argument("--mutual", action="store_true",
                   help="json: the client checks the server too (both sides must agree)")
    p.add_argument("--no-md5", action="store_true",
                   help="pickle: refuse the HMAC-MD5 handshake of Python <= 3.11 clients")
    _cli.add_cidr_flags(p)
    args = p.parse_args(argv)
    _cli.setup_logging(args.log_level)
    key = resolve_authkey(args)
    rpc = make_handler()
    if args.codec == "pickle":
        factory = pickle_rpc_server(rpc, key, allow_legacy_md5=not args.no_md5,
                                    auth_timeout=args.auth_timeout)
    else:
        factory = json_rpc_server(rpc, key, mutual=args.mutual, auth_timeout=args.auth_timeout)
    reactor = Reactor()
    listener = listen_tcp(reactor, args.host, args.port, factory,
                          max_connections=args.max_connections, allow=args.allow, deny=args.deny)
    return _cli.serve(reactor, [listener], args.grace, [("tcp", listener.address, "rpc")])


if __name__ == "__main__":
    sys.exit(main())
