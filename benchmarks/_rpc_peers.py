# The Cookbook's own servers for recipes 11.6-11.8, as the RPC benchmark's reference peers:
#
#     python -m benchmarks._rpc_peers xmlrpc --host 127.0.0.1 --port 0                 (11.6)
#     python -m benchmarks._rpc_peers mpecho --host 127.0.0.1 --port 0 --authkey KEY   (11.7)
#     python -m benchmarks._rpc_peers rpc    --host 127.0.0.1 --port 0 --authkey KEY   (11.8)
#
# Each is the recipe's code as printed, with four changes that do not touch its speed: it binds
# the address given and prints the `listening` line the harness reads; it exits 0 on SIGTERM;
# the RPC server's accept loop survives a client that fails or drops its handshake (as printed,
# the exception ends the server, as the echo server's try/except prevents); and it does not
# print per request (SimpleXMLRPCServer's access log off, as the HTTP benchmark
# silences wsgiref's, and the echo server's "Connection closed" and tracebacks go to the debug
# log), because ours prints nothing per request either.
"""The recipes' XML-RPC KeyValueServer, Listener echo loop and threaded pickle RPC server."""
import argparse
import logging
import pickle
import signal
import sys
from multiprocessing.connection import Listener
from threading import Thread
from xmlrpc.server import SimpleXMLRPCServer

log = logging.getLogger(__name__)


# -- 11.6 ------------------------------------------------------------------------------------------

class KeyValueServer:
    _rpc_methods_ = ['get', 'set', 'delete', 'exists', 'keys']

    def __init__(self, address):
        self._data = {}
        self._serv = SimpleXMLRPCServer(address, allow_none=True, logRequests=False)
        for name in self._rpc_methods_:
            self._serv.register_function(getattr(self, name))

    def get(self, name):
        return self._data[name]

    def set(self, name, value):
        self._data[name] = value

    def delete(self, name):
        del self._data[name]

    def exists(self, name):
        return name in self._data

    def keys(self):
        return list(self._data)

    def serve_forever(self):
        self._serv.serve_forever()


# -- 11.7 ------------------------------------------------------------------------------------------

def echo_client(conn):
    try:
        while True:
            msg = conn.recv()
            conn.send(msg)
    except EOFError:
        log.debug('Connection closed')


def echo_server(serv):
    while True:
        try:
            client = serv.accept()
            echo_client(client)
        except Exception:
            log.debug("echo client failed", exc_info=True)


# -- 11.8 ------------------------------------------------------------------------------------------

class RPCHandler:
    def __init__(self):
        self._functions = {}

    def register_function(self, func):
        self._functions[func.__name__] = func

    def handle_connection(self, connection):
        try:
            while True:
                # Receive a message
                func_name, args, kwargs = pickle.loads(connection.recv())
                # Run the RPC and send a response
                try:
                    r = self._functions[func_name](*args, **kwargs)
                    connection.send(pickle.dumps(r))
                except Exception as e:
                    connection.send(pickle.dumps(e))
        except EOFError:
            pass


def rpc_server(handler, sock):
    while True:
        try:
            client = sock.accept()
        except Exception:       # added: as printed, one client failing its handshake ends it
            log.debug("handshake failed", exc_info=True)
            continue
        t = Thread(target=handler.handle_connection, args=(client,))
        t.daemon = True
        t.start()


def add(x, y):
    return x + y


def sub(x, y):
    return x - y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=["xmlrpc", "mpecho", "rpc"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--authkey", default="peekaboo")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    address = (args.host, args.port)
    if args.kind == "xmlrpc":
        kvserv = KeyValueServer(address)
        host, port = kvserv._serv.server_address[:2]
        print(f"listening http://{host}:{port} xmlrpc-recipe", flush=True)
        kvserv.serve_forever()
        return 0
    # The recipe's Listener: no backlog given, so multiprocessing's default of 1 (plus the
    # kernel's slack) holds the other clients while one is served.
    serv = Listener(address, authkey=args.authkey.encode())
    host, port = serv.address[:2]
    print(f"listening tcp://{host}:{port} {args.kind}-recipe", flush=True)
    try:
        if args.kind == "mpecho":
            echo_server(serv)
        else:
            handler = RPCHandler()
            handler.register_function(add)
            handler.register_function(sub)
            rpc_server(handler, serv)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
