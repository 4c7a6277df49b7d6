"""The reactor: one `selectors` selector, a timer heap and a ready queue.

Why it has this shape
---------------------
The Cookbook's loop asks every handler `wants_to_receive()` / `wants_to_send()` on every turn
and hands the lists to `select()`: O(all handlers) per event, and a hard ceiling at 1,024
descriptors.  Here the selector keeps the interest, and the reactor keeps, on each handler, the
mask it last gave the selector (`_r_mask`).  A handler's wants are re-read only

  * right after the reactor dispatched an event to it (its own callback may have changed them),
  * or when someone called `update(handler)` (a change made from outside its callbacks: a timer,
    another connection writing to it, another thread through `call_soon_threadsafe`).

The selector is touched only when the mask really changed, and a handler that wants nothing is
unregistered (selectors refuses an empty mask).  A turn therefore costs O(ready + updated), not
O(handlers): 10,000 idle connections cost nothing until they speak.

One turn (`run_once`):
  1. settle the handlers marked by `update()`;
  2. select, with timeout 0 if callbacks are ready, else until the first timer;
  3. dispatch: read before write, skip the write if the read closed the handler, then settle;
     an exception goes to that handler's `handle_error`, never up (KeyboardInterrupt does);
  4. run the timers that are due, then the callbacks that were queued before this step.

No per-event objects are allocated (asyncio makes a Handle per callback and routes every I/O
event through its ready queue); the handler is called straight from a descriptor map, and the hot
names are bound to locals.

With the stdlib's EpollSelector (the default on Linux) registration still goes through
`selectors`, but the turn polls the selector's own epoll object and maps descriptors to handlers
in one dict: `EpollSelector.select()` spends more Python per event (a SelectorKey lookup, a tuple,
mask arithmetic) than the rest of our dispatch.  Any other selector takes the generic path.
"""
from __future__ import annotations

import collections
import logging
import math
import select
import selectors
import signal
import socket
import time
from typing import Any, Callable

from .handler import EventHandler
from .timers import Timer, TimerHeap

log = logging.getLogger(__name__)

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_EPOLLIN = getattr(select, "EPOLLIN", 1)
_EPOLLOUT = getattr(select, "EPOLLOUT", 4)
MAX_SELECT_TIMEOUT = 24 * 3600.0


class _Waker(EventHandler):
    """The self-pipe: another thread or a signal handler writes a byte to wake select()."""

    def __init__(self) -> None:
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)

    def fileno(self) -> int:
        return self._rsock.fileno()

    def wants_to_receive(self) -> bool:
        return True

    def handle_receive(self) -> None:
        try:
            while self._rsock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def wakeup_fd(self) -> int:
        """The descriptor a signal's C-level handler writes to (signal.set_wakeup_fd)."""
        return self._wsock.fileno()

    def wake(self) -> None:
        try:
            self._wsock.send(b"\0")
        except OSError:     # full (a wake-up is already pending) or closed at shutdown
            pass

    def handle_close(self) -> None:
        self._rsock.close()
        self._wsock.close()


class Reactor:
    """Runs handlers, timers and callbacks on one thread until stop()."""

    def __init__(self, selector: selectors.BaseSelector | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        poller = getattr(self._selector, "_selector", None)
        self._epoll_poll = (poller.poll if type(self._selector) is getattr(selectors, "EpollSelector", None)
                            and hasattr(select, "epoll") and isinstance(poller, select.epoll) else None)
        self._by_fd: dict[int, EventHandler] = {}      # registered descriptors -> handlers
        self._clock = clock
        # The clock read once per turn, right after select: handlers that stamp deadlines on
        # every request read this attribute instead of calling the clock.
        self.now = clock()
        self._handlers: set[EventHandler] = set()
        self._dirty: set[EventHandler] = set()
        self._timers = TimerHeap()
        self._ready: collections.deque = collections.deque()
        self._signals: dict[int, Any] = {}
        self._previous_wakeup_fd = -1
        self._running = self._stopping = self._closed = self._closing = False
        # statistics
        self._turns = self._events = 0
        self._accepts = self._accept_errors = 0
        self._closed_bytes_in = self._closed_bytes_out = 0
        self._slowest: tuple[float, Any] = (0.0, None)
        # Descriptors registered while a batch of events is being dispatched: an event in that
        # batch for the same number belongs to the handler that had it before (closed earlier
        # in the batch), not to the new one, and is skipped.
        self._fresh: set[int] = set()
        self._dispatching = False
        self._waker = _Waker()
        self.add(self._waker)

    # -- handlers ------------------------------------------------------------------------------

    def add(self, handler: EventHandler) -> EventHandler:
        """Take a handler in: its wants are read now and registered if it wants anything.

        Any object with the recipe's five methods will do; EventHandler adds the close path."""
        if self._closed or self._closing:
            raise RuntimeError("reactor is closed")
        if handler in self._handlers:
            return handler
        handler.reactor = self
        handler._r_fd = handler.fileno()
        handler._r_mask = 0
        handler._r_reread = not getattr(handler, "reports_wants_changes", False)
        self._handlers.add(handler)
        try:
            added = getattr(handler, "handle_added", None)
            if added is not None:
                added()
            if handler._r_fd >= 0 and handler in self._handlers:
                self._settle(handler)
        except Exception as exc:
            self._handler_error(handler, exc)
        return handler

    # Recipe 11.12 keeps its handlers in a list and calls handler_list.append(h) and
    # handler_list.remove(h); pass the reactor as that list and the recipe runs unchanged.
    append = add

    def remove(self, handler: EventHandler) -> None:
        """Take a handler out (unregistered before anything closes its descriptor); then
        handle_close() runs, once."""
        if handler not in self._handlers:
            return
        self._handlers.discard(handler)
        self._dirty.discard(handler)
        if handler._r_mask:
            if self._by_fd.get(handler._r_fd) is handler:
                del self._by_fd[handler._r_fd]
            try:
                self._selector.unregister(handler._r_fd)
            except (KeyError, ValueError, OSError):
                pass
        handler._r_fd, handler._r_mask = -1, 0
        self._closed_bytes_in += getattr(handler, "bytes_in", 0)
        self._closed_bytes_out += getattr(handler, "bytes_out", 0)
        try:
            close = getattr(handler, "handle_close", None)
            if close is not None:
                close()
        except Exception:
            log.exception("error in handle_close of %r", handler)
        listener = getattr(handler, "listener", None)
        if listener is not None:
            listener.connection_closed(handler)

    def update(self, handler: EventHandler) -> None:
        """Re-read the handler's wants before the next select: needed for changes made outside
        its own callbacks, and always by handlers that set reports_wants_changes."""
        if getattr(handler, "_r_fd", -1) >= 0 and handler in self._handlers:
            self._dirty.add(handler)

    def _settle(self, handler: EventHandler) -> None:
        """Give the selector the handler's current interest, if it changed."""
        new = (READ if handler.wants_to_receive() else 0) | (WRITE if handler.wants_to_send() else 0)
        old = handler._r_mask
        if new == old:
            return
        sel, fd = self._selector, handler._r_fd
        if not old:
            try:
                sel.register(fd, new, handler)
            except KeyError:
                # The descriptor number is still held by a handler that closed its socket
                # without leaving the reactor, and the kernel has handed the number out again.
                stale = sel.get_key(fd).data
                log.warning("descriptor %d reused: dropping stale handler %r", fd, stale)
                self.remove(stale)
                sel.register(fd, new, handler)
            self._by_fd[fd] = handler
            if self._dispatching:
                self._fresh.add(fd)
        elif not new:
            del self._by_fd[fd]
            sel.unregister(fd)
        else:
            sel.modify(fd, new, handler)
        handler._r_mask = new

    def _handler_error(self, handler: EventHandler, exc: Exception) -> None:
        try:
            on_error = getattr(handler, "handle_error", None)
            if on_error is None:
                log.error("unhandled error in %r, removing it", handler, exc_info=exc)
                self.remove(handler)
                return
            on_error(exc)
        except Exception:
            log.exception("error in handle_error of %r; removing it", handler)
            self.remove(handler)
        else:
            if handler in self._handlers and handler._r_fd >= 0:
                try:
                    self._settle(handler)
                except Exception:
                    log.exception("cannot register %r after its error; removing it", handler)
                    self.remove(handler)

    @property
    def handlers(self) -> frozenset[EventHandler]:
        """The live handlers (without the reactor's own waker)."""
        return frozenset(self._handlers - {self._waker})

    # -- callbacks and timers ------------------------------------------------------------------

    def time(self) -> float:
        """The reactor's clock (time.monotonic unless a test clock was given)."""
        return self._clock()

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run callback(*args) on this turn's callback step (or the next one)."""
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """call_soon from any thread (or a signal handler): queue, then wake the selector."""
        self._ready.append((callback, args))      # deque.append is atomic
        self._waker.wake()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run callback(*args) after delay seconds; returns a cancellable Timer."""
        return self._timers.push(self._clock() + max(0.0, delay), callback, args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run callback(*args) when the reactor's clock reaches when."""
        return self._timers.push(when, callback, args)

    # -- signals -------------------------------------------------------------------------------

    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        """Run callback(*args) on the reactor thread when sig arrives (main thread only).

        A Python signal handler runs only when the main thread next executes bytecode.  A
        signal that lands just before the thread enters epoll_wait, or on another thread,
        interrupts nothing, and the reactor would sleep on with the handler pending (until the
        next event: forever on an idle server).  So the C-level handler also writes to the
        waker (signal.set_wakeup_fd, as asyncio does), which wakes the poll in every case."""
        def on_signal(signum: int, frame: Any) -> None:
            self.call_soon_threadsafe(callback, *args)
        previous = signal.signal(sig, on_signal)
        if not self._signals:
            self._previous_wakeup_fd = signal.set_wakeup_fd(self._waker.wakeup_fd(),
                                                            warn_on_full_buffer=False)
        self._signals.setdefault(sig, previous)

    def remove_signal_handler(self, sig: int) -> bool:
        """Restore the signal's previous disposition; False if none was set here."""
        if sig not in self._signals:
            return False
        signal.signal(sig, self._signals.pop(sig))
        if not self._signals:
            self._restore_wakeup_fd()
        return True

    def _restore_wakeup_fd(self) -> None:
        """Give the wake-up descriptor back to whoever had it before our first handler."""
        try:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
        except (ValueError, OSError):   # not the main thread, or that descriptor is gone
            signal.set_wakeup_fd(-1)

    # -- running -------------------------------------------------------------------------------

    def run(self) -> None:
        """Turn until stop() is called."""
        if self._running:
            raise RuntimeError("reactor is already running")
        self._running = True             # a stop() made before run() still counts (as in asyncio)
        try:
            self._loop(None, once=False)
        finally:
            self._running = self._stopping = False

    def stop(self) -> None:
        """Make run() return after the current turn (from another thread: call_soon_threadsafe)."""
        self._stopping = True

    def run_once(self, timeout: float | None = None) -> None:
        """One turn: settle, select (at most timeout seconds), dispatch, timers, callbacks."""
        self._loop(timeout, once=True)

    def _loop(self, limit: float | None, once: bool) -> None:
        """The turn (module docstring), repeated.  One function with its hot names bound once,
        as curio's kernel does: in CPython a call and an attribute load per turn are a visible
        share of an echo round trip."""
        ready, timers, clock, perf = self._ready, self._timers, self._clock, time.perf_counter
        by_fd, poll, settle, on_error = self._by_fd, self._epoll_poll, self._settle, self._handler_error
        fresh = self._fresh
        not_out, not_in = ~_EPOLLOUT, ~_EPOLLIN
        while True:
            if self._dirty:
                dirty, self._dirty = self._dirty, set()
                for handler in dirty:
                    if handler._r_fd >= 0:
                        try:
                            settle(handler)
                        except Exception as exc:
                            on_error(handler, exc)
            timeout = limit
            if ready or self._stopping:
                timeout = 0
            elif timers._heap:
                deadline = timers.next_deadline()
                if deadline is not None:
                    wait = min(max(0.0, deadline - clock()), MAX_SELECT_TIMEOUT)
                    timeout = wait if timeout is None else min(timeout, wait)
            if poll is not None:
                if timeout is None:
                    timeout = -1
                elif timeout > 0:
                    timeout = math.ceil(timeout * 1e3) * 1e-3     # as selectors does: no busy wait
                else:
                    timeout = 0
                try:
                    events = poll(timeout, len(by_fd) + 1)
                except InterruptedError:
                    events = None
            else:                               # any other selector: its masks as epoll bits
                events = [(key.fd, (_EPOLLIN if mask & READ else 0) | (_EPOLLOUT if mask & WRITE else 0))
                          for key, mask in self._selector.select(timeout)]
            self._turns += 1
            self.now = clock()
            if events:
                # Any bit but OUT (HUP, ERR) also wakes a reader, any bit but IN a writer, within
                # the registered interest (selectors' own rule).
                self._events += len(events)
                slowest, slowest_h = self._slowest[0], None
                self._dispatching = True
                t0 = perf()
                for fd, bits in events:
                    handler = by_fd.get(fd)
                    if handler is None or fresh and fd in fresh:    # left earlier in this batch
                        continue
                    mask = handler._r_mask
                    try:
                        if bits & not_out and mask & READ:
                            handler.handle_receive()
                        if bits & not_in and mask & WRITE and handler._r_fd >= 0:
                            handler.handle_send()
                        if handler._r_reread and handler._r_fd >= 0:
                            if ((READ if handler.wants_to_receive() else 0)
                                    | (WRITE if handler.wants_to_send() else 0)) != handler._r_mask:
                                settle(handler)
                    except Exception as exc:
                        on_error(handler, exc)
                    t1 = perf()
                    if t1 - t0 > slowest:
                        slowest, slowest_h = t1 - t0, handler
                    t0 = t1
                self._dispatching = False
                if fresh:
                    fresh.clear()
                if slowest_h is not None:
                    self._slowest = (slowest, slowest_h)
            if timers._heap:
                for timer in timers.pop_due(self.now):
                    if not timer.cancelled:         # an earlier timer of this turn may cancel it
                        self._run_callback(timer.callback, timer.args)
            if ready:
                for _ in range(len(ready)):
                    callback, args = ready.popleft()
                    self._run_callback(callback, args)
            if once or self._stopping:
                return

    def _run_callback(self, callback: Callable[..., Any], args: tuple) -> None:
        t0 = time.perf_counter()
        try:
            callback(*args)
        except Exception:
            log.exception("error in callback %r", callback)
        dt = time.perf_counter() - t0
        if dt > self._slowest[0]:
            self._slowest = (dt, callback)

    # -- teardown and statistics ---------------------------------------------------------------

    def close(self) -> None:
        """Remove every handler (each gets handle_close), drop timers, close the selector."""
        if self._closed:
            return
        if self._running:
            raise RuntimeError("cannot close a running reactor")
        self._closing = True             # add() refuses from here: nothing is left behind
        for handler in list(self._handlers):
            if handler is not self._waker:
                self.remove(handler)
        for sig in list(self._signals):     # before the waker closes: it is the wake-up fd
            self.remove_signal_handler(sig)
        self.remove(self._waker)
        self._timers.clear()
        self._ready.clear()
        self._selector.close()
        self._closed = True

    def forget_after_fork(self) -> None:
        """In a child made by os.fork() while this reactor existed: close this process's copies
        of every descriptor the reactor holds (each handler's socket, the waker, the selector)
        and restore the signals' previous handlers, without unregistering anything: the epoll
        instance is shared with the parent, and EPOLL_CTL_DEL here would remove the parent's
        registrations.  No handler callback runs.  The reactor is unusable afterwards."""
        for sig, previous in list(self._signals.items()):
            signal.signal(sig, previous)
        if self._signals:
            self._restore_wakeup_fd()
        self._signals.clear()
        for handler in list(self._handlers):
            forget = getattr(handler, "forget_after_fork", None)
            if forget is not None:
                forget()
            for sock in (getattr(handler, "sock", None), getattr(handler, "_rsock", None),
                         getattr(handler, "_wsock", None)):
                if isinstance(sock, socket.socket):
                    try:
                        sock.close()
                    except OSError:
                        pass
        poller = getattr(self._selector, "_selector", None)    # the epoll/poll object itself
        if poller is not None and hasattr(poller, "close"):
            poller.close()            # closes this process's descriptor only: no EPOLL_CTL_DEL
        self._handlers.clear()
        self._by_fd.clear()
        self._timers.clear()
        self._ready.clear()
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring; the slowest callback is that of the interval since the last
        stats() call, and is reset by this call."""
        live = [h for h in self._handlers if h is not self._waker]
        slowest, self._slowest = self._slowest, (0.0, None)
        return {
            "turns": self._turns,
            "events": self._events,
            "handlers": len(live),
            "registered": len(self._selector.get_map()) - 1,
            "bytes_in": self._closed_bytes_in + sum(getattr(h, "bytes_in", 0) for h in live),
            "bytes_out": self._closed_bytes_out + sum(getattr(h, "bytes_out", 0) for h in live),
            "accepts": self._accepts,
            "accept_errors": self._accept_errors,
            "timers": len(self._timers),
            "ready": len(self._ready),
            "slowest_callback_s": slowest[0],
            "slowest_callback": _describe(slowest[1]),
        }


def _describe(obj: Any) -> str:
    """A name for the stats: a handler's repr or a function's qualified name, never an error."""
    if obj is None:
        return ""
    try:
        return getattr(obj, "__qualname__", None) or repr(obj)
    except Exception:
        return f"<{type(obj).__name__} object (repr failed)>"
