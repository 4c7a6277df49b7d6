"""The multiprocessing.connection core without sockets: framing split at every position, both
handshake forms against recorded transcripts of real interpreters, and every way to fail."""
from __future__ import annotations

import hmac
import pickle
import struct
from pathlib import Path

import pytest

from protocols import mpconn
from protocols.base import RemoteProtocolError
from protocols.mpconn import (CHALLENGE, FAILURE, OPEN, WELCOME, AuthenticationError, FrameDecoder,
                              MPConnection, frame)

DATA = Path(__file__).resolve().parents[1] / "data"
KEY = b"peekaboo"


# -- framing ---------------------------------------------------------------------------------------

def test_frame_is_the_stdlib_header():
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00"
    assert mpconn.frame_header(0x80000000) == struct.pack("!iQ", -1, 0x80000000)


WIRE = frame(b"hello") + frame(b"") + struct.pack("!iQ", -1, 3) + b"xyz" + frame(b"w" * 300)


@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
def test_frames_split_anywhere(cut):
    decoder = FrameDecoder(1000)
    got = decoder.frames(WIRE[:cut]) + decoder.frames(WIRE[cut:])
    assert got == [b"hello", b"", b"xyz", b"w" * 300]
    assert decoder.buffered == 0


def test_frames_byte_by_byte():
    decoder = FrameDecoder(1000)
    got = []
    for i in range(len(WIRE)):
        got += decoder.frames(WIRE[i:i + 1])
    assert got == [b"hello", b"", b"xyz", b"w" * 300]


@pytest.mark.parametrize("header", [
    struct.pack("!i", 257),                       # one over the pre-auth limit
    struct.pack("!i", 2**31 - 1),
    struct.pack("!i", -5),                        # the stdlib reads this as an empty message
    struct.pack("!i", -2**31),
    struct.pack("!iQ", -1, 2**64 - 1),            # the 8-byte form, huge
    struct.pack("!iQ", -1, 257),
])
def test_bad_headers_refused_before_the_body(header):
    decoder = FrameDecoder(256)
    with pytest.raises(RemoteProtocolError):
        decoder.frames(header)                    # the header alone is enough to refuse
    assert decoder.buffered == len(header)        # nothing was read or reserved for a body


def test_limit_applies_per_frame_and_may_change():
    decoder = FrameDecoder(4)
    decoder.feed(frame(b"abcd") + frame(b"abcdefgh"))
    assert decoder.next_frame() == b"abcd"
    decoder.max_size = 8
    assert decoder.next_frame() == b"abcdefgh"


# -- the handshake, in memory ------------------------------------------------------------------------

def pump(a: MPConnection, b: MPConnection, first: bytes) -> None:
    """Shuttle bytes between two cores until neither has anything to say."""
    to_b = first
    to_a = b""
    for _ in range(10):
        if to_b:
            b.receive_data(to_b)
            to_a = b.data_to_send()
            to_b = b""
        if to_a:
            a.receive_data(to_a)
            to_b = a.data_to_send()
            to_a = b""
        if not to_a and not to_b:
            return


@pytest.mark.parametrize("server_digest", ["sha256", "sha384", "sha3_256", "md5", None])
@pytest.mark.parametrize("client_digest", ["sha256", None])
def test_ours_against_ours(server_digest, client_digest):
    server = MPConnection(KEY, server=True, challenge_digest=server_digest)
    client = MPConnection(KEY, server=False, challenge_digest=client_digest)
    client.start()
    pump(server, client, server.start())
    assert server.state is OPEN and client.state is OPEN
    assert server.receive_data(frame(b"after")) == [b"after"]


def test_wrong_key_gets_failure_then_raises():
    server = MPConnection(KEY, server=True)
    client = MPConnection(b"other", server=False)
    client.start()
    client.receive_data(server.start())
    answer = client.data_to_send()
    with pytest.raises(AuthenticationError):
        server.receive_data(answer)
    assert server.data_to_send() == frame(FAILURE)
    with pytest.raises(AuthenticationError):
        client.receive_data(frame(FAILURE))


def test_client_refuses_a_server_without_the_key():
    """Mutual: the client checks the server's answer to its own challenge."""
    client = MPConnection(KEY, server=False)
    client.start()
    liar = MPConnection(b"other", server=True)     # passes the client's answer along unchecked
    client.receive_data(liar.start())
    client.data_to_send()
    client.receive_data(frame(WELCOME))
    challenge = client.data_to_send()
    liar.state = mpconn.AWAIT_CHALLENGE
    liar.receive_data(challenge)
    with pytest.raises(AuthenticationError):
        client.receive_data(liar.data_to_send())
    assert client.data_to_send() == frame(FAILURE)


def answer_with(response: bytes, allow_md5: bool = True) -> MPConnection:
    server = MPConnection(KEY, server=True, allow_legacy_md5=allow_md5, urandom=lambda n: b"r" * n)
    server.start()
    server.receive_data(frame(response))
    return server


MESSAGE = b"{sha256}" + b"r" * 40


@pytest.mark.parametrize("response", [
    b"{md5}" + hmac.new(KEY, MESSAGE, "md5").digest(),
    hmac.new(KEY, MESSAGE, "md5").digest(),                    # 16 raw bytes: a 3.11 client
    b"{sha256}" + hmac.new(KEY, MESSAGE, "sha256").digest(),
    b"{sha384}" + hmac.new(KEY, MESSAGE, "sha384").digest(),
])
def test_answers_accepted(response):
    assert answer_with(response).state is mpconn.AWAIT_CHALLENGE


@pytest.mark.parametrize("response", [
    b"{sha1}" + hmac.new(KEY, MESSAGE, "sha1").digest(),       # not in the allow-list
    b"{sha256" + hmac.new(KEY, MESSAGE, "sha256").digest(),     # no closing brace
    hmac.new(KEY, MESSAGE, "sha256").digest()[:20],             # 20 raw bytes
    b"{sha256}" + hmac.new(KEY, MESSAGE, "sha256").digest()[:31],
    b"{sha256}" + hmac.new(KEY, b"other", "sha256").digest(),
    b"",
])
def test_answers_refused(response):
    with pytest.raises(AuthenticationError):
        answer_with(response)


@pytest.mark.parametrize("response", [
    b"{md5}" + hmac.new(KEY, MESSAGE, "md5").digest(),
    hmac.new(KEY, MESSAGE, "md5").digest(),
])
def test_md5_refused_when_configured(response):
    with pytest.raises(AuthenticationError):
        answer_with(response, allow_md5=False)


def test_client_refuses_legacy_challenge_when_configured():
    client = MPConnection(KEY, server=False, allow_legacy_md5=False)
    client.start()
    with pytest.raises(AuthenticationError):
        client.receive_data(frame(CHALLENGE + b"x" * 20))


@pytest.mark.parametrize("challenge", [b"#CHALLENGE", b"#CHALLENGE#" + b"x" * 19, b"hello" * 10])
def test_client_refuses_bad_challenges(challenge):
    client = MPConnection(KEY, server=False)
    client.start()
    with pytest.raises(AuthenticationError):
        client.receive_data(frame(challenge))


def test_verification_uses_compare_digest(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    answer_with(b"{sha256}" + hmac.new(KEY, MESSAGE, "sha256").digest())
    assert calls == [(hmac.new(KEY, MESSAGE, "sha256").digest(),) * 2]


def test_empty_key_is_a_configuration_error():
    with pytest.raises(ValueError):
        MPConnection(b"", server=True)
    with pytest.raises(TypeError):
        MPConnection("text", server=True)      # type: ignore[arg-type]


def test_no_key_means_open_at_once():
    conn = MPConnection(None, server=True)
    assert conn.start() == b"" and conn.state is OPEN


def test_application_frames_before_open_are_handshake_frames():
    """A pickle sent where the answer belongs is just a wrong answer: never a message."""
    server = MPConnection(KEY, server=True)
    server.start()
    with pytest.raises(AuthenticationError):
        server.receive_data(frame(pickle.dumps(("add", (1, 2), {}))))
    assert server.state == mpconn.FAILED


def test_frames_behind_the_last_handshake_message_get_the_new_limit():
    server = MPConnection(KEY, server=True, max_message=1000)
    client = MPConnection(KEY, server=False)
    client.start()
    client.receive_data(server.start())
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())         # WELCOME, then the client's challenge
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())         # the answer: client says WELCOME
    wire = client.data_to_send() + frame(b"y" * 900)   # ... and at once a 900-byte message
    assert server.receive_data(wire) == [b"y" * 900]


# -- recorded transcripts of real interpreters --------------------------------------------------------

def load_transcript(path: Path) -> tuple[bytes, list[tuple[str, bytes]]]:
    key, frames = b"", []
    for line in path.read_text().splitlines():
        if line.startswith("# authkey: "):
            key = bytes.fromhex(line.split(": ", 1)[1])
        elif line and not line.startswith("#"):
            tag, hexed = line.split()
            frames.append((tag, bytes.fromhex(hexed)))
    return key, frames


TRANSCRIPTS = sorted(DATA.glob("mpconn_py*_py*.txt"))


def challenge_of(payload: bytes) -> tuple[str | None, bytes]:
    message = payload[4 + len(CHALLENGE):]
    if len(message) == 20:
        return None, message
    name, rest = message[1:].split(b"}", 1)
    return name.decode(), rest


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
@pytest.mark.parametrize("split", [None, 1, 7])
def test_our_server_replays_the_stdlib_server(path, split):
    """Our server, given the recorded server's random bytes, says what it said, frame by frame.

    One difference is by design: a 3.11 server answers a 3.12 client's `{sha256}` challenge
    with raw HMAC-MD5 over all of it; ours answers in the form the challenge asked for (the
    3.12 client accepts both)."""
    key, frames = load_transcript(path)
    digest, nonce = challenge_of(frames[0][1])
    server = MPConnection(key, server=True, challenge_digest=digest, urandom=lambda n: nonce)
    said, delivered = [server.start()], []
    for tag, data in frames[1:]:
        if tag == "C":
            pieces = [data] if split is None else [data[i:i + split] for i in range(0, len(data), split)]
            for piece in pieces:
                delivered += server.receive_data(piece)
            if out := server.data_to_send():
                said.append(out)
    expected = [data for tag, data in frames if tag == "S"][:-1]     # all but the echo
    assert len(said) == len(expected)
    for ours, theirs in zip(said, expected):
        if ours != theirs:
            their_challenge = next(d for t, d in frames if t == "C" and CHALLENGE in d[4:15])[4 + 11:]
            assert len(theirs) == 4 + 16 and their_challenge.startswith(b"{")
            mpconn.verify_response(key, their_challenge, ours[4:])
            mpconn.verify_response(key, their_challenge, theirs[4:])
    assert server.state is OPEN
    assert [pickle.loads(p) for p in delivered] == ["ping"]


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_our_client_replays_the_stdlib_client(path):
    key, frames = load_transcript(path)
    client_challenge = next(data for tag, data in frames if tag == "C" and CHALLENGE in data[4:15])
    digest, nonce = challenge_of(client_challenge)
    client = MPConnection(key, server=False, challenge_digest=digest, urandom=lambda n: nonce)
    said = [client.start()]
    for tag, data in frames:
        if tag == "S" and client.state is not OPEN:
            client.receive_data(data)
            if out := client.data_to_send():
                said.append(out)
    expected = [data for tag, data in frames if tag == "C"][:-1]       # all but the 'ping'
    said = [s for s in said if s]
    assert len(said) == len(expected)
    for ours, theirs in zip(said, expected):
        if ours != theirs:      # a 3.11 client answers a {sha256} challenge with raw MD5
            their_challenge = frames[0][1][4 + 11:]
            assert len(theirs) == 4 + 16 and their_challenge.startswith(b"{")
            mpconn.verify_response(key, their_challenge, ours[4:])
            mpconn.verify_response(key, their_challenge, theirs[4:])
    assert client.state is OPEN


def test_transcripts_cover_both_forms():
    names = {p.stem for p in TRANSCRIPTS}
    assert {"mpconn_py311_py311", "mpconn_py312_py312", "mpconn_py311_py312",
            "mpconn_py312_py311"} <= names
    key, frames = load_transcript(DATA / "mpconn_py311_py311.txt")
    assert len(frames[0][1]) == 4 + 11 + 20 and len(frames[1][1]) == 4 + 16
    key, frames = load_transcript(DATA / "mpconn_py312_py312.txt")
    assert frames[0][1][4:].startswith(CHALLENGE + b"{sha256}")
    assert frames[1][1][4:].startswith(b"{sha256}")


def _transcript_wires(name: str):
    key, frames = load_transcript(DATA / name)
    digest, nonce = challenge_of(frames[0][1])
    client_wire = b"".join(data for tag, data in frames if tag == "C")
    server_said = b"".join(data for tag, data in frames if tag == "S")
    return key, digest, nonce, client_wire, server_said[:-len(frames[-1][1])]


@pytest.mark.parametrize("name", ["mpconn_py312_py312.txt", "mpconn_py311_py311.txt"])
def test_server_handshake_split_at_every_position(name):
    """The whole client side of a recorded session, cut once at every position."""
    key, digest, nonce, wire, expected = _transcript_wires(name)
    for cut in range(len(wire) + 1):
        server = MPConnection(key, server=True, challenge_digest=digest, urandom=lambda n: nonce)
        said = server.start()
        got = server.receive_data(wire[:cut])
        said += server.data_to_send()
        got += server.receive_data(wire[cut:])
        said += server.data_to_send()
        assert said == expected, cut
        assert [pickle.loads(p) for p in got] == ["ping"], cut
