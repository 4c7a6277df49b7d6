"""Serve any WSGI application, as gunicorn or waitress users expect.

    python -m apps.wsgi package.module:app [--threads N] [--host H] [--port P]
                        [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
                        [--workers N [--reuse-port]]

`module:attr` names the app (attr may be dotted, and may be a call: `module:create_app()`).
Without --threads the app runs on the reactor thread and must not block; a typical Flask or
Django app blocks (database calls), so give it --threads.
"""
from __future__ import annotations

import importlib
import sys

from protocols.wsgi import wsgi_factory
from reactor import Reactor, listen_tcp

from . import _cli, _tls, _workers

DEFAULT_PORT = 8000


def load_app(spec: str):
    """'package.module:app' (or ':factory()') to the WSGI callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected MODULE:APP, got {spec!r}")
    obj = importlib.import_module(module_name)
    call = attr.endswith("()")
    for part in attr.removesuffix("()").split("."):
        obj = getattr(obj, part)
    if call:
        obj = obj()
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def build_parser():
    p = _cli.parser("Serve a WSGI application on the reactor", DEFAULT_PORT)
    p.add_argument("app", help="the application, as package.module:app")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="run the app on N threads (needed when it blocks)")
    _cli.add_cidr_flags(p)
    _tls.add_tls_flags(p)
    _workers.add_worker_flags(p)
    return p


def mount(reactor: Reactor, args, ctx=None, app=None) -> _cli.Mounted:
    """Put the app's listener on reactor (main(), or a serve of your own); app: the loaded
    WSGI callable, else load_app(args.app)."""
    app = load_app(args.app) if app is None else app
    scheme = _tls.scheme("http", ctx)
    listener = listen_tcp(reactor, args.host, args.port,
                          wsgi_factory(app, threads=args.threads, url_scheme=scheme),
                          ssl_context=ctx, reuse_port=args.reuse_port,
                          max_connections=args.max_connections, allow=args.allow, deny=args.deny)
    return _cli.Mounted([listener], [(scheme, listener.address, "wsgi")])


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    ctx = _tls.context_or_exit(p, args, alpn=["http/1.1"])
    _cli.setup_logging(args.log_level)
    sys.path.insert(0, ".")
    try:
        app = load_app(args.app)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        p.error(f"cannot load {args.app}: {exc}")
    if args.workers:
        scheme = _tls.scheme("http", ctx)
        return _workers.serve_workers(
            args, lambda: wsgi_factory(app, threads=args.threads, url_scheme=scheme),
            scheme, "wsgi", ssl_context=ctx)
    reactor = Reactor()
    return _cli.run(reactor, mount(reactor, args, ctx, app), args.grace)


if __name__ == "__main__":
    sys.exit(main())
