"""Record the multiprocessing.connection handshake between real interpreters, frame by frame,
into tests/data/mpconn_<server>_<client>.txt (the transcripts test_mpconn.py replays on machines
without those interpreters).

    python tests/data/mpconn_record.py SERVER_PYTHON CLIENT_PYTHON OUTPUT

A stdlib Listener runs under SERVER_PYTHON, a stdlib Client under CLIENT_PYTHON, and this script
sits between them as a TCP relay that writes down every frame in both directions.  After the
handshake the client sends the string 'ping' and the server echoes it."""
import socket
import struct
import subprocess
import sys
import threading

AUTHKEY = b"transcript-key"
SERVER = f"""
import sys
from multiprocessing.connection import Listener
l = Listener(('127.0.0.1', 0), authkey={AUTHKEY!r})
print(l.address[1], flush=True)
c = l.accept()
c.send(c.recv())
c.close()
"""
CLIENT = """
import sys
from multiprocessing.connection import Client
c = Client(('127.0.0.1', int(sys.argv[1])), authkey={key!r})
c.send('ping')
assert c.recv() == 'ping'
c.close()
""".format(key=AUTHKEY)


def read_frame(sock):
    head = b""
    while len(head) < 4:
        data = sock.recv(4 - len(head))
        if not data:
            return None
        head += data
    n = struct.unpack("!i", head)[0]
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    return head + body


def main(server_py, client_py, output):
    server = subprocess.Popen([server_py, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    relay = socket.create_server(("127.0.0.1", 0))
    client = subprocess.Popen([client_py, "-c", CLIENT, str(relay.getsockname()[1])])
    c_sock, _ = relay.accept()
    s_sock = socket.create_connection(("127.0.0.1", port))
    frames, lock = [], threading.Lock()

    def pump(src, dst, tag):
        while (f := read_frame(src)) is not None:
            with lock:
                frames.append((tag, f))
            dst.sendall(f)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    threads = [threading.Thread(target=pump, args=(s_sock, c_sock, "S")),
               threading.Thread(target=pump, args=(c_sock, s_sock, "C"))]
    for t in threads:
        t.start()
    assert client.wait(30) == 0 and server.wait(30) == 0
    for t in threads:
        t.join(30)
    version = lambda py: subprocess.run([py, "-c", "import platform; print(platform.python_version())"],
                                        capture_output=True, text=True).stdout.strip()
    with open(output, "w") as f:
        f.write("# multiprocessing.connection over TCP, recorded by tests/data/mpconn_record.py\n")
        f.write(f"# server: Python {version(server_py)} Listener; client: Python {version(client_py)} Client\n")
        f.write(f"# authkey: {AUTHKEY.hex()}\n")
        f.write("# one frame (4-byte header + payload) per line, S = server to client, C = client to server\n")
        for tag, fr in frames:
            f.write(f"{tag} {fr.hex()}\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
