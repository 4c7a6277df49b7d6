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

from protocols.mpconn import MPClientHandler, MPConnectionHandler
from reactor import connect_tcp

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
    got = []
    class C(MPClientHandler):
        authkey = sys.argv[2].encode()
        def authenticated(self):
            self.send({'from': sys.version_info[:2]})
        def message_received(self, obj):
            got.append(obj)
            self.close()
    r = Reactor()
    connect_tcp(r, '127.0.0.1', int(sys.argv[1]), C)
    run_until(r, lambda: got, timeout=10)
    print('ok', got[0])
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


def test_our_client_under_that_interpreter():
    """Our reactor client run by each interpreter against this interpreter's stdlib Listener."""
    pythons = [p for p in map(interpreter, VERSIONS) if p]
    for python in pythons:
        listener = Listener(("127.0.0.1", 0), authkey=KEY)
        proc = subprocess.Popen([python, "-c", OUR_CLIENT, str(listener.address[1]), KEY.decode()],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn = listener.accept()
            obj = conn.recv()
            conn.send(("back", obj))
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
            assert out.startswith("ok ('back'"), out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            listener.close()
