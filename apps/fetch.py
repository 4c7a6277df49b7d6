"""A command-line HTTP client in the spirit of curl, on this project's client (recipe 11.1).

    python -m apps.fetch URL [-X METHOD] [-H 'Name: value'] [-d DATA] [--json JSON]
                         [-F name=@path] [-u user:pass] [-I] [-i] [-L] [--timeout S]
                         [-o FILE] [--cacert FILE] [-k] [--fail]

The flags mean what curl's do: -d sends a form body (`@file` reads it from a file; several are
joined with '&'), --json a JSON body, -F a multipart field (`name=value`, or `name=@path` for a
file, `;type=...` for its type); any of them makes the default method POST.  -I asks with HEAD
and prints the status line and headers, -i prints them before the body; -L follows redirects
(not followed by default, as curl).  The body goes to stdout, or to -o FILE.

Exit status, as curl's where it has one: 0 done; 3 bad URL or request; 6 host not resolved;
7 no connection; 8 malformed response; 22 an HTTP error (400 or more) with --fail; 28 timeout;
35 TLS handshake or certificate failure; 47 too many redirects; 52 no response; 1 anything
else.  Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from protocols import client

EXIT_CODES = ((client.InvalidURL, 3), (client.InvalidRequest, 3), (client.ConnectTimeout, 28),
              (client.ReadTimeout, 28), (client.TooManyRedirects, 47),
              (client.InvalidResponse, 8), (client.RemoteDisconnected, 52))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m apps.fetch", description="Fetch a URL (like curl).")
    p.add_argument("url")
    p.add_argument("-X", "--request", dest="method", metavar="METHOD", help="method (default GET, "
                   "POST with -d/--json/-F, HEAD with -I)")
    p.add_argument("-H", "--header", dest="headers", action="append", default=[],
                   metavar="'Name: value'", help="add a header (repeatable; 'Name:' removes one)")
    p.add_argument("-d", "--data", action="append", default=[], metavar="DATA",
                   help="form body (repeatable, joined with '&'); @file reads a file")
    p.add_argument("--json", metavar="JSON", help="JSON body (@file reads a file)")
    p.add_argument("-F", "--form", action="append", default=[], metavar="name=value|name=@path",
                   help="multipart field or file upload (repeatable)")
    p.add_argument("-u", "--user", metavar="user:password", help="Basic authentication")
    p.add_argument("-I", "--head", action="store_true", help="HEAD: print status line and headers")
    p.add_argument("-i", "--include", action="store_true", help="print status line and headers too")
    p.add_argument("-L", "--location", action="store_true", help="follow redirects")
    p.add_argument("--max-redirs", type=int, default=client.MAX_REDIRECTS, metavar="N",
                   help=f"at most N redirects with -L (default {client.MAX_REDIRECTS})")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the connection, and for each read (default 30)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE")
    p.add_argument("--cacert", metavar="FILE", help="CA certificates to verify the server with")
    p.add_argument("-k", "--insecure", action="store_true", help="do not verify the certificate")
    p.add_argument("-f", "--fail", action="store_true",
                   help="exit 22 without printing the body on an HTTP error (400 or more)")
    return p.parse_args(argv)


def _read_arg(value: str) -> bytes:
    """curl's @file convention; '@-' is stdin."""
    if value.startswith("@"):
        if value == "@-":
            return sys.stdin.buffer.read()
        with open(value[1:], "rb") as f:
            return f.read()
    return value.encode("utf-8")


def build_request(args: argparse.Namespace) -> tuple[str, dict[str, Any], list]:
    """(method, keyword arguments for Session.request, files to close afterwards)."""
    kwargs: dict[str, Any] = {"allow_redirects": args.location, "max_redirects": args.max_redirs}
    headers: list[tuple[str, str | None]] = []
    for line in args.headers:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise client.InvalidRequest(f"bad header {line!r}: expected 'Name: value'")
        value = value.strip()
        headers.append((name.strip(), value if value else None))
    given = {name.lower() for name, _ in headers}
    opened: list = []
    bodies = sum(bool(x) for x in (args.data, args.json is not None, args.form))
    if bodies > 1:
        raise client.InvalidRequest("use only one of -d, --json and -F")
    if args.data:
        kwargs["data"] = b"&".join(_read_arg(d) for d in args.data)
        if "content-type" not in given:
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    elif args.json is not None:
        kwargs["data"] = _read_arg(args.json)
        if "content-type" not in given:
            headers.append(("Content-Type", "application/json"))
        if "accept" not in given:
            headers.append(("Accept", "application/json"))
    elif args.form:
        fields, files = [], []
        for spec in args.form:
            name, eq, value = spec.partition("=")
            if not eq or not name:
                raise client.InvalidRequest(f"bad -F {spec!r}: expected name=value or name=@path")
            if value.startswith("@"):
                path, _, ctype = value[1:].partition(";type=")
                f = open(path, "rb")
                opened.append(f)
                files.append((name, (os.path.basename(path), f, ctype or None)))
            else:
                fields.append((name, value))
        kwargs["data"], kwargs["files"] = fields, files
    if args.user is not None:
        user, colon, password = args.user.partition(":")
        if not colon:
            raise client.InvalidRequest("-u needs user:password")
        kwargs["auth"] = (user, password)
    kwargs["headers"] = headers
    method = args.method or ("HEAD" if args.head else "POST" if bodies else "GET")
    return method, kwargs, opened


def _head_text(response: client.Response) -> str:
    lines = [f"HTTP/{response.http_version} {response.status_code} {response.reason}".rstrip()]
    lines += [f"{name}: {value}" for name, value in response.headers.raw_items()]
    return "\r\n".join(lines) + "\r\n\r\n"


def exit_code(exc: BaseException) -> int:
    """curl's exit status for an error."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, client.ConnectError):
        text = str(exc)
        if "resolve" in text:
            return 6
        if "SSL" in text or "certificate" in text or "TLS" in text:
            return 35
        return 7
    if isinstance(exc, client.TLSUnavailable):
        return 35
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    verify: bool | str = False if args.insecure else (args.cacert or True)
    out = sys.stdout.buffer
    opened: list = []
    try:
        method, kwargs, opened = build_request(args)
        with client.Session(timeout=args.timeout, verify=verify) as session:
            response = session.request(method, args.url, **kwargs)
    except client.HTTPClientError as exc:
        print(f"fetch: ({exit_code(exc)}) {exc}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:                  # -d @file, -F name=@path that cannot be read
        print(f"fetch: (26) {exc}", file=sys.stderr)
        return 26
    finally:
        for f in opened:
            f.close()
    if args.fail and response.status_code >= 400:
        print(f"fetch: (22) the requested URL returned error: {response.status_code}", file=sys.stderr)
        return 22
    if args.head or args.include:
        for hop in response.history if args.location else ():
            out.write(_head_text(hop).encode("latin-1"))
        out.write(_head_text(response).encode("latin-1"))
    if not args.head:
        if args.output:
            with open(args.output, "wb") as f:
                f.write(response.content)
        else:
            out.write(response.content)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
