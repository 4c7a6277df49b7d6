"""Worker processes (Cookbook 11.11): one acceptor hands accepted sockets to worker reactors.

Why it has this shape
---------------------
The recipe's `send_handle`/`recv_handle` are `socket.send_fds`/`recv_fds` underneath: the
descriptor rides as SCM_RIGHTS ancillary data on a Unix socket.  Here each worker has one
`SOCK_SEQPACKET` socketpair to the parent, its *channel*, because a seqpacket socket keeps
message boundaries (one hand-off is one message: no framing, no descriptor landing beside the
wrong bytes) and still reports EOF when its peer dies.  That EOF is the whole of death
detection in both directions: the parent learns at once that a worker is gone (then reaps and
replaces it), and a worker whose parent died stops by itself instead of serving as an orphan.

Processes are made with a plain `os.fork()`, after the app built everything it needs:

  * the app's `make_factory` may be a closure over its parsed flags, a loaded WSGI app, an
    `SSLContext`; none of that pickles, so `spawn` (or `forkserver`) would have to re-import the
    app and re-parse its argv in every worker, and a replacement would take ~100 ms of
    interpreter start-up instead of ~1 ms;
  * `make_factory()` runs in the worker, after the fork, so thread pools and per-process state
    belong to the worker (a thread does not survive a fork);
  * not `multiprocessing`'s fork context: its two sentinel pipes per worker are inherited by
    every later sibling (the channel already tells life from death), and which descriptors a
    worker holds must be exact, or a sibling keeps a dead peer's channel open and the EOF that
    signals death never comes.
The child drops what it inherited from the parent's reactor (listening sockets, other channels,
connections, the waker, the epoll descriptor) by closing *our copies* through their Python
objects: never `unregister`, since the epoll instance is shared with the parent and
`epoll_ctl(DEL)` in the child would silently remove the parent's registrations.  SIGINT and
SIGTERM are blocked across the fork, so a stop signal aimed at a brand-new worker is kept until
it can stop gracefully.

Balancing is least-outstanding: each worker reports (batched, every 10 ms at most) how many of
its connections ended, the parent keeps handed minus ended per worker, and ties go round
robin.  A burst of persistent connections thus splits evenly, and a worker stuck on a slow
request gets fewer new ones.  The acceptor never blocks on a worker: a channel that would block
(its worker is not reading) is marked blocked and skipped until it is writable again; when every
channel is blocked the socket waits in a bounded queue, and at the bound the listener stops
accepting, so the kernel's backlog holds the rest (backpressure all the way to the clients).
The price of a hand-off is one more process hop per *connection* (accept, sendmsg, close here;
recvmsg, adopt there), nothing per byte: on 2 busy cores a new connection per request ran at
~9k/s through one worker against ~15k/s in-process, while persistent connections do not notice.

With `reuse_port=True` nothing is handed over: the parent binds the port first (so `--port 0`
learns a port), without listening, and keeps that socket so the port stays reserved while
workers come and go; each worker binds the same port with SO_REUSEPORT and listens, and the
kernel spreads connections over the workers' accept queues.

What arrives on a channel and is not exactly one hand-off (one message, one stream socket) is
refused and every descriptor that came with it is closed: extra descriptors, descriptors with an
empty message, a truncated message (MSG_TRUNC) or truncated control data (MSG_CTRUNC: the kernel
already closed those that did not fit), descriptors that are not stream sockets.  A connection
in flight to a worker that dies is lost (the kernel closes it with the dead worker's queue):
its client sees a reset and retries.  Linux first: `SOCK_SEQPACKET` for AF_UNIX and
SO_REUSEPORT balancing are what this is written and tested against.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import signal
import socket
import struct
import sys
import time
import weakref
from typing import Any, Callable, Iterable

from .core import Reactor
from .handler import EventHandler
from .listener import Listener, listen_tcp, reset
from .tls import tls_server_factory

log = logging.getLogger(__name__)

Factory = Callable[[socket.socket, Any], EventHandler]

MAX_MESSAGE = 512          # a hand-off is b"H" + the peer address as JSON: well under this
MAX_FDS = 8                # room for more than the one expected, so extras are seen and closed
MAX_PENDING = 256          # sockets waiting for a channel before the acceptor stops accepting
MIN_UPTIME = 1.0           # a worker that dies younger than this is restarted with back-off
MAX_BACKOFF = 5.0
REPORT_DELAY = 0.01        # a worker reports ended connections at most this often
STOP_MARGIN = 2.0          # after grace: how long to wait before SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_BLOCKED_ERRNOS = frozenset({errno.ENOBUFS, errno.ENOMEM,
                             getattr(errno, "ETOOMANYREFS", errno.ENOBUFS)})
_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

_pools: weakref.WeakSet = weakref.WeakSet()     # live pools: a fork closes what each holds
_early_signals: list[int] = []                  # stop signals a new worker got before its reactor


# -- the channel --------------------------------------------------------------------------------

def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A (parent end, worker end) pair, both non-blocking."""
    parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent_end.setblocking(False)
    worker_end.setblocking(False)
    return parent_end, worker_end


def close_fds(fds: Iterable[int]) -> None:
    """Close raw descriptors that arrived and will not be used."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def recv_message(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """One message and the descriptors that came with it; None at EOF.

    A message cut short (MSG_TRUNC) or whose descriptors did not all fit (MSG_CTRUNC) cannot be
    trusted: the descriptors received are closed here and (b"", []) is returned.  Raises
    BlockingIOError when nothing is waiting."""
    msg, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS, _RECV_FLAGS)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        log.warning("channel fd %d: truncated message (flags %#x): closing %d descriptor(s)",
                    sock.fileno(), flags, len(fds))
        close_fds(fds)
        return b"", []
    if not msg and not fds:
        return None
    return msg, fds


def _encode_handoff(addr: Any) -> bytes:
    if isinstance(addr, tuple):
        addr = list(addr)
    elif not isinstance(addr, (str, type(None))):
        addr = None                  # an abstract or bytes Unix address: not worth carrying
    return b"H" + json.dumps(addr, separators=(",", ":")).encode()


def _decode_handoff(msg: bytes) -> Any:
    addr = json.loads(msg[1:])
    return tuple(addr) if isinstance(addr, list) else addr


# -- the worker's side --------------------------------------------------------------------------

class WorkerChannel(EventHandler):
    """A worker's end of its channel: adopts each socket handed over, reports ended connections.

    It stands in for the Listener the worker does not have: handlers built here get it as their
    `listener`, so the reactor tells it when each one leaves.  Without a factory (reuse-port
    mode) it only watches for the parent's death, and every descriptor sent is refused."""

    batch = 64

    def __init__(self, sock: socket.socket, factory: Factory | None = None, *,
                 on_parent_gone: Callable[[], Any] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.factory = factory
        self.on_parent_gone = on_parent_gone
        self.connections: set[EventHandler] = set()
        self.adopted = self.refused = 0
        self._fd = sock.fileno()
        self._unreported = 0
        self._report_timer: Any = None
        self._report_soon = False
        self._stopping = self._gone = False

    def fileno(self) -> int:
        return self._fd

    def wants_to_receive(self) -> bool:
        return not self._gone

    def handle_receive(self) -> None:
        for _ in range(self.batch):
            try:
                got = recv_message(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("channel: %s", exc)
                got = None
            if got is None:
                self._parent_gone()
                return
            self._message(*got)

    def _message(self, msg: bytes, fds: list[int]) -> None:
        if self._stopping:               # stopping: nothing new is served, nothing is kept
            close_fds(fds)
            return
        if self.factory is None or msg[:1] != b"H" or len(fds) != 1:
            self.refused += 1
            log.warning("channel: unexpected message %r with %d descriptor(s): closed",
                        msg[:16], len(fds))
            close_fds(fds)
            return
        try:
            addr = _decode_handoff(msg)
        except ValueError:
            self.refused += 1
            log.warning("channel: hand-off with a malformed address %r: closed", msg[:32])
            close_fds(fds)
            return
        self._adopt(fds[0], addr)

    def _adopt(self, fd: int, addr: Any) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:           # not a socket: socket() did not take it, close it here
            self.refused += 1
            log.warning("channel: descriptor handed over is not a socket (%s): closed", exc)
            close_fds([fd])
            return
        if sock.type != socket.SOCK_STREAM:
            self.refused += 1
            log.warning("channel: handed a non-stream socket (%s): closed", sock.type)
            sock.close()
            return
        try:
            handler = self.factory(sock, addr)
        except Exception as exc:         # that peer's problem (it may already be gone)
            log.error("cannot build a handler for %r: %s", addr, exc, exc_info=exc)
            reset(sock)
            return
        self.adopted += 1
        handler.listener = self
        self.connections.add(handler)
        self.reactor.add(handler)

    def connection_closed(self, handler: EventHandler) -> None:
        """One of ours ended: counted, and reported to the parent at most every REPORT_DELAY
        (one message per ended connection would wake the acceptor once per request)."""
        if handler not in self.connections:
            return
        self.connections.discard(handler)
        self._unreported += 1
        if not self._report_soon and self.reactor is not None:
            self._report_soon = True
            self._report_timer = self.reactor.call_later(REPORT_DELAY, self._report)

    def _report(self) -> None:
        self._report_soon, self._report_timer = False, None
        if not self._unreported or self._gone:
            return
        try:
            self.sock.send(b"C" + struct.pack("!I", self._unreported))
        except (BlockingIOError, InterruptedError):     # the parent is busy: try again shortly
            self._report_soon = True
            self._report_timer = self.reactor.call_later(0.05, self._report)
            return
        except OSError:
            return                       # the parent is gone; EOF will say so
        self._unreported = 0

    def send_ready(self) -> None:
        """Tell the parent this worker serves (its listening line waits for every worker)."""
        self.sock.send(b"R")

    def stop(self) -> None:
        """Stop adopting: whatever still arrives is closed (the parent stopped sending)."""
        self._stopping = True

    def _parent_gone(self) -> None:
        if self._gone:
            return
        self._gone = True
        if self.reactor is not None:
            self.reactor.update(self)
        log.info("channel: the parent is gone")
        if self.on_parent_gone is not None:
            self.on_parent_gone()

    def handle_close(self) -> None:
        self._gone = True
        if self._report_timer is not None:
            self._report_timer.cancel()
        for _ in range(MAX_PENDING):     # close whatever is still queued for us
            try:
                got = recv_message(self.sock)
            except OSError:
                break
            if got is None:
                break
            close_fds(got[1])
        self.sock.close()

    def __repr__(self) -> str:
        return f"<WorkerChannel fd={self._fd} connections={len(self.connections)}>"


def _serve_worker(reactor: Reactor, channel: WorkerChannel, listeners: list[Listener],
                  grace: float) -> int:
    """Run a worker until SIGINT/SIGTERM or its parent's death, then stop as apps do: stop
    accepting, let connections flush within grace, close the rest."""
    stopping = []

    def shutdown(why: str) -> None:
        if stopping:
            return
        stopping.append(why)
        log.info("worker %d: %s, stopping (grace %.1f s)", os.getpid(), why, grace)
        connections = set(channel.connections)
        for listener in listeners:
            connections.update(listener.connections)
            listener.close()
        channel.stop()
        for conn in connections:
            conn.close()
        deadline = reactor.time() + grace

        def wait() -> None:
            if all(conn not in reactor.handlers for conn in connections) or reactor.time() >= deadline:
                reactor.stop()
            else:
                reactor.call_later(0.02, wait)
        wait()

    for sig in STOP_SIGNALS:
        reactor.add_signal_handler(sig, shutdown, signal.Signals(sig).name)
    channel.on_parent_gone = functools.partial(shutdown, "parent gone")
    if _early_signals:
        reactor.call_soon(shutdown, signal.Signals(_early_signals[0]).name)
    channel.send_ready()
    try:
        reactor.run()
    finally:
        reactor.close()
    return 0


def run_handoff_worker(channel: socket.socket, *, make_factory: Callable[[], Factory],
                       grace: float = 3.0, ssl_context: Any = None) -> int:
    """A worker's life in hand-off mode: adopt what the acceptor sends until told to stop.
    The acceptor only ever sees TCP; TLS (reactor.tls) is the worker's."""
    reactor = Reactor()
    factory = make_factory()
    if ssl_context is not None:
        factory = tls_server_factory(factory, ssl_context)
    receiver = reactor.add(WorkerChannel(channel, factory))
    return _serve_worker(reactor, receiver, [], grace)


def run_reuse_port_worker(channel: socket.socket, *, make_factory: Callable[[], Factory],
                          address: tuple, grace: float = 3.0, ssl_context: Any = None,
                          **listen_options: Any) -> int:
    """A worker's life in reuse-port mode: its own SO_REUSEPORT listener on the shared port."""
    reactor = Reactor()
    listener = listen_tcp(reactor, address[0], address[1], make_factory(), reuse_port=True,
                          ssl_context=ssl_context, **listen_options)
    control = reactor.add(WorkerChannel(channel))
    return _serve_worker(reactor, control, [listener], grace)


# -- the parent's side --------------------------------------------------------------------------

class _Worker:
    """The parent's record of one worker process."""

    __slots__ = ("slot", "pid", "channel", "ready", "was_ready", "outstanding", "handed",
                 "started", "exit_status", "reap_tries", "reap_timer", "alive")

    def __init__(self, slot: int, pid: int | None, channel: _ParentChannel, started: float) -> None:
        self.slot, self.pid, self.channel, self.started = slot, pid, channel, started
        self.ready = self.was_ready = False
        self.alive = True            # channel open; False once lost (the process may linger)
        self.outstanding = self.handed = 0
        self.exit_status: int | None = None
        self.reap_tries = 0
        self.reap_timer: Any = None


class _ParentChannel(EventHandler):
    """The parent's end of one worker's channel: reads its reports, notices its death."""

    def __init__(self, pool: WorkerPool, sock: socket.socket) -> None:
        self.pool, self.sock = pool, sock
        self.worker: _Worker | None = None
        self.blocked = False            # the last send would have blocked: wait for writable
        self.held = False               # a kernel-wide limit (ETOOMANYREFS): wait on a timer
        self._fd = sock.fileno()

    def fileno(self) -> int:
        return self._fd

    def wants_to_receive(self) -> bool:
        return True

    def wants_to_send(self) -> bool:
        return self.blocked

    def handle_receive(self) -> None:
        pool, worker = self.pool, self.worker
        for _ in range(64):
            try:
                got = recv_message(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                pool._lost(worker, exc)
                return
            if got is None:
                pool._lost(worker)
                return
            pool._message(worker, *got)

    def handle_send(self) -> None:
        self.blocked = False
        self.pool._flush()

    def handle_error(self, exc: BaseException) -> None:
        log.error("channel of worker %s failed", self.worker and self.worker.pid, exc_info=exc)
        self.pool._lost(self.worker, exc)

    def handle_close(self) -> None:
        self.sock.close()

    def __repr__(self) -> str:
        return f"<worker channel fd={self._fd} pid={self.worker and self.worker.pid}>"


class WorkerPool:
    """Forks `count` workers that each run worker_main(channel) -> exit status, keeps that many
    alive, balances hand-offs over them, and stops them.

    on_ready() runs once, when every first worker reported ready; on_failure(reason) when a
    first worker died before that (the app cannot start: its workers would die again)."""

    def __init__(self, reactor: Reactor, count: int, worker_main: Callable[[socket.socket], int], *,
                 max_pending: int = MAX_PENDING, max_connections: int | None = None,
                 on_ready: Callable[[], Any] | None = None,
                 on_failure: Callable[[str], Any] | None = None) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.reactor = reactor
        self.count = count
        self.worker_main = worker_main
        self.max_pending = max_pending
        self.max_connections = max_connections
        self.on_ready, self.on_failure = on_ready, on_failure
        self.listener: Listener | None = None      # woken when room appears (HandoffListener)
        self.workers: list[_Worker | None] = [None] * count
        self.restarts = 0
        self._pending: list[tuple[socket.socket, Any]] = []     # FIFO, at most max_pending
        self._inherited: list[Any] = []
        self._rr = 0
        self._starting = True
        self._stopping = False
        self._on_stopped: Callable[[], Any] | None = None
        self._kill_timer: Any = None
        self._restart_timers: dict[int, Any] = {}
        self._backoff = [0.1] * count
        _pools.add(self)

    # -- life and death ------------------------------------------------------------------------

    def start(self) -> WorkerPool:
        """Fork every worker (their readiness arrives later, through the reactor)."""
        for slot in range(self.count):
            self._start(slot)
        return self

    def close_in_child(self, obj: Any) -> None:
        """Something with close() that the parent holds and a worker must not inherit."""
        self._inherited.append(obj)

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (those not yet reaped)."""
        return [w.pid for w in self.workers if w is not None and w.pid is not None]

    @property
    def ready(self) -> bool:
        return all(w is not None and w.ready and w.alive for w in self.workers)

    def _start(self, slot: int) -> None:
        self._restart_timers.pop(slot, None)
        if self._stopping:
            return
        pid, sock = self._spawn(slot)
        channel = _ParentChannel(self, sock)
        worker = _Worker(slot, pid, channel, time.monotonic())
        channel.worker = worker
        self.workers[slot] = worker
        self.reactor.add(channel)
        log.info("worker %d started (pid %s)", slot, pid)

    def _spawn(self, slot: int) -> tuple[int | None, socket.socket]:
        """Fork one worker; return (pid, the parent's end of its channel).  Tests override this
        to run a "worker" in-process (pid None)."""
        parent_end, worker_end = channel_pair()
        for stream in (sys.stdout, sys.stderr):      # or the child inherits buffered output
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            parent_end.close()
            worker_end.close()
            raise
        if pid == 0:                                       # the worker: never returns
            code = 1
            try:
                parent_end.close()
                _leave_parent(self.reactor, mask)
                code = self.worker_main(worker_end)
                code = code if isinstance(code, int) else 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d (pid %d) failed", slot, os.getpid())
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except BaseException:
                        pass
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker_end.close()
        return pid, parent_end

    def _lost(self, worker: _Worker | None, exc: BaseException | None = None) -> None:
        """The worker's channel is gone: it died (or is dying).  Reap it, then replace it."""
        if worker is None or not worker.alive:
            return
        worker.alive = worker.ready = False
        if exc is not None:
            log.debug("channel of worker %s: %s", worker.pid, exc)
        self.reactor.remove(worker.channel)
        self._reap(worker)
        self._flush()
        self._wake()

    def _reap(self, worker: _Worker) -> None:
        worker.reap_timer = None
        if worker.pid is None:
            self._exited(worker)
            return
        try:
            pid, status = os.waitpid(worker.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = worker.pid, None
        if pid == 0:                     # closed its channel but not yet a zombie
            worker.reap_tries += 1
            if worker.reap_tries == 500 and not self._stopping:     # ~50 s: it lives on
                log.warning("worker pid %d closed its channel but runs on: killing it", worker.pid)
                _kill(worker.pid, signal.SIGKILL)
            worker.reap_timer = self.reactor.call_later(
                min(0.1, 0.002 * 2 ** min(worker.reap_tries, 6)), self._reap, worker)
            return
        worker.exit_status = None if status is None else os.waitstatus_to_exitcode(status)
        self._exited(worker)

    def _exited(self, worker: _Worker) -> None:
        slot, status, pid = worker.slot, worker.exit_status, worker.pid
        if self.workers[slot] is worker:
            self.workers[slot] = None
        if self._stopping:
            log.info("worker %d (pid %s) exited with status %s", slot, pid, status)
            self._check_stopped()
            return
        if self._starting and not worker.was_ready and self.on_failure is not None:
            reason = f"worker {slot} (pid {pid}) exited with status {status} before it was ready"
            log.error("%s", reason)
            self.on_failure(reason)
            return
        uptime = time.monotonic() - worker.started
        if worker.was_ready and uptime >= MIN_UPTIME:
            self._backoff[slot], delay = 0.1, 0.0
        else:                                # dies young: do not fork in a tight loop
            delay = self._backoff[slot]
            self._backoff[slot] = min(MAX_BACKOFF, delay * 2)
        log.warning("worker %d (pid %s) exited with status %s after %.1f s; replacing it%s",
                    slot, pid, status, uptime, f" in {delay:.1f} s" if delay else "")
        self.restarts += 1
        if delay:
            self._restart_timers[slot] = self.reactor.call_later(delay, self._start, slot)
        else:
            self._start(slot)

    def _message(self, worker: _Worker, msg: bytes, fds: list[int]) -> None:
        if fds:
            log.warning("worker pid %s sent %d descriptor(s): closed", worker.pid, len(fds))
            close_fds(fds)
        kind = msg[:1]
        if kind == b"C" and len(msg) == 5:
            worker.outstanding = max(0, worker.outstanding - struct.unpack("!I", msg[1:])[0])
            self._wake()
        elif msg == b"R":
            worker.ready = worker.was_ready = True
            log.info("worker %d (pid %s) ready", worker.slot, worker.pid)
            if self._starting and self.ready:
                self._starting = False
                if self.on_ready is not None:
                    self.on_ready()
            self._flush()
            self._wake()
        elif msg:
            log.warning("worker pid %s sent an unknown message %r", worker.pid, msg[:16])

    # -- hand-off ------------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Connections handed to live workers and not yet reported ended."""
        return sum(w.outstanding for w in self.workers if w is not None and w.alive)

    @property
    def pending(self) -> int:
        """Accepted sockets waiting for a channel."""
        return len(self._pending)

    def has_room(self) -> bool:
        """Whether the acceptor may accept more (the pending queue and max_connections)."""
        if len(self._pending) >= self.max_pending:
            return False
        return (self.max_connections is None
                or self.outstanding + len(self._pending) < self.max_connections)

    def dispatch(self, conn: socket.socket, addr: Any) -> None:
        """Hand conn to the least-loaded worker that can take it now, else queue it; never
        blocks.  The parent's copy is closed once it is on its way."""
        if self._stopping:
            reset(conn)
            return
        if not self._pending:
            while (worker := self._choose()) is not None:
                if self._send(worker, conn, addr):
                    return
        self._pending.append((conn, addr))

    def _choose(self) -> _Worker | None:
        """The ready, unblocked worker with the fewest outstanding connections; ties go round
        robin from the one after the last chosen."""
        best, workers, n = None, self.workers, self.count
        for i in range(n):
            w = workers[(self._rr + i) % n]
            if (w is not None and w.ready and not w.channel.blocked and not w.channel.held
                    and (best is None or w.outstanding < best.outstanding)):
                best = w
        if best is not None:
            self._rr = (best.slot + 1) % n
        return best

    def _send(self, worker: _Worker, conn: socket.socket, addr: Any) -> bool:
        channel = worker.channel
        try:
            socket.send_fds(channel.sock, [_encode_handoff(addr)], [conn.fileno()])
        except (BlockingIOError, InterruptedError):
            channel.blocked = True       # writable again -> handle_send -> _flush
            self.reactor.update(channel)
            return False
        except OSError as exc:
            if exc.errno in _BLOCKED_ERRNOS:     # kernel-wide limits: writability will not say
                channel.held = True
                self.reactor.call_later(0.05, self._release, worker)
                return False
            self._lost(worker, exc)      # EPIPE, ECONNRESET: the worker is gone
            return False
        conn.close()
        worker.outstanding += 1
        worker.handed += 1
        return True

    def _release(self, worker: _Worker) -> None:
        if worker.alive:
            worker.channel.held = False
            self._flush()

    def _flush(self) -> None:
        """Send queued sockets while some worker can take them."""
        pending = self._pending
        if not pending:
            return
        sent = 0
        while sent < len(pending) and (worker := self._choose()) is not None:
            conn, addr = pending[sent]
            if self._send(worker, conn, addr):
                sent += 1
        if sent:
            del pending[:sent]
            self._wake()

    def _wake(self) -> None:
        listener = self.listener
        if listener is not None and listener.reactor is not None:
            listener.reactor.update(listener)

    # -- stopping ------------------------------------------------------------------------------

    def stop(self, grace: float = 3.0, on_stopped: Callable[[], Any] | None = None) -> None:
        """SIGTERM every worker (each flushes its connections within grace), SIGKILL those
        still running grace + STOP_MARGIN seconds later; on_stopped() once all are reaped."""
        if self._stopping:
            return
        self._stopping = True
        self._on_stopped = on_stopped
        for timer in self._restart_timers.values():
            timer.cancel()
        self._restart_timers.clear()
        for conn, _ in self._pending:
            conn.close()
        self._pending.clear()
        for worker in self.workers:
            if worker is not None and worker.pid is not None:
                _kill(worker.pid, signal.SIGTERM)      # not yet reaped: still ours
        self._kill_timer = self.reactor.call_later(grace + STOP_MARGIN, self._kill_all)
        self._check_stopped()

    def _kill_all(self) -> None:
        self._kill_timer = None
        for worker in self.workers:
            if worker is not None and worker.pid is not None:
                log.warning("worker pid %d still running after the grace period: killing it",
                            worker.pid)
                _kill(worker.pid, signal.SIGKILL)

    def _check_stopped(self) -> None:
        if any(w is not None for w in self.workers):
            return
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        callback, self._on_stopped = self._on_stopped, None
        _pools.discard(self)
        if callback is not None:
            callback()

    def _close_inherited(self) -> None:
        """In a new worker: close what this pool holds for the parent."""
        for conn, _ in self._pending:
            conn.close()
        self._pending.clear()
        for obj in self._inherited:
            try:
                obj.close()
            except OSError:
                pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _remember_signal(signum: int, frame: Any) -> None:
    _early_signals.append(signum)


def _leave_parent(reactor: Reactor, mask: Iterable[int]) -> None:
    """In a new worker: drop the parent's signal handlers and close our copies of everything the
    parent's reactor and pools hold, without touching the epoll instance we share with it."""
    _early_signals.clear()
    reactor.forget_after_fork()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember_signal)
    for pool in list(_pools):
        pool._close_inherited()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# -- the acceptor and the service ---------------------------------------------------------------

class HandoffListener(Listener):
    """The acceptor: accepts as Listener does (batches, EMFILE, CIDR), then
    hands each socket to the pool instead of serving it; stops accepting while the pool has no
    room."""

    def __init__(self, sock: socket.socket, pool: WorkerPool, **options: Any) -> None:
        super().__init__(sock, _no_factory, **options)
        self.pool = pool
        pool.listener = self

    def has_room(self) -> bool:
        return super().has_room() and self.pool.has_room()

    def accepted(self, conn: socket.socket, addr: Any) -> None:
        self.pool.dispatch(conn, addr)

    def __repr__(self) -> str:
        return f"<HandoffListener fd={self._fd} pending={self.pool.pending}>"


def _no_factory(sock: socket.socket, addr: Any) -> EventHandler:
    raise RuntimeError("a HandoffListener serves nothing itself")


def _bind_tcp(host: str | None, port: int, *, reuse_port: bool,
              backlog: int | None) -> socket.socket:
    """Bind as listen_tcp does; listen only when backlog is given."""
    family, type_, proto, _, sockaddr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        if backlog is not None:
            sock.listen(backlog)
        return sock
    except BaseException:
        sock.close()
        raise


class WorkerService:
    """A TCP service whose connections are served by `workers` processes: handed off by this
    process's acceptor, or (reuse_port) accepted by each worker from a shared SO_REUSEPORT port.

    make_factory() runs in each worker and returns the per-connection factory, factory(sock,
    addr) -> handler, as listen_tcp takes it.  With ssl_context the workers wrap each socket
    (the acceptor only ever sees TCP).  max_connections bounds the service's total (per worker,
    its share, with reuse_port)."""

    def __init__(self, reactor: Reactor, host: str | None, port: int,
                 make_factory: Callable[[], Factory], *, workers: int, reuse_port: bool = False,
                 grace: float = 3.0, ssl_context: Any = None, backlog: int = 4096,
                 allow: Iterable[str] | None = None, deny: Iterable[str] | None = None,
                 max_connections: int | None = None,
                 on_ready: Callable[[], Any] | None = None,
                 on_failure: Callable[[str], Any] | None = None) -> None:
        self.reactor, self.grace, self.reuse_port = reactor, grace, reuse_port
        self.listener: HandoffListener | None = None
        self._reserved: socket.socket | None = None
        if reuse_port:
            # Bound, not listening: it holds the port for workers yet to come, and takes no
            # connection (only listening sockets join the kernel's reuse-port group).
            self._reserved = _bind_tcp(host, port, reuse_port=True, backlog=None)
            self.address = self._reserved.getsockname()
            share = math.ceil(max_connections / workers) if max_connections else None
            main = functools.partial(run_reuse_port_worker, make_factory=make_factory,
                                     address=self.address[:2], grace=grace,
                                     ssl_context=ssl_context, backlog=backlog, allow=allow,
                                     deny=deny, max_connections=share)
            self.pool = WorkerPool(reactor, workers, main, on_ready=on_ready,
                                   on_failure=on_failure)
            self.pool.close_in_child(self._reserved)
        else:
            main = functools.partial(run_handoff_worker, make_factory=make_factory, grace=grace,
                                     ssl_context=ssl_context)
            self.pool = WorkerPool(reactor, workers, main, max_connections=max_connections,
                                   on_ready=on_ready, on_failure=on_failure)
            sock = _bind_tcp(host, port, reuse_port=False, backlog=backlog)
            try:
                self.listener = reactor.add(HandoffListener(sock, self.pool, allow=allow, deny=deny))
            except BaseException:
                sock.close()
                raise
            self.address = self.listener.address
        self.pool.start()

    @property
    def pids(self) -> list[int]:
        return self.pool.pids

    def stop(self, on_stopped: Callable[[], Any] | None = None) -> None:
        """Stop accepting, stop the workers gracefully (within grace), then on_stopped()."""
        if self.listener is not None:
            self.listener.close()

        def stopped() -> None:
            if self._reserved is not None:
                self._reserved.close()
            if on_stopped is not None:
                on_stopped()
        self.pool.stop(self.grace, stopped)


def listen_workers(reactor: Reactor, host: str | None, port: int,
                   make_factory: Callable[[], Factory], *, workers: int,
                   reuse_port: bool = False, **options: Any) -> WorkerService:
    """listen_tcp's counterpart for worker processes (options: WorkerService's)."""
    return WorkerService(reactor, host, port, make_factory, workers=workers,
                         reuse_port=reuse_port, **options)
