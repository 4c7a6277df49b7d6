"""The wire of `multiprocessing.connection` (recipe 11.7): its framing and authkey handshake as a
sans-I/O core, and the thin handler that puts it on the reactor.

Why it has this shape
---------------------
The stdlib speaks this protocol only with blocking calls: `Listener.accept()` runs the whole
handshake inside accept, so one silent client stalls every other one, and `Connection.recv()`
unpickles whatever arrives.  Here the handshake is a state machine (`MPConnection`) fed with
bytes, so many peers authenticate at once, each against its own deadline, and nothing reaches
the application (let alone `pickle`) before both sides have proved they hold the key.

Framing (POSIX, every version since 3.8): `!i` length + payload; a payload over 0x7fffffff is
sent as `!i -1` + `!Q length` + payload.  The stdlib reads any other negative length as an empty
message; we refuse it.  Before authentication a frame longer than 256 bytes (the stdlib's
`recv_bytes(256)`) is refused from its header alone, before a byte of its body is read.

Handshake (CPython `Lib/multiprocessing/connection.py`; notes/reliability.md section 6):
the server (`deliver_challenge` then `answer_challenge`) sends `#CHALLENGE#` + a message, the
client answers with a MAC of it, the server says `#WELCOME#` or `#FAILURE#`; then the same with
the roles swapped.  Python <= 3.11 sends 20 random bytes and answers with a raw 16-byte
HMAC-MD5; Python >= 3.12 sends `{sha256}` + 40 random bytes and answers `{sha256}` + the MAC
of the whole message.  Both forms are accepted (a 16-byte raw answer means MD5, as 3.12 does)
unless `allow_legacy_md5=False`; every comparison is `hmac.compare_digest`.
"""
from __future__ import annotations

import hmac
import logging
import os
import pickle
import struct
from typing import Any, Callable

from reactor import StreamHandler
from reactor.timers import Timer

from .base import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
MAX_PREAUTH = 256                    # the stdlib's recv_bytes(256) during the handshake
MAX_MESSAGE = 64 * 1024 * 1024       # after it (the stdlib has no bound at all)
MESSAGE_LENGTH = 40                  # random bytes in a modern challenge (3.12: MUST be > 20)
LEGACY_MESSAGE_LENGTH = 20           # ... and in a 3.11 one
ALLOWED_DIGESTS = frozenset({b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"})
_MAX_DIGEST_NAME = max(map(len, ALLOWED_DIGESTS))
_MD5_LEN = 16

_pack_i, _unpack_i = struct.Struct("!i").pack, struct.Struct("!i").unpack_from
_unpack_q = struct.Struct("!Q").unpack_from


class AuthenticationError(RemoteProtocolError):
    """The peer does not hold the key, or broke the handshake."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, 401)


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """One frame: header and payload (the stdlib concatenates too, against Nagle delays)."""
    n = len(payload)
    if n > 0x7FFFFFFF:
        return struct.pack("!iQ", -1, n) + payload
    return _pack_i(n) + payload


def frame_header(n: int) -> bytes:
    """The header alone, for payloads large enough to be written separately."""
    return struct.pack("!iQ", -1, n) if n > 0x7FFFFFFF else _pack_i(n)


class FrameDecoder:
    """Split a byte stream into frames of at most max_size bytes.

    max_size may change between frames (the handshake lowers it to 256, authentication raises
    it), which is why next_frame() yields one frame at a time.  A header announcing more than
    max_size, or a negative length other than the -1 of the 8-byte form, raises at once: the
    body is never read or buffered."""

    __slots__ = ("_buf", "max_size", "_need")

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self.max_size = max_size
        self._need = -1                 # payload bytes of the frame whose header is consumed

    def feed(self, data: bytes) -> None:
        """Add bytes; take frames out with next_frame()."""
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> bytes | None:
        """The next complete frame's payload, or None until more bytes arrive."""
        buf = self._buf
        need = self._need
        if need < 0:
            if len(buf) < 4:
                return None
            n = _unpack_i(buf)[0]
            head = 4
            if n < 0:
                if n != -1:
                    raise RemoteProtocolError(f"negative frame length {n}")
                if len(buf) < 12:
                    return None
                n = _unpack_q(buf, 4)[0]
                head = 12
            if n > self.max_size:
                raise RemoteProtocolError(f"frame of {n} bytes, over the limit of {self.max_size}")
            del buf[:head]
            need = self._need = n
        if len(buf) < need:
            return None
        self._need = -1
        if len(buf) == need:
            payload = bytes(buf)
            buf.clear()
        else:
            payload = bytes(buf[:need])
            del buf[:need]
        return payload

    def frames(self, data: bytes) -> list[bytes]:
        """feed(data) and every frame it completes."""
        self.feed(data)
        out = []
        while (payload := self.next_frame()) is not None:
            out.append(payload)
        return out


# -- the handshake --------------------------------------------------------------------------------

def parse_digest(message: bytes) -> tuple[str, bytes]:
    """('', message) for a legacy 20-byte challenge or 16-byte answer, else (name, payload) of a
    `{name}payload` message with name in the allow-list; anything else is refused."""
    if len(message) in (LEGACY_MESSAGE_LENGTH, _MD5_LEN):
        return "", message
    if message.startswith(b"{"):
        end = message.find(b"}", 1, _MAX_DIGEST_NAME + 2)
        if end > 0 and message[1:end] in ALLOWED_DIGESTS:
            return message[1:end].decode("ascii"), message[end + 1:]
    raise AuthenticationError(f"unsupported message length, missing digest prefix or unsupported "
                              f"digest ({len(message)} bytes)")


def create_response(authkey: bytes, message: bytes, allow_legacy_md5: bool = True) -> bytes:
    """Our answer to a challenge message (its `#CHALLENGE#` prefix stripped)."""
    name = parse_digest(message)[0]
    if not name:
        if not allow_legacy_md5:
            raise AuthenticationError("legacy HMAC-MD5 challenge refused")
        return hmac.new(authkey, message, "md5").digest()
    if name == "md5" and not allow_legacy_md5:
        raise AuthenticationError("HMAC-MD5 refused")
    return b"{%s}%s" % (name.encode("ascii"), hmac.new(authkey, message, name).digest())


def verify_response(authkey: bytes, message: bytes, response: bytes,
                    allow_legacy_md5: bool = True) -> None:
    """Check the peer's answer to our message; raise AuthenticationError if it is wrong."""
    name, mac = parse_digest(response)
    name = name or "md5"
    if name == "md5" and not allow_legacy_md5:
        raise AuthenticationError("HMAC-MD5 answer refused")
    expected = hmac.new(authkey, message, name).digest()
    if len(expected) != len(mac) or not hmac.compare_digest(expected, mac):
        raise AuthenticationError("digest received was wrong")


# States of MPConnection.
NEW = "NEW"                             # start() not called yet
SEND_CHALLENGE = "SEND_CHALLENGE"       # we deliver: our challenge is out, awaiting the answer
AWAIT_WELCOME = "AWAIT_WELCOME"         # we answered their challenge, awaiting their verdict
AWAIT_CHALLENGE = "AWAIT_CHALLENGE"     # awaiting their challenge
OPEN = "OPEN"
FAILED = "FAILED"


class MPConnection:
    """One end of a multiprocessing.connection: handshake, then frames.

    `start()` returns the bytes to send first (the server's challenge; nothing for a client).
    `receive_data(data)` returns the application payloads that data completes; the bytes the
    handshake wants sent accumulate in `data_to_send()`.  A failed handshake raises
    AuthenticationError after queueing `#FAILURE#` where the protocol sends one; any other
    violation raises RemoteProtocolError.  Once `state` is OPEN, frames up to max_message
    bytes are returned as payloads (bytes; unpickling is the caller's business)."""

    def __init__(self, authkey: bytes | None, *, server: bool,
                 allow_legacy_md5: bool = True, challenge_digest: str | None = "sha256",
                 max_message: int = MAX_MESSAGE,
                 urandom: Callable[[int], bytes] = os.urandom) -> None:
        if authkey is not None:
            if not isinstance(authkey, bytes):
                raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
            if not authkey:
                # Listener skips authentication for b'' while Client does not: both sides hang or
                # fail.  Refuse it here rather than reproduce that.
                raise ValueError("empty authkey: pass None for no authentication")
        if challenge_digest is None and not allow_legacy_md5:
            raise ValueError("a legacy (20-byte, HMAC-MD5) challenge needs allow_legacy_md5")
        if challenge_digest is not None and challenge_digest.encode() not in ALLOWED_DIGESTS:
            raise ValueError(f"unsupported challenge digest {challenge_digest!r}")
        self.authkey, self.server = authkey, server
        self.allow_legacy_md5 = allow_legacy_md5
        self.challenge_digest = challenge_digest
        self.max_message = max_message
        self._urandom = urandom
        self._out: list[bytes] = []
        self._message = b""             # the challenge message we sent (without #CHALLENGE#)
        self.decoder = FrameDecoder(MAX_PREAUTH)
        if authkey is None:
            self.state = OPEN
            self.decoder.max_size = max_message
        else:
            self.state = NEW
        self.peer_digest: str | None = None     # the digest the peer answered our challenge with

    @property
    def is_open(self) -> bool:
        return self.state is OPEN

    def start(self) -> bytes:
        """Begin: the server delivers its challenge at once; a client waits for the server's."""
        if self.state is NEW:
            if self.server:
                self._deliver()
            else:
                self.state = AWAIT_CHALLENGE
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Handshake bytes produced so far (and forget them)."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _send(self, payload: bytes) -> None:
        self._out.append(frame(payload))

    def _deliver(self) -> None:
        if self.challenge_digest is None:
            message = self._urandom(LEGACY_MESSAGE_LENGTH)
        else:
            message = b"{%s}%s" % (self.challenge_digest.encode("ascii"), self._urandom(MESSAGE_LENGTH))
        self._message = message
        self._send(CHALLENGE + message)
        self.state = SEND_CHALLENGE

    def _fail(self, reason: str, send_failure: bool) -> None:
        self.state = FAILED
        if send_failure:
            self._send(FAILURE)
        raise AuthenticationError(reason)

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed bytes; return the application payloads they complete (none before OPEN)."""
        decoder = self.decoder
        if self.state is OPEN:
            return decoder.frames(data)
        if self.state is FAILED:
            raise LocalProtocolError("connection failed")
        if self.state is NEW:
            raise LocalProtocolError("call start() first")
        decoder.feed(data)
        try:
            while self.state is not OPEN:
                payload = decoder.next_frame()
                if payload is None:
                    return []
                self._handshake(payload)
        except RemoteProtocolError:
            self.state = FAILED
            raise
        decoder.max_size = self.max_message
        out = []
        while (payload := decoder.next_frame()) is not None:
            out.append(payload)
        return out

    def _handshake(self, payload: bytes) -> None:
        state, key = self.state, self.authkey
        if state is SEND_CHALLENGE:          # their answer to our challenge
            try:
                name, _ = parse_digest(payload)
                verify_response(key, self._message, payload, self.allow_legacy_md5)
            except AuthenticationError as exc:
                self._fail(str(exc), send_failure=True)
            self.peer_digest = name or "md5"
            self._send(WELCOME)
            if self.server:
                self.state = AWAIT_CHALLENGE
            else:
                self.state = OPEN
        elif state is AWAIT_CHALLENGE:       # their challenge: answer it
            if not payload.startswith(CHALLENGE):
                self._fail("protocol error: expected a challenge", send_failure=False)
            message = payload[len(CHALLENGE):]
            if len(message) < LEGACY_MESSAGE_LENGTH:
                self._fail(f"challenge too short: {len(message)} bytes", send_failure=False)
            self._send(create_response(key, message, self.allow_legacy_md5))
            self.state = AWAIT_WELCOME
        elif state is AWAIT_WELCOME:         # their verdict on our answer
            if payload != WELCOME:
                self._fail("digest sent was rejected", send_failure=False)
            if self.server:
                self.state = OPEN
            else:
                self._deliver()


# -- the handler ----------------------------------------------------------------------------------

class MPConnectionHandler(StreamHandler):
    """A multiprocessing.connection peer on the reactor (server side unless is_server=False).

    Override `message_received(obj)` (objects, unpickled with `loads`) or `bytes_received(data)`
    (raw payloads); answer with `send(obj)` / `send_bytes(data)`.  Nothing is unpickled, and
    `authenticated()` is not called, before mutual authentication succeeded.  A peer that has
    not finished the handshake within auth_timeout seconds is closed; a failed handshake is
    answered with #FAILURE# (where the protocol has it) and closed; a broken frame is reset."""

    authkey: bytes | None = None
    is_server: bool = True
    allow_legacy_md5: bool = True
    challenge_digest: str | None = "sha256"
    max_message: int = MAX_MESSAGE
    auth_timeout: float | None = 10.0
    pickle_protocol: int = pickle.DEFAULT_PROTOCOL
    loads: Callable[[bytes], Any] = staticmethod(pickle.loads)

    def connection_made(self) -> None:
        self.mp = MPConnection(self.authkey, server=self.is_server,
                               allow_legacy_md5=self.allow_legacy_md5,
                               challenge_digest=self.challenge_digest,
                               max_message=self.max_message)
        self._auth_timer: Timer | None = None
        if self.mp.is_open:
            self._open()
            return
        if self.auth_timeout is not None:
            self._auth_timer = self.reactor.call_later(self.auth_timeout, self._auth_timed_out)
        out = self.mp.start()
        if out:
            self.write(out)

    def data_received(self, data: bytes) -> None:
        """During the handshake; _open() replaces it with the fast path."""
        try:
            payloads = self._handshake_data(data)
        except RemoteProtocolError as exc:
            log.warning("%r: %s, resetting", self, exc)
            self.abort()
            return
        if payloads is None:
            return
        receive = self.bytes_received
        for payload in payloads:
            if self.closing:
                return
            receive(payload)

    def _handshake_data(self, data: bytes) -> list[bytes] | None:
        mp = self.mp
        try:
            payloads = mp.receive_data(data)
        except AuthenticationError as exc:
            log.warning("%r: authentication failed: %s", self, exc)
            out = mp.data_to_send()
            if out:
                self.write(out)
            self.close()
            return None
        out = mp.data_to_send()
        if out:
            self.write(out)
        if mp.state is OPEN:
            # Frames that arrived behind the last handshake message came back from
            # receive_data above, read with the new limit; they are delivered after this.
            self._open()
        return payloads

    def _open_data_received(self, data: bytes) -> None:
        """data_received once authenticated: frames straight to bytes_received."""
        decoder = self.mp.decoder
        buf = decoder._buf
        if not buf and decoder._need < 0 and len(data) >= 4:
            n = _unpack_i(data)[0]
            if len(data) == n + 4 and 0 <= n <= decoder.max_size:   # one whole frame: most reads
                self.bytes_received(data[4:])
                return
        try:
            payloads = decoder.frames(data)
        except RemoteProtocolError as exc:
            log.warning("%r: %s, resetting", self, exc)
            self.abort()
            return
        receive = self.bytes_received
        for payload in payloads:
            if self.closing:
                return
            receive(payload)

    def _open(self) -> None:
        self.data_received = self._open_data_received     # type: ignore[method-assign]
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.authenticated()

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if not self.mp.is_open and not self.closing:
            log.warning("%r: no authentication within %.1f s, closing", self, self.auth_timeout)
            self._exc = TimeoutError("authentication timed out")
            self.abort()

    def handle_close(self) -> None:
        timer = getattr(self, "_auth_timer", None)
        if timer is not None:
            timer.cancel()
            self._auth_timer = None
        super().handle_close()

    # -- the application's side ---------------------------------------------------------------------

    @property
    def is_authenticated(self) -> bool:
        mp = getattr(self, "mp", None)
        return mp is not None and mp.is_open

    def authenticated(self) -> None:
        """Both sides proved they hold the key (or there is none): messages may flow."""

    def bytes_received(self, data: bytes) -> None:
        """One payload arrived (after authentication): by default unpickle it."""
        try:
            obj = self.loads(data)
        except Exception as exc:
            log.warning("%r: cannot unpickle a message (%s), resetting", self, exc)
            self.abort()
            return
        self.message_received(obj)

    def message_received(self, obj: Any) -> None:
        """One object arrived (after authentication)."""

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send one payload as a frame (after authentication)."""
        if self.mp.state is not OPEN:
            raise LocalProtocolError("send before authentication")
        n = len(data)
        if n <= 16384:
            self.write(_pack_i(n) + data)
        else:
            self.write(frame_header(n))
            self.write(data)

    def send(self, obj: Any) -> None:
        """Pickle obj and send it, as Connection.send does."""
        self.send_bytes(pickle.dumps(obj, self.pickle_protocol))


class MPClientHandler(MPConnectionHandler):
    """The client side: connect it with `reactor.connect_tcp(..., factory)` to a stdlib Listener."""

    is_server = False
