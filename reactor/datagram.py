"""DatagramHandler: a UDP (or Unix datagram) socket, the recipe's `UDPServer`.

Datagrams are independent, so the handler drains up to `recv_batch` of them per readable event
(one select per datagram is what makes naive UDP servers slow), and sends at once, queueing
only when the kernel's buffer is full.  The queue is bounded in datagrams: UDP may drop, and a
server that queued without bound for a peer that vanished would only grow.  Errors the kernel
reports for earlier sends (ICMP port unreachable arrives as ConnectionRefusedError on the next
call) go to `error_received` and never close the socket.
"""
from __future__ import annotations

import collections
import logging
import socket
from typing import Any

from .handler import EventHandler

log = logging.getLogger(__name__)


class DatagramHandler(EventHandler):
    """One datagram socket: datagram_received in, sendto out."""

    max_datagram = 65535
    recv_batch = 32
    max_queue = 1024

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._queue: collections.deque = collections.deque()
        self._closed = False
        self.bytes_in = self.bytes_out = 0
        self.dropped = 0

    @property
    def address(self) -> Any:
        return self.sock.getsockname()

    def fileno(self) -> int:
        return self._fd

    def wants_to_receive(self) -> bool:
        return not self._closed

    def wants_to_send(self) -> bool:
        return bool(self._queue)

    def handle_receive(self) -> None:
        recvfrom, size = self.sock.recvfrom, self.max_datagram
        for _ in range(self.recv_batch):
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                if self._closed:
                    return
                continue
            self.bytes_in += len(data)
            self.datagram_received(data, addr)
            if self._closed:
                return

    def handle_send(self) -> None:
        queue = self._queue
        while queue:
            data, addr = queue[0]
            try:
                self.bytes_out += self.sock.sendto(data, addr) if addr is not None else self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.dropped += 1
                self.error_received(exc)
                if self._closed:
                    return
            queue.popleft()

    def sendto(self, data: bytes, addr: Any = None) -> None:
        """Send one datagram (to addr, or to the connected peer)."""
        if self._closed:
            return
        if not self._queue:
            try:
                self.bytes_out += self.sock.sendto(data, addr) if addr is not None else self.sock.send(data)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self.dropped += 1
                self.error_received(exc)
                return
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append((bytes(data), addr))
        if len(self._queue) == 1 and self.reactor is not None:
            self.reactor.update(self)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """A datagram arrived from addr."""

    def error_received(self, exc: OSError) -> None:
        """The kernel reported an error for this socket (often an earlier send's ICMP)."""
        log.debug("%r: %s", self, exc)

    def handle_close(self) -> None:
        self._closed = True
        self._queue.clear()
        self.sock.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd}>"


def bind_udp(reactor, host: str | None, port: int, factory, **options: Any) -> EventHandler:
    """Bind a UDP socket on host:port (0 picks one) and add factory(sock) to the reactor."""
    family, type_, proto, _, sockaddr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.bind(sockaddr)
        return reactor.add(factory(sock, **options))
    except BaseException:
        sock.close()
        raise
