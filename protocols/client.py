"""An HTTP/1.1 client on the reactor (recipe 11.1): hundreds of requests in flight on one loop,
and a blocking layer that reads like the recipe.

    from protocols.client import get, post, head, Session

    resp = get("http://127.0.0.1:8080/get", params={"name1": "value1"})
    resp = post(url, data={"a": "1"}, headers={"Spam": "Eggs"}, auth=("user", "password"))
    resp = post(url, files={"file": ("data.csv", open("data.csv", "rb"))})
    resp2 = get(url, cookies=resp.cookies)
    resp.status_code, resp.headers["content-type"], resp.text, resp.json()

    client = HTTPClient(reactor)                 # on a running reactor, on its thread
    client.get(url, callback=lambda future: print(future.result().status_code))

Why it has this shape
---------------------
The wire is `protocols.http.ClientConnection`, the same strict parser the server uses, so a
malformed response (bad status line, Content-Length with Transfer-Encoding, bad chunking, an
oversized head, endless `100 Continue`, a body longer or shorter than announced) is an error
the moment it arrives, and its connection is never used again.  Around it, one module per
concern, each importing only those before it:

  client_request   what is checked before sending (URL, method, headers), and the errors
  client_body      request bodies: form, JSON, files streamed as multipart
  cookies          the http.cookiejar rules, applied to our requests and responses
  client_response  Response, case-insensitive Headers, ResponseFuture
  client_handler   one connection: the handler around ClientConnection, the exchange it carries
  client_conn      the per-origin keep-alive pool, and open_stream (plain TCP or TLS)
  client_async     HTTPClient: a call across its redirects, cookies, the outcome
  client_sync      Session and get/post/...: the asynchronous client driven until done

This module gathers the public names, so that callers import from one place.
"""
from __future__ import annotations

from .client_async import (CONNECT_TIMEOUT, MAX_REDIRECTS, READ_TIMEOUT, USER_AGENT, HTTPClient,
                           _DEFAULT)
from .client_body import BodyStream, MultipartBody, encode_body
from .client_conn import MAX_PER_HOST, MAX_RESPONSE_BODY, POOL_IDLE_TIMEOUT, open_stream
from .client_request import (URL, ConnectError, ConnectTimeout, HTTPClientError, HTTPStatusError,
                             InsecureRedirect, InvalidRequest, InvalidResponse, InvalidURL,
                             ReadTimeout, RemoteDisconnected, RequestCancelled, TLSUnavailable,
                             TooManyRedirects, basic_auth, parse_url)
from .client_response import Headers, Response, ResponseFuture, SentRequest
from .client_sync import Session, delete, get, head, patch, post, put, request
from .cookies import CookieJar

__all__ = [
    "HTTPClient", "Session", "Response", "ResponseFuture", "Headers", "SentRequest", "CookieJar",
    "URL", "parse_url", "basic_auth", "open_stream", "encode_body", "BodyStream", "MultipartBody",
    "request", "get", "head", "post", "put", "patch", "delete",
    "HTTPClientError", "InvalidURL", "InvalidRequest", "ConnectError", "ConnectTimeout",
    "ReadTimeout", "RemoteDisconnected", "InvalidResponse", "TooManyRedirects",
    "InsecureRedirect", "HTTPStatusError", "TLSUnavailable", "RequestCancelled",
    "CONNECT_TIMEOUT", "READ_TIMEOUT", "MAX_REDIRECTS", "MAX_PER_HOST", "MAX_RESPONSE_BODY",
    "POOL_IDLE_TIMEOUT", "USER_AGENT",
]
assert _DEFAULT is not None      # re-exported for callers that pass "the client's default" on
