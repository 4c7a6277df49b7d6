"""Our multiprocessing.connection handlers against the real stdlib, in every interpreter this
machine has: Python 3.11's Client and Listener speak the HMAC-MD5 form, 3.12+ the `{sha256}`
form.  The stdlib side runs as a subprocess of that interpreter; our side runs on a reactor in
this one.  (Machines without an interpreter skip it; test_mpconn.py replays recorded
transcripts of every pairing.)"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from multiprocessing import AuthenticationError as StdAuthenticationError
from multiprocessing.connection import Client, Listener

import pytest

from protocols.mpconn import CHALLENGE, MPClientHandler, MPConnectionHandler
from reactor import connect_tcp
from tests.protocols.test_mpconn import DATA, load_transcript

KEY = b"interop-key"
VERSIONS = ("3.11", "3.12", "3.13")


def interpreter(version: str) -> str | None:
    """A python executable of that version: on PATH, or one pyenv installed."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for path in sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python"))):
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(f"python{version}")
    if found and "/shims/" not in found:        # a pyenv shim may name a version it cannot run
        return found
    return None


@pytest.fixture(params=VERSIONS)
def python(request):
    path = interpreter(request.param)
    if path is None:
        pytest.skip(f"no Python {request.param} interpreter on this machine")
    return path


class Echo(MPConnectionHandler):
    authkey = KEY
    auth_timeout = 5.0

    def message_received(self, obj):
        self.send(obj)


class StrictEcho(Echo):
    allow_legacy_md5 = False


CLIENT = textwrap.dedent("""
    import sys
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client
    port, key = int(sys.argv[1]), sys.argv[2].encode()
    try:
        c = Client(('127.0.0.1', port), authkey=key)
    except AuthenticationError as exc:
        print('refused', exc)
        sys.exit(0)
    for obj in ['ping', {'a': [1, 2.5, None]}, b'x' * 100000, (1, 2)]:
        c.send(obj)
        assert c.recv() == obj, obj
    print('ok', sys.version_info[:2])
""")


def run_client(python: str, port: int, key: bytes) -> str:
    proc = subprocess.run([python, "-c", CLIENT, str(port), key.decode()], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_stdlib_client_against_our_server(python, serve_in_thread):
    host, port = serve_in_thread(Echo)
    assert run_client(python, port, KEY).startswith("ok")


def test_stdlib_client_with_a_wrong_key(python, serve_in_thread):
    host, port = serve_in_thread(Echo)
    assert run_client(python, port, b"wrong").startswith("refused")


def test_md5_refused_when_configured(python, serve_in_thread):
    """allow_legacy_md5=False: 3.12+ clients get in, a 3.11 client (MD5 only) does not."""
    host, port = serve_in_thread(StrictEcho)
    out = run_client(python, port, KEY)
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2] >= (3, 12))"],
                             capture_output=True, text=True).stdout.strip()
    if version == "True":
        assert out.startswith("ok")
    else:
        assert out.startswith("refused")


def test_many_stdlib_clients_at_once(serve_in_thread):
    host, port = serve_in_thread(Echo)
    errors, clients = [], [Client((host, port), authkey=KEY) for _ in range(20)]

    def talk(conn, k):
        try:
            for i in range(50):
                conn.send((k, i))
                assert conn.recv() == (k, i)
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=talk, args=(c, k)) for k, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    assert not errors


LISTENER = textwrap.dedent("""
    import sys
    from multiprocessing.connection import Listener
    key = sys.argv[1].encode()
    l = Listener(('127.0.0.1', 0), authkey=key)
    print(l.address[1], flush=True)
    try:
        c = l.accept()
    except Exception as exc:
        print('refused', type(exc).__name__, flush=True)
        sys.exit(0)
    while True:
        try:
            obj = c.recv()
        except EOFError:
            break
        c.send(('echo', obj))
    print('done', flush=True)
""")


class Collector(MPClientHandler):
    authkey = KEY
    auth_timeout = 5.0
    to_send = ["ping", {"n": 1}, b"y" * 70000]

    def __init__(self, sock, address=None):
        super().__init__(sock, address)
        self.got, self.lost = [], []

    def authenticated(self):
        for obj in self.to_send:
            self.send(obj)

    def message_received(self, obj):
        self.got.append(obj)
        if len(self.got) == len(self.to_send):
            self.close()

    def connection_lost(self, exc):
        self.lost.append(exc)


def start_listener(python: str, key: bytes) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([python, "-c", LISTENER, key.decode()], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


@pytest.mark.parametrize("key", [KEY, b"wrong"])
def test_our_client_against_stdlib_listener(python, rt, key):
    proc, port = start_listener(python, KEY)
    try:
        cls = type("C", (Collector,), {"authkey": key})
        connector = rt.call(connect_tcp, rt.reactor, "127.0.0.1", port, cls)
        rt.wait_for(lambda: connector.handler is not None and connector.handler.lost, timeout=10)
        handler = connector.handler
        if key == KEY:
            assert handler.got == [("echo", obj) for obj in Collector.to_send]
            assert handler.lost == [None]
            assert proc.stdout.read().strip() == "done"
        else:
            assert handler.got == [] and not handler.is_authenticated
            assert proc.stdout.read().startswith("refused AuthenticationError")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_our_client_against_listener_in_this_process(rt):
    """The same with the stdlib Listener in a thread here (no subprocess)."""
    listener = Listener(("127.0.0.1", 0), authkey=KEY)
    result = []

    def serve():
        conn = listener.accept()
        result.append(conn.recv())
        conn.send("thanks")
        conn.close()
    thread = threading.Thread(target=serve)
    thread.start()
    cls = type("C", (Collector,), {"to_send": ["hello"]})
    connector = rt.call(connect_tcp, rt.reactor, *listener.address, cls)
    rt.wait_for(lambda: connector.handler is not None and connector.handler.lost)
    thread.join(10)
    listener.close()
    assert result == ["hello"] and connector.handler.got == ["thanks"]


def test_stdlib_refuses_our_server_with_another_key(serve_in_thread):
    host, port = serve_in_thread(type("Other", (Echo,), {"authkey": b"not the key"}))
    with pytest.raises(StdAuthenticationError):
        Client((host, port), authkey=KEY)


# -- the other way round: our reactor under that interpreter, the stdlib of this one ------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OUR_CLIENT = textwrap.dedent("""
    import sys
    from protocols.mpconn import MPClientHandler
    from reactor import Reactor, connect_tcp
    from reactor.testing import run_until
    got, lost = [], []
    class C(MPClientHandler):
        authkey = sys.argv[2].encode()
        auth_timeout = 5.0
        def authenticated(self):
            self.send({'from': sys.version_info[:2]})
        def message_received(self, obj):
            got.append(obj)
            self.close()
        def connection_lost(self, exc):
            lost.append(exc)
    r = Reactor()
    connector = connect_tcp(r, '127.0.0.1', int(sys.argv[1]), C)
    run_until(r, lambda: lost, timeout=10)
    if got:
        print('ok', got[0])
    else:
        print('refused', 'authenticated' if connector.handler.is_authenticated else 'not authenticated')
""")


def test_our_server_under_that_interpreter(python):
    """apps.mpecho run by that interpreter; this interpreter's stdlib Client talks to it."""
    proc = subprocess.Popen([python, "-m", "apps.mpecho", "--port", "0", "--authkey", KEY.decode()],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1].split()[0])
        with Client(("127.0.0.1", port), authkey=KEY) as conn:
            conn.send(["across", 3])
            assert conn.recv() == ["across", 3]
        with pytest.raises(StdAuthenticationError):
            Client(("127.0.0.1", port), authkey=b"wrong")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


@pytest.mark.parametrize("key", [KEY, b"wrong"])
def test_our_client_under_that_interpreter(python, key):
    """Our reactor client run by that interpreter against this interpreter's stdlib Listener;
    with another key the Listener refuses it and our client is closed unauthenticated."""
    listener = Listener(("127.0.0.1", 0), authkey=KEY)
    proc = subprocess.Popen([python, "-c", OUR_CLIENT, str(listener.address[1]), key.decode()],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if key == KEY:
            conn = listener.accept()
            obj = conn.recv()
            conn.send(("back", obj))
            conn.close()
        else:
            with pytest.raises(StdAuthenticationError):
                listener.accept()
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        if key == KEY:
            version = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                                     capture_output=True, text=True, timeout=20).stdout.strip()
            assert out.strip() == "ok ('back', {'from': %s})" % version, out
        else:
            assert out.strip() == "refused not authenticated", out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()


# -- the recorded transcripts that stand in for these interpreters elsewhere -------------------------

@pytest.mark.parametrize("client", VERSIONS)
@pytest.mark.parametrize("server", VERSIONS)
def test_a_recorded_transcript_for_every_pairing(server, client):
    """test_mpconn.py replays every tests/data/mpconn_py*_py*.txt it finds, so a missing one
    would pass unnoticed there: all nine pairings must exist (tests/data/mpconn_record.py makes
    them), recorded by those interpreters, each side challenging in its version's form."""
    path = DATA / f"mpconn_py{server.replace('.', '')}_py{client.replace('.', '')}.txt"
    assert path.exists(), f"record it: python {DATA / 'mpconn_record.py'} SERVER CLIENT {path}"
    assert f"# server: Python {server}." in path.read_text()
    assert f" Listener; client: Python {client}." in path.read_text()
    key, frames = load_transcript(path)
    challenges = {tag: data[4:] for tag, data in reversed(frames) if data[4:].startswith(CHALLENGE)}
    for tag, version in (("S", server), ("C", client)):
        if version == "3.11":
            assert len(challenges[tag]) == len(CHALLENGE) + 20, tag          # raw 20 bytes, MD5
        else:
            assert challenges[tag].startswith(CHALLENGE + b"{sha256}"), tag
    assert frames[-2:] == [("C", frames[-1][1]), ("S", frames[-1][1])]        # 'ping' echoed
