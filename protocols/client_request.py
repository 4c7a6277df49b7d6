"""What is checked before a request leaves: the URL, the method, the header fields; and every
error the HTTP client raises.

Why it has this shape
---------------------
A CR or LF in a URL, a method or a header value is how a request is split into two (urllib's
CVE-2019-9740 and CVE-2019-9947, http.client's CVE-2020-26116), so each is refused here, before
a connection is even chosen, with an error that says which.  What may go on the wire unchanged
does (an existing %-escape is kept); what cannot but is harmless (a space, non-ASCII, a `#` that
a params string brought into the query, where it would start a fragment) is %-escaped; a
non-ASCII host is IDNA-encoded.  Parsed URLs are cached: a client that asks for the same URL
again and again pays for urlsplit once.  A URL with userinfo is never cached, so that the
module-wide cache holds no credentials.

The errors form one tree under HTTPClientError and also derive from the builtin that fits
(ConnectionError, TimeoutError, ValueError), so `except TimeoutError` works as a caller expects.
"""
from __future__ import annotations

import base64
import re
import urllib.parse
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from .client_response import Response

DEFAULT_PORTS = {"http": 80, "https": 443}

# -- errors -----------------------------------------------------------------------------------


class HTTPClientError(Exception):
    """Anything this client raises about a request; `url` says which, `response` if any."""

    url: str | None = None
    response: Response | None = None

    def __init__(self, msg: str, url: str | None = None, response: Response | None = None) -> None:
        super().__init__(msg)
        self.url, self.response = url, response


class InvalidURL(HTTPClientError, ValueError):
    """The URL cannot be requested (scheme, host, port, or a control character in it)."""


class InvalidRequest(HTTPClientError, ValueError):
    """A method, header or body that must not be sent; refused before anything was sent."""


class ConnectError(HTTPClientError, ConnectionError):
    """No connection: refused, unreachable, name not resolved, TLS handshake failed."""


class ConnectTimeout(ConnectError, TimeoutError):
    """The connection was not established within the connect timeout."""


class ReadTimeout(HTTPClientError, TimeoutError):
    """The server sent nothing for the read timeout while a response was due."""


class RemoteDisconnected(HTTPClientError, ConnectionError):
    """The server closed the connection before the response was complete."""


class InvalidResponse(HTTPClientError):
    """The server broke HTTP/1.1; the connection was dropped, never reused."""


class TooManyRedirects(HTTPClientError):
    """More redirects than max_redirects; `response` is the last redirect."""


class InsecureRedirect(HTTPClientError):
    """A redirect from https:// to http:// (allow with allow_https_downgrade=True)."""


class HTTPStatusError(HTTPClientError):
    """raise_for_status(): the response is a 4xx or 5xx."""


class TLSUnavailable(HTTPClientError):
    """https:// was asked for, but the reactor has no TLS layer (reactor/tls.py)."""


class RequestCancelled(HTTPClientError):
    """The future was cancelled, or the client closed, before the response arrived."""


# -- URLs and headers -------------------------------------------------------------------------

_URL_BAD = re.compile(r"[\x00-\x1f\x7f]")
_TARGET_OK = re.compile(r"[!$%&'()*+,\-./0-9:;=?@A-Z\[\]_a-z~]*")
_TARGET_SAFE = "!$%&'()*+,/:;=?@[]~"       # not "#": a target has no fragment (RFC 9112 3.2)
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=%]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class URL:
    """A parsed, checked request URL: what to connect to and what to put on the request line."""

    __slots__ = ("scheme", "host", "port", "host_header", "target", "url", "user", "password", "key",
                 "target_bytes")

    def __init__(self, scheme: str, host: str, port: int, host_header: str, target: str,
                 user: str | None, password: str | None) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.host_header, self.target = host_header, target
        self.target_bytes = target.encode("ascii")
        self.url = f"{scheme}://{host_header}{target}"
        self.user, self.password = user, password
        self.key = (scheme, host, port)

    def __repr__(self) -> str:
        return f"URL({self.url!r})"


_url_cache: dict[str, URL] = {}        # only URLs without userinfo: no credentials kept
_URL_CACHE_SIZE = 512


def parse_url(url: str, params: Any = None) -> URL:
    """Check and split an http(s) URL; params (dict, pairs or str) join its query string."""
    if params is None:
        hit = _url_cache.get(url)
        if hit is not None:
            return hit
    if isinstance(url, bytes):
        url = url.decode("ascii", "strict")
    if not isinstance(url, str):
        raise InvalidURL(f"a URL is a str, not {type(url).__name__}")
    if _URL_BAD.search(url):
        raise InvalidURL(f"control character in URL {url!r}", url)
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as exc:                           # e.g. a bad [IPv6] literal
        raise InvalidURL(f"cannot parse {url!r}: {exc}", url) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidURL(f"URL must start with http:// or https://: {url!r}", url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise InvalidURL(f"bad port in {url!r}: {exc}", url) from None
    if not host:
        raise InvalidURL(f"no host in {url!r}", url)
    if ":" in host:                                     # an IPv6 literal (brackets stripped)
        if not re.fullmatch(r"[0-9a-f:.]+(%[\w.\-]+)?", host, re.ASCII):
            raise InvalidURL(f"bad IPv6 address in {url!r}", url)
        shown = f"[{host}]"
    else:
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise InvalidURL(f"host of {url!r} cannot be IDNA-encoded", url) from None
        if not _REG_NAME.fullmatch(host):
            raise InvalidURL(f"bad host in {url!r}", url)
        shown = host
    port = port if port is not None else DEFAULT_PORTS[scheme]
    host_header = shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    query = parts.query
    if params:
        extra = params if isinstance(params, str) else (
            params.decode("ascii") if isinstance(params, bytes)
            else urllib.parse.urlencode(_pairs(params), doseq=False))
        if _URL_BAD.search(extra):
            raise InvalidURL(f"control character in the query string {extra!r}", url)
        query = f"{query}&{extra}" if query else extra
    target = (parts.path or "/") + (f"?{query}" if query else "")
    if not _TARGET_OK.fullmatch(target):                # spaces, non-ASCII, quotes: escape them
        target = urllib.parse.quote(target, safe=_TARGET_SAFE)
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    parsed = URL(scheme, host, port, host_header, target, user, password)
    if params is None and user is None and password is None:    # never keep credentials
        if len(_url_cache) >= _URL_CACHE_SIZE:
            _url_cache.clear()
        _url_cache[url] = parsed
    return parsed


def _pairs(data: Any) -> list[tuple[Any, Any]]:
    items = data.items() if hasattr(data, "items") else data
    out = []
    for name, value in items:
        if isinstance(value, (list, tuple)):
            out.extend((name, v) for v in value)
        elif value is not None:
            out.append((name, value))
    return out


def _header_items(headers: Any) -> Iterable[tuple[Any, Any]]:
    if headers is None:
        return ()
    return headers.items() if hasattr(headers, "items") else headers


def _encode_header(name: Any, value: Any, url: str | None = None) -> tuple[bytes, bytes]:
    """A header as the wire wants it: a token name (lower-cased), a value without CR, LF, NUL
    or other control bytes (CVE-2019-9740 class); refused here, before anything is sent."""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise InvalidRequest(f"invalid header name {name!r}", url)
    if isinstance(value, str):
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidRequest(f"header {name!r}: value is not latin-1: {value!r}", url) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value).encode("ascii")
    elif not isinstance(value, (bytes, bytearray)):
        raise InvalidRequest(f"header {name!r}: value must be str or bytes, not {type(value).__name__}", url)
    value = bytes(value)
    if _VALUE_BAD.search(value):
        raise InvalidRequest(f"control character in header {name!r}: {value!r}", url)
    return name.lower().encode("ascii"), value


def basic_auth(user: str | bytes, password: str | bytes) -> bytes:
    """The Authorization value for HTTP Basic (RFC 7617, UTF-8)."""
    user = user.encode("utf-8") if isinstance(user, str) else user
    password = password.encode("utf-8") if isinstance(password, str) else password
    if b":" in user:
        raise InvalidRequest("a Basic auth user name cannot hold ':'")
    return b"Basic " + base64.b64encode(user + b":" + password)
