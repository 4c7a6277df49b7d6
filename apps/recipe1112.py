"""Recipe 11.12, "Understanding Event-Driven I/O", running on this reactor.

The classes below are the recipe's own, as the book writes them: its EventHandler base, the
UDP time and echo servers, and the TCP server that appends clients to a handler list.  Only
the loop differs.  The recipe's `event_loop(handlers)` asks every handler for its wants on
every turn and calls select(); here the handlers go to a Reactor, which asks only the handler
it just called.  The recipe's list becomes the reactor: `handler_list.append(h)` and
`handler_list.remove(h)` are the reactor's add and remove.

Kept from the recipe on purpose, as a lesson: its accepted sockets stay blocking, and its
TCPClient copies its whole outgoing buffer on every send (O(n^2) for big writes).  apps.echo
shows the production form of the same server.

    python -m apps.recipe1112 --port 14000     (time 14000, echo 15000, tcp echo 16000; 0: free ports)
"""
from __future__ import annotations

import socket
import sys
import time

from reactor import Reactor

from . import _cli


# -- the recipe's code ---------------------------------------------------------------------------

class EventHandler:
    def fileno(self):
        'Return the associated file descriptor'
        raise NotImplementedError('must implement')

    def wants_to_receive(self):
        'Return True if receiving is allowed'
        return False

    def handle_receive(self):
        'Perform the receive operation'
        pass

    def wants_to_send(self):
        'Return True if sending is requested'
        return False

    def handle_send(self):
        'Send outgoing data'
        pass


class UDPServer(EventHandler):
    def __init__(self, address):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def fileno(self):
        return self.sock.fileno()

    def wants_to_receive(self):
        return True


class UDPTimeServer(UDPServer):
    def handle_receive(self):
        msg, addr = self.sock.recvfrom(1)
        self.sock.sendto(time.ctime().encode('ascii'), addr)


class UDPEchoServer(UDPServer):
    def handle_receive(self):
        msg, addr = self.sock.recvfrom(8192)
        self.sock.sendto(msg, addr)


class TCPServer(EventHandler):
    def __init__(self, address, client_handler, handler_list):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
        self.sock.bind(address)
        self.sock.listen(1)
        self.client_handler = client_handler
        self.handler_list = handler_list

    def fileno(self):
        return self.sock.fileno()

    def wants_to_receive(self):
        return True

    def handle_receive(self):
        client, addr = self.sock.accept()
        # Add the client to the event loop's handler list
        self.handler_list.append(self.client_handler(client, self.handler_list))


class TCPClient(EventHandler):
    def __init__(self, sock, handler_list):
        self.sock = sock
        self.handler_list = handler_list
        self.outgoing = bytearray()

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()
        # Remove myself from the event loop's handler list
        self.handler_list.remove(self)

    def wants_to_send(self):
        return True if self.outgoing else False

    def handle_send(self):
        nsent = self.sock.send(self.outgoing)
        self.outgoing = self.outgoing[nsent:]


class TCPEchoClient(TCPClient):
    def wants_to_receive(self):
        return True

    def handle_receive(self):
        data = self.sock.recv(8192)
        if not data:
            self.close()
        else:
            self.outgoing.extend(data)


# -- the recipe's main, on the reactor -----------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = _cli.parser("Cookbook 11.12's own handlers on the reactor", 14000)
    args = p.parse_args(argv)
    _cli.setup_logging(args.log_level)
    ports = (0, 0, 0) if args.port == 0 else (args.port, args.port + 1000, args.port + 2000)
    reactor = Reactor()
    time_server = UDPTimeServer((args.host, ports[0]))
    echo_server = UDPEchoServer((args.host, ports[1]))
    tcp_server = TCPServer((args.host, ports[2]), TCPEchoClient, reactor)
    for handler in (time_server, echo_server, tcp_server):
        reactor.add(handler)
    return _cli.serve(reactor, [], args.grace, [
        ("udp", time_server.sock.getsockname(), "time"),
        ("udp", echo_server.sock.getsockname(), "echo"),
        ("tcp", tcp_server.sock.getsockname(), "echo")])


if __name__ == "__main__":
    sys.exit(main())
