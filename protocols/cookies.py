"""Cookies for the HTTP client, by the rules of `http.cookiejar` (domain, path, secure, expiry).

Why it has this shape
---------------------
`http.cookiejar.CookieJar` already implements the rules (RFC 6265's Netscape cookies, host-only
cookies, paths, `Secure`, `Max-Age`/`Expires`, deletion), but it speaks `urllib.request`: it wants
a Request to read the URL from and to add a header to, and a response whose `info()` lists the
Set-Cookie values.  So the client hands it exactly those, a real `urllib.request.Request` (the
stdlib's own object, so nothing is mimicked wrongly) and a two-method stand-in for the response,
and only when there is something to do: a request when the jar holds cookies, a response when it
carries Set-Cookie.  The common request without cookies never builds either.

Cookies passed to one request (`cookies={"a": "1"}`) are bound to that request's origin: the
host as a host-only cookie and the port through the cookie's `port` attribute, so that a
redirect to another origin does not carry them (a leak the Tornado CVE-2026-49853 class is
about).  Cookies the servers set follow the jar's rules, which share them across ports of one
host, as browsers do.

The jars made here use `DomainStrictNonDomain`: a cookie without a Domain attribute is
host-only (RFC 6265 5.3 step 6) and goes back to exactly its host, never to a subdomain, which
http.cookiejar's default (DomainLiberal, requests' choice too) allows.  A jar the caller passes
in keeps the policy it was made with.
"""
from __future__ import annotations

import http.cookiejar
import urllib.request
from typing import Any, Iterable, Mapping



def strict_policy() -> http.cookiejar.DefaultCookiePolicy:
    """http.cookiejar's rules, with host-only cookies kept to their host."""
    return http.cookiejar.DefaultCookiePolicy(
        strict_ns_domain=http.cookiejar.DefaultCookiePolicy.DomainStrictNonDomain)


class CookieJar(http.cookiejar.CookieJar):
    """An http.cookiejar.CookieJar whose policy defaults to strict_policy()."""

    def __init__(self, policy: http.cookiejar.CookiePolicy | None = None) -> None:
        super().__init__(strict_policy() if policy is None else policy)



class _Info:
    """The one method of an email.message.Message that CookieJar.extract_cookies calls."""

    def __init__(self, set_cookies: list[str]) -> None:
        self._set_cookies = set_cookies

    def get_all(self, name: str, default: Any = None) -> Any:
        if name.lower() == "set-cookie":
            return list(self._set_cookies) or default
        return default


class _ResponseView:
    """What CookieJar.extract_cookies reads from a response: info().get_all()."""

    def __init__(self, set_cookies: list[str]) -> None:
        self._info = _Info(set_cookies)

    def info(self) -> _Info:
        return self._info


def jar_request(url: str, origin_host: str | None = None, redirected: bool = False) -> urllib.request.Request:
    """The Request CookieJar reasons about: the URL, and for a redirect the first request's host
    (urllib marks redirects unverifiable, and so does this client)."""
    return urllib.request.Request(url, origin_req_host=origin_host, unverifiable=redirected)


def cookie_header(jar: CookieJar, request: urllib.request.Request) -> str | None:
    """The Cookie header value the jar holds for this request, or None."""
    jar.add_cookie_header(request)
    return request.unredirected_hdrs.get("Cookie")


def extract(jars: Iterable[CookieJar], request: urllib.request.Request,
            set_cookies: list[str]) -> CookieJar:
    """Store the Set-Cookie values in each jar; return a jar of just this response's cookies."""
    view = _ResponseView(set_cookies)
    own = CookieJar()
    own.extract_cookies(view, request)
    for jar in jars:
        jar.extract_cookies(view, request)
    return own


def bound_cookie(name: str, value: str, request: urllib.request.Request) -> http.cookiejar.Cookie:
    """A cookie given by the caller for one request: host-only, on that port, path /."""
    host = http.cookiejar.eff_request_host(request)[1]     # "localhost" is "localhost.local"
    return http.cookiejar.Cookie(
        version=0, name=name, value=value, port=http.cookiejar.request_port(request),
        port_specified=True, domain=host, domain_specified=False, domain_initial_dot=False,
        path="/", path_specified=True, secure=False, expires=None, discard=True,
        comment=None, comment_url=None, rest={})


def merged_jar(base: http.cookiejar.CookieJar | None,
               extra: Mapping[str, str] | http.cookiejar.CookieJar | None,
               request: urllib.request.Request) -> CookieJar:
    """A jar for one call: the base jar's cookies plus the ones given for this call."""
    given_jar = isinstance(extra, http.cookiejar.CookieJar)
    if extra is not None and not given_jar and not hasattr(extra, "items"):
        raise TypeError(f"cookies= is a dict or a CookieJar, not {type(extra).__name__}")
    jar = CookieJar()
    for source in (base, extra if given_jar else None):
        if source is not None:
            for cookie in source:
                jar.set_cookie(cookie)
    if extra is not None and not given_jar:
        for name, value in extra.items():
            jar.set_cookie(bound_cookie(str(name), str(value), request))
    return jar


def is_empty(jar: CookieJar) -> bool:
    """True if the jar holds no cookie (without counting them all, as len() does)."""
    for _ in jar:
        return False
    return True


def as_dict(jar: CookieJar) -> dict[str, str]:
    """{name: value} of the jar's cookies (the last one wins for a repeated name)."""
    return {cookie.name: cookie.value for cookie in jar}
