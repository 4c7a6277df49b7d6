"""The TLS flags every stream service shares, and the server context they describe.

    --tls-cert FILE  [--tls-key FILE]  [--tls-client-ca FILE]

The context is built by hand (`SSLContext(PROTOCOL_TLS_SERVER)`) rather than with
`ssl.create_default_context(Purpose.CLIENT_AUTH)`: that one loads the system's CAs as trusted
issuers of *client* certificates, so `--tls-client-ca` would admit any client holding a public
certificate.  Here only the CA given is trusted.  TLS 1.2 is the floor; renegotiation is off
(OpenSSL 3 refuses client-initiated renegotiation anyway, this also covers TLS 1.2 peers that
ask).  Make a certificate with the commands in tests/certs/README.md.
"""
from __future__ import annotations

import argparse
import ssl
from typing import Iterable

SECURE_SCHEMES = {"tcp": "tls", "http": "https"}


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-cert, --tls-key and --tls-client-ca."""
    group = parser.add_argument_group("TLS")
    group.add_argument("--tls-cert", metavar="FILE",
                       help="serve TLS with this PEM certificate (chain); its key may follow in it")
    group.add_argument("--tls-key", metavar="FILE",
                       help="the PEM private key of --tls-cert, if not in the same file")
    group.add_argument("--tls-client-ca", metavar="FILE",
                       help="require client certificates issued by this CA (PEM)")


def server_context(args: argparse.Namespace, alpn: Iterable[str] | None = None) -> ssl.SSLContext | None:
    """The server context the flags ask for, or None without --tls-cert; ValueError (with a
    message for the user) when the flags or the files are wrong."""
    cert = getattr(args, "tls_cert", None)
    key = getattr(args, "tls_key", None)
    client_ca = getattr(args, "tls_client_ca", None)
    if not cert:
        if key or client_ca:
            raise ValueError("--tls-key and --tls-client-ca need --tls-cert")
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load --tls-cert {cert}" + (f" / --tls-key {key}" if key else "")
                         + f": {exc}") from exc
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load --tls-client-ca {client_ca}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def context_or_exit(parser: argparse.ArgumentParser, args: argparse.Namespace,
                    alpn: Iterable[str] | None = None) -> ssl.SSLContext | None:
    """server_context, with a bad flag or file reported as a usage error (exit status 2)."""
    try:
        return server_context(args, alpn)
    except ValueError as exc:
        parser.error(str(exc))


def scheme(plain: str, ctx: ssl.SSLContext | None) -> str:
    """The scheme of the `listening` line: tcp -> tls and http -> https under TLS."""
    return SECURE_SCHEMES.get(plain, plain) if ctx is not None else plain
