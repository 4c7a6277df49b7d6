"""apps.mpecho as the user runs it, with the stdlib's own multiprocessing.connection.Client as
the oracle, and the hostile cases of the handshake: oversized and negative frames, silent and
dribbling clients, and a pickle sent before authentication that must never be unpickled."""
from __future__ import annotations

import hmac
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import pytest

from tests.apps import _proc

KEY = "peekaboo"


def start_printing_key(name: str, *args: str, timeout: float = 10.0):
    """Start an app that prints `authkey <hex>` before its listening line: (proc, key, address)."""
    proc = subprocess.Popen([sys.executable, "-m", f"apps.{name}", "--port", "0", *args],
                            cwd=_proc.REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline, buf, lines = time.monotonic() + timeout, b"", []
    try:
        while not any(_proc.LISTENING.fullmatch(line) for line in lines):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no listening line; got {lines!r}")
            if select.select([proc.stdout], [], [], left)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"exited: {proc.wait()} {proc.stderr.read()!r}")
                buf += chunk
                *done, buf = buf.split(b"\n")
                lines += [d.decode() for d in done]
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    keys = [line.split()[1] for line in lines if line.startswith("authkey ")]
    m = _proc.LISTENING.fullmatch(lines[-1])
    return proc, keys, lines, (m["host"], int(m["port"]))


@pytest.fixture(scope="module")
def mpecho():
    """One server for the module: --auth-timeout 1 so silent clients go quickly."""
    with _proc.running("mpecho", "--authkey", KEY, "--auth-timeout", "1") as (proc, endpoints):
        yield endpoints[0].address


def closed_soon(sock: socket.socket, within: float) -> bool:
    """True if the peer closed (EOF or reset) within `within` seconds, discarding data."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def recv_frame(sock: socket.socket) -> bytes:
    head = _proc.recv_n(sock, 4)
    return _proc.recv_n(sock, struct.unpack("!i", head)[0])


def test_stdlib_client_echo(mpecho):
    with Client(mpecho, authkey=KEY.encode()) as conn:
        for obj in ["hello", {"a": [1, 2]}, b"x" * 200_000, None, 3.5]:
            conn.send(obj)
            assert conn.recv() == obj
        conn.send_bytes(pickle.dumps("raw"))
        assert conn.recv_bytes() == pickle.dumps("raw")


def test_wrong_key_refused_and_server_carries_on(mpecho):
    with pytest.raises(AuthenticationError):
        Client(mpecho, authkey=b"wrong")
    with Client(mpecho, authkey=KEY.encode()) as conn:
        conn.send("still here")
        assert conn.recv() == "still here"


def test_many_clients_at_once(mpecho):
    conns = [Client(mpecho, authkey=KEY.encode()) for _ in range(30)]
    errors = []

    def talk(conn, k):
        try:
            for i in range(30):
                conn.send((k, i, "x" * 100))
                assert conn.recv() == (k, i, "x" * 100)
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=talk, args=(c, k)) for k, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in conns:
        c.close()
    assert not errors


@pytest.mark.parametrize("header", [
    struct.pack("!i", 257), struct.pack("!i", 2**31 - 1), struct.pack("!i", -5),
    struct.pack("!i", -1) + struct.pack("!Q", 2**63),
])
def test_bad_preauth_frames_close_at_once(mpecho, header):
    """Refused from the header alone: the connection ends long before the auth deadline,
    though not one byte of the body was sent."""
    with socket.create_connection(mpecho, timeout=5) as sock:
        recv_frame(sock)                                  # the challenge
        sock.sendall(header)
        start = time.monotonic()
        assert closed_soon(sock, 0.9)
        assert time.monotonic() - start < 0.9
    with Client(mpecho, authkey=KEY.encode()) as conn:
        conn.send(1)
        assert conn.recv() == 1


def test_silent_and_dribbling_clients_do_not_delay_others(mpecho):
    silent = [socket.create_connection(mpecho, timeout=5) for _ in range(10)]
    dribbler = socket.create_connection(mpecho, timeout=5)
    try:
        challenge = recv_frame(dribbler)
        start = time.monotonic()
        with Client(mpecho, authkey=KEY.encode()) as conn:
            conn.send("served")
            assert conn.recv() == "served"
        assert time.monotonic() - start < 0.9             # not behind the silent ones (1 s)
        answer = struct.pack("!i", 16) + hmac.new(KEY.encode(), challenge[11:], "md5").digest()
        for i in range(len(answer) - 1):                  # a byte each 100 ms: never finishes
            try:
                dribbler.sendall(answer[i:i + 1])
            except OSError:
                break
            if select.select([dribbler], [], [], 0.1)[0]:
                break                                     # closed by the server already
        for sock in silent + [dribbler]:
            assert closed_soon(sock, 3.0)
        assert time.monotonic() - start < 3.0
    finally:
        for sock in silent + [dribbler]:
            sock.close()


class Canary:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_before_authentication_is_never_unpickled(mpecho, tmp_path):
    path = tmp_path / "unpickled"
    evil = pickle.dumps(Canary(path))
    assert len(evil) <= 256                                # fits the pre-auth limit
    key = KEY.encode()
    # 1. In place of the answer (and more of it pipelined behind).
    with socket.create_connection(mpecho, timeout=5) as sock:
        recv_frame(sock)
        sock.sendall((struct.pack("!i", len(evil)) + evil) * 3)
        assert recv_frame(sock) == b"#FAILURE#"
        assert closed_soon(sock, 2)
    # 2. A right answer, then the pickle in place of our challenge.
    with socket.create_connection(mpecho, timeout=5) as sock:
        challenge = recv_frame(sock)[len(b"#CHALLENGE#"):]
        mac = b"{sha256}" + hmac.new(key, challenge, "sha256").digest()
        sock.sendall(struct.pack("!i", len(mac)) + mac + struct.pack("!i", len(evil)) + evil)
        assert recv_frame(sock) == b"#WELCOME#"
        assert closed_soon(sock, 2)
    # 3. Right answer and challenge, then the pickle in place of #WELCOME#.
    with socket.create_connection(mpecho, timeout=5) as sock:
        challenge = recv_frame(sock)[len(b"#CHALLENGE#"):]
        mac = b"{sha256}" + hmac.new(key, challenge, "sha256").digest()
        ours = b"#CHALLENGE#{sha256}" + b"n" * 40
        sock.sendall(struct.pack("!i", len(mac)) + mac + struct.pack("!i", len(ours)) + ours
                     + struct.pack("!i", len(evil)) + evil)
        assert recv_frame(sock) == b"#WELCOME#"
        recv_frame(sock)                                    # its answer to our challenge
        assert closed_soon(sock, 2)
    assert not path.exists()
    with Client(mpecho, authkey=key) as conn:              # and it still serves
        conn.send("ok")
        assert conn.recv() == "ok"


def test_md5_refused_with_no_md5():
    with _proc.running("mpecho", "--authkey", KEY, "--no-md5") as (proc, endpoints):
        address = endpoints[0].address
        with socket.create_connection(address, timeout=5) as sock:   # a 3.11 client's answer
            challenge = recv_frame(sock)[len(b"#CHALLENGE#"):]
            digest = hmac.new(KEY.encode(), challenge, "md5").digest()
            sock.sendall(struct.pack("!i", 16) + digest)
            assert recv_frame(sock) == b"#FAILURE#"
        if sys.version_info >= (3, 12):
            with Client(address, authkey=KEY.encode()) as conn:
                conn.send(1)
                assert conn.recv() == 1


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("REACTOR_AUTHKEY", "from-env")
    with _proc.running("mpecho") as (proc, endpoints):
        with Client(endpoints[0].address, authkey=b"from-env") as conn:
            conn.send("env")
            assert conn.recv() == "env"


def test_non_ascii_key_is_its_utf8_bytes():
    """--authkey clé is b'cl\\xc3\\xa9': not its Latin-1 bytes, nor the key with the accent lost."""
    with _proc.running("mpecho", "--authkey", "clé") as (proc, endpoints):
        address = endpoints[0].address
        with Client(address, authkey="clé".encode()) as conn:
            conn.send({"clé": "valeur"})
            assert conn.recv() == {"clé": "valeur"}
        for other in ["cle".encode(), "clé".encode("latin-1")]:
            with pytest.raises(AuthenticationError):
                Client(address, authkey=other)


def test_a_key_that_is_not_utf8_is_the_bytes_typed():
    """A Latin-1 terminal's `--authkey clé` reaches argv as b'cl\\xe9': that key, no traceback."""
    typed = b"cl\xe9"
    with _proc.running("mpecho", "--authkey", os.fsdecode(typed)) as (proc, endpoints):
        with Client(endpoints[0].address, authkey=typed) as conn:
            conn.send("ok")
            assert conn.recv() == "ok"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr_text


def test_generated_key_printed_once_before_listening(monkeypatch):
    monkeypatch.delenv("REACTOR_AUTHKEY", raising=False)
    proc, keys, lines, address = start_printing_key("mpecho")
    try:
        assert len(keys) == 1 and lines[0].startswith("authkey ") and len(bytes.fromhex(keys[0])) == 32
        with Client(address, authkey=bytes.fromhex(keys[0])) as conn:
            conn.send([1, 2])
            assert conn.recv() == [1, 2]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and b"authkey" not in out


def test_raw_echo_and_message_limit():
    with _proc.running("mpecho", "--authkey", KEY, "--raw", "--max-message", "1000") as (proc, endpoints):
        address = endpoints[0].address
        with Client(address, authkey=KEY.encode()) as conn:
            conn.send({"raw": True})
            assert conn.recv() == {"raw": True}
            conn.send_bytes(b"not a pickle: echoed, never unpickled")
            assert conn.recv_bytes() == b"not a pickle: echoed, never unpickled"
            conn.send(b"x" * 2000)                     # over --max-message: reset
            with pytest.raises((EOFError, ConnectionResetError)):
                conn.recv()


def test_garbage_after_authentication_resets_only_that_client(mpecho):
    with Client(mpecho, authkey=KEY.encode()) as bad, Client(mpecho, authkey=KEY.encode()) as good:
        bad.send_bytes(b"not a pickle")
        with pytest.raises((EOFError, ConnectionResetError)):
            bad.recv()
        good.send("fine")
        assert good.recv() == "fine"


def test_sigterm_exits_zero():
    proc, endpoints = _proc.start("mpecho", "--authkey", KEY)
    with Client(endpoints[0].address, authkey=KEY.encode()) as conn:
        conn.send("x")
        assert conn.recv() == "x"
        assert _proc.stop(proc) == 0
