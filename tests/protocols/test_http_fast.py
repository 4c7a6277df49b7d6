"""The server's fast path (ServerConnection.receive_simple) must agree with the general parser.

A request that arrives whole with no body skips the general head parser.  Two parsers that
disagree are how request smuggling happens, so every input here goes through both: whatever the
fast path accepts, the general parser accepts with the same Request and the same state, and
whatever the general parser refuses, the fast path refuses too (it hands it over).
"""
from __future__ import annotations

import random

import pytest

from protocols.base import RemoteProtocolError
from protocols.http import DONE, IDLE, EndOfMessage, Request, ServerConnection, _Connection

BASE = b"GET /hello?name=x HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"

CORPUS = [
    BASE,
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nhOsT: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\r\n\r\n",                     # empty Host: allowed, once
    b"GET / HTTP/1.1\r\nHost: a  \t\r\nX:  v v \r\n\r\n",   # OWS around values trimmed
    b"GET / HTTP/1.1\r\nX-Host: a\r\nHost: b\r\nHostx: c\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n",                  # no framing header: empty body
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",                    # methods are case-sensitive tokens
    # handed to the general parser, which may accept or refuse
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",                               # no Host: 400
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",         # two Hosts: 400
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",                  # whitespace before the colon
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",         # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",                 # bare CR
    b"GET / HTTP/1.1\r\nHost: a\nb\r\n\r\n",                 # bare LF
    b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",                # leading CRLF is skipped
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",   # two requests
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nX",                   # a request and a byte more
    b"GET / HTTP/1.1\r\nHost: a\r\n",                        # incomplete
]


def general(data: bytes):
    """What the general parser makes of data: (events, state) or the error."""
    conn = ServerConnection()
    try:
        events = _Connection.receive_data(conn, data)
    except RemoteProtocolError as exc:
        return ("error", exc.error_status_hint)
    return (events, conn.their_state, conn.keep_alive, conn._buf)


def fast(data: bytes):
    conn = ServerConnection()
    request = conn.receive_simple(data)
    if request is None:
        assert conn.their_state is IDLE and not conn._buf and conn.request is None
        return None
    return ([request, EndOfMessage([])], conn.their_state, conn.keep_alive, conn._buf)


def agree(data: bytes) -> bool:
    """True if the fast path took data (and then it agrees with the general parser)."""
    taken = fast(data)
    if taken is None:
        return False
    assert taken == general(data), data
    return True


@pytest.mark.parametrize("data", CORPUS)
def test_fast_path_agrees_with_the_general_parser(data):
    agree(data)


def test_the_common_requests_take_the_fast_path():
    assert agree(BASE)
    assert agree(b"GET / HTTP/1.1\r\nHost: a  \t\r\nX:  v v \r\n\r\n")
    events, state, keep_alive, _ = fast(BASE)
    assert events[0] == Request(b"GET", b"/hello?name=x", [(b"host", b"example.com"),
                                                         (b"accept", b"*/*")])
    assert state is DONE and keep_alive


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_framing_fields_and_odd_shapes_are_left_to_the_general_parser(data):
    assert fast(data) is None


def test_limits_are_left_to_the_general_parser():
    conn = ServerConnection(max_headers=1)
    assert conn.receive_simple(BASE) is None          # two fields > 1: general path says 431
    conn = ServerConnection(max_request_line=10)
    assert conn.receive_simple(BASE) is None
    conn = ServerConnection(max_header_bytes=20)
    assert conn.receive_simple(BASE) is None


def test_not_taken_while_a_message_is_in_progress():
    conn = ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHo")
    assert conn.receive_simple(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") is None


def test_random_mutations_never_make_the_two_parsers_disagree():
    """Byte flips, insertions and deletions of control bytes, spaces, colons and CR/LF around
    a valid request: wherever the fast path takes the input, the general parser agrees."""
    rng = random.Random(1234)
    alphabet = b"\r\n\t :\x00\x7f\x80Hh-aZ0/"
    taken = 0
    for _ in range(4000):
        data = bytearray(BASE)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[pos] = rng.choice(alphabet)
            elif op < 0.7:
                data.insert(pos, rng.choice(alphabet))
            else:
                del data[pos]
        taken += agree(bytes(data))
    assert taken > 100                   # the mutations do reach the fast path
