"""Recipe 11.9's HMAC challenge-response, as a first stage in front of any stream protocol.

Why it has this shape
---------------------
The recipe's wire is kept byte for byte, so its own client code works against our servers: the
server sends 32 random bytes, the client answers with their HMAC under the shared key, nothing
is framed and nothing says "welcome": a server that does not like the answer just closes.  What
the recipe gets wrong is fixed: `hmac.new(key, msg)` without a digest raises TypeError since
Python 3.8 (sha256 here), `recv(32)` may return fewer bytes (exact reads here, with a deadline),
and one client that never answers no longer blocks the others (each connection has its own
deadline on the reactor).

Optional mutual authentication, agreed by both sides beforehand: right after its answer the
client sends 32 random bytes of its own, and the server, once it has accepted the client,
answers HMAC(key, b"server" + nonce).  The prefix keeps the server's proof from ever being
the answer a client gives, so one client cannot be used to fake a server for another.

`HMACChallenge` / `HMACResponse` are the sans-I/O cores; `HMACServerAuth` / `HMACClientAuth` are
mixins that run them before the protocol handler they are mixed into (`with_hmac_auth(cls,
key)` builds such a class), and `client_authenticate` / `server_authenticate` are the
recipe's blocking functions.
"""
from __future__ import annotations

import hmac
import logging
import os
import socket
import time
from typing import Callable

from reactor import StreamHandler, TLSStreamHandler
from reactor.timers import Timer

from .base import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

NONCE_SIZE = 32
DIGEST = "sha256"
SERVER_PREFIX = b"server"


class AuthenticationError(RemoteProtocolError):
    """The peer does not hold the key, or closed before proving it."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, 401)


def _mac(key: bytes, message: bytes, digestmod: str) -> bytes:
    return hmac.new(key, message, digestmod).digest()


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError("the key must be non-empty bytes")
    return bytes(key)


class HMACChallenge:
    """The server's side: start() gives the challenge; receive_data() consumes the answer (and
    in mutual mode the client's nonce), returning (done, leftover bytes of the next protocol).
    A wrong answer raises AuthenticationError; data_to_send() holds the mutual proof."""

    def __init__(self, key: bytes, *, mutual: bool = False, digestmod: str = DIGEST,
                 urandom: Callable[[int], bytes] = os.urandom) -> None:
        self.key, self.mutual, self.digestmod = _check_key(key), mutual, digestmod
        self._size = hmac.new(b"k", b"", digestmod).digest_size
        self._nonce = urandom(NONCE_SIZE)
        self._buf = bytearray()
        self._out = b""
        self.done = self.failed = False

    def start(self) -> bytes:
        """The challenge: send it first."""
        return self._nonce

    def data_to_send(self) -> bytes:
        """The mutual proof, once the client passed (and forget it)."""
        out, self._out = self._out, b""
        return out

    def receive_data(self, data: bytes) -> tuple[bool, bytes]:
        """Feed the client's bytes: (done, the bytes after the handshake, for the protocol)."""
        if self.done or self.failed:
            raise LocalProtocolError("authentication already over")
        self._buf += data
        need = self._size + (NONCE_SIZE if self.mutual else 0)
        if len(self._buf) < need:
            return False, b""
        answer = bytes(self._buf[:self._size])
        if not hmac.compare_digest(answer, _mac(self.key, self._nonce, self.digestmod)):
            self.failed = True
            raise AuthenticationError("wrong HMAC answer to the challenge")
        if self.mutual:
            theirs = bytes(self._buf[self._size:need])
            self._out = _mac(self.key, SERVER_PREFIX + theirs, self.digestmod)
        rest = bytes(self._buf[need:])
        self._buf = bytearray()
        self.done = True
        return True, rest


class HMACResponse:
    """The client's side: receive_data() reads the challenge and queues the answer (and our
    nonce in mutual mode); returns (done, leftover bytes).  In mutual mode a wrong server
    proof raises AuthenticationError."""

    def __init__(self, key: bytes, *, mutual: bool = False, digestmod: str = DIGEST,
                 urandom: Callable[[int], bytes] = os.urandom) -> None:
        self.key, self.mutual, self.digestmod = _check_key(key), mutual, digestmod
        self._size = hmac.new(b"k", b"", digestmod).digest_size
        self._nonce = urandom(NONCE_SIZE) if mutual else b""
        self._buf = bytearray()
        self._out = b""
        self._answered = False
        self.done = self.failed = False

    def data_to_send(self) -> bytes:
        """Our answer (and nonce), once the challenge is in (and forget it)."""
        out, self._out = self._out, b""
        return out

    def receive_data(self, data: bytes) -> tuple[bool, bytes]:
        """Feed the server's bytes: (done, the bytes after the handshake, for the protocol)."""
        if self.done or self.failed:
            raise LocalProtocolError("authentication already over")
        self._buf += data
        if not self._answered:
            if len(self._buf) < NONCE_SIZE:
                return False, b""
            challenge = bytes(self._buf[:NONCE_SIZE])
            del self._buf[:NONCE_SIZE]
            self._out = _mac(self.key, challenge, self.digestmod) + self._nonce
            self._answered = True
            if not self.mutual:
                self.done = True
                rest, self._buf = bytes(self._buf), bytearray()
                return True, rest
        if len(self._buf) < self._size:
            return False, b""
        proof = bytes(self._buf[:self._size])
        if not hmac.compare_digest(proof, _mac(self.key, SERVER_PREFIX + self._nonce, self.digestmod)):
            self.failed = True
            raise AuthenticationError("the server's proof is wrong")
        rest, self._buf = bytes(self._buf[self._size:]), bytearray()
        self.done = True
        return True, rest


# -- on the reactor -------------------------------------------------------------------------------

class _AuthStage:
    """What both mixins share: hold the next protocol back until the core says done."""

    auth_key: bytes = b""
    auth_mutual: bool = False
    auth_digest: str = DIGEST
    auth_timeout: float | None = 10.0

    def _make_core(self):
        raise NotImplementedError

    def connection_made(self) -> None:
        self._auth_core = self._make_core()
        self._auth_timer: Timer | None = None
        if self.auth_timeout is not None:
            self._auth_timer = self.reactor.call_later(self.auth_timeout, self._auth_timed_out)
        first = self._auth_start()
        if first:
            self.write(first)

    def _auth_start(self) -> bytes:
        return b""

    def data_received(self, data: bytes) -> None:
        core = self._auth_core
        try:
            done, rest = core.receive_data(data)
        except AuthenticationError as exc:
            log.warning("%r: %s, closing", self, exc)
            self._auth_error = exc
            self.close()
            return
        out = core.data_to_send()
        if out:
            self.write(out)
        if not done:
            return
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        # From here on the protocol behind this stage gets the stream: its own data_received
        # is bound on the instance, so later reads cost nothing extra.
        self.data_received = super().data_received            # type: ignore[method-assign]
        self.auth_succeeded()
        super().connection_made()
        if rest and not self.closing:
            self.data_received(rest)

    def auth_succeeded(self) -> None:
        """The peer proved it holds the key (called before the protocol's connection_made)."""

    def auth_failed(self, exc: BaseException) -> None:
        """The peer failed, timed out or left before authentication (the connection is closed;
        the protocol behind the stage never saw it)."""

    def eof_received(self) -> bool | None:
        if not self._auth_core.done:
            return None
        return super().eof_received()

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if not self._auth_core.done and not self.closing:
            log.warning("%r: no authentication within %.1f s, closing", self, self.auth_timeout)
            self._exc = TimeoutError("authentication timed out")
            self.abort()

    def handle_close(self) -> None:
        timer = getattr(self, "_auth_timer", None)
        if timer is not None:
            timer.cancel()
            self._auth_timer = None
        if self.is_authenticated:
            super().handle_close()
        else:
            # The protocol's connection_made never ran: neither do its close hooks (they may
            # rely on state it sets up).  The transport's do: the socket is closed and a TLS
            # layer under the protocol lets go of its handshake timer and tells its caller.
            transport = TLSStreamHandler if isinstance(self, TLSStreamHandler) else StreamHandler
            transport.handle_close(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.is_authenticated:
            super().connection_lost(exc)
        else:
            self.auth_failed(getattr(self, "_auth_error", None) or exc
                             or ConnectionError("closed before authentication"))

    @property
    def is_authenticated(self) -> bool:
        core = getattr(self, "_auth_core", None)
        return core is not None and core.done


class HMACServerAuth(_AuthStage):
    """Mix in before a StreamHandler subclass: `class Svc(HMACServerAuth, EchoHandler)`.  The
    protocol's connection_made and data_received run only once the client is authenticated
    (and its connection_lost only if they ran).  The stage comes first in the MRO, so its hooks
    (auth_succeeded, auth_failed) are overridden in the combined class, not in the protocol."""

    def _make_core(self) -> HMACChallenge:
        return HMACChallenge(self.auth_key, mutual=self.auth_mutual, digestmod=self.auth_digest)

    def _auth_start(self) -> bytes:
        return self._auth_core.start()


class HMACClientAuth(_AuthStage):
    """The client's mixin: answers the server's challenge before the protocol speaks."""

    def _make_core(self) -> HMACResponse:
        return HMACResponse(self.auth_key, mutual=self.auth_mutual, digestmod=self.auth_digest)


def with_hmac_auth(cls: type[StreamHandler], key: bytes, *, mutual: bool = False,
                   timeout: float | None = 10.0, client: bool = False,
                   digestmod: str = DIGEST) -> type[StreamHandler]:
    """A subclass of the handler class cls that authenticates first (server side by default)."""
    stage = HMACClientAuth if client else HMACServerAuth
    return type(f"HMAC{cls.__name__}", (stage, cls), {
        "auth_key": _check_key(key), "auth_mutual": mutual, "auth_timeout": timeout,
        "auth_digest": digestmod})


# -- blocking, as in the recipe -------------------------------------------------------------------

def _recv_exactly(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("authentication timed out")
            sock.settimeout(left)
        data = sock.recv(n - len(buf))
        if not data:
            raise AuthenticationError(f"connection closed after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def client_authenticate(connection: socket.socket, secret_key: bytes, *, mutual: bool = False,
                        digestmod: str = DIGEST, timeout: float | None = 10.0) -> None:
    """The recipe's client side on a connected blocking socket: read the 32-byte challenge in
    full, answer its HMAC; with mutual, also check the server's proof (else raise)."""
    key = _check_key(secret_key)
    old = connection.gettimeout()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        message = _recv_exactly(connection, NONCE_SIZE, deadline)
        nonce = os.urandom(NONCE_SIZE) if mutual else b""
        connection.sendall(_mac(key, message, digestmod) + nonce)
        if mutual:
            size = hmac.new(b"k", b"", digestmod).digest_size
            proof = _recv_exactly(connection, size, deadline)
            if not hmac.compare_digest(proof, _mac(key, SERVER_PREFIX + nonce, digestmod)):
                raise AuthenticationError("the server's proof is wrong")
    finally:
        connection.settimeout(old)


def server_authenticate(connection: socket.socket, secret_key: bytes, *, mutual: bool = False,
                        digestmod: str = DIGEST, timeout: float | None = 10.0) -> bool:
    """The recipe's server side, blocking: True if the client answered right (then, with
    mutual, our proof has been sent)."""
    core = HMACChallenge(secret_key, mutual=mutual, digestmod=digestmod)
    old = connection.gettimeout()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        connection.sendall(core.start())
        size = core._size + (NONCE_SIZE if mutual else 0)
        try:
            core.receive_data(_recv_exactly(connection, size, deadline))
        except AuthenticationError:
            return False
        out = core.data_to_send()
        if out:
            connection.sendall(out)
        return True
    finally:
        connection.settimeout(old)
