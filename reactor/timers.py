"""Timers: a heap with lazy cancellation.

Most timers in a network server are timeouts, and most timeouts are cancelled before they fire.
So cancel() is O(1): it only marks the timer, and the heap drops marked entries when they reach
the top.  When more than half the heap is dead it is rebuilt, so a server that sets and cancels
a timeout per request does not grow its heap without bound (asyncio does the same).

Heap entries are (when, seq, timer) tuples: tuple comparison on a float and an int is much
cheaper in CPython than a Python-level __lt__, and seq keeps equal deadlines in FIFO order.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable


class Timer:
    """A scheduled call; cancel() it to stop it firing (safe to call more than once)."""

    __slots__ = ("when", "callback", "args", "cancelled", "_heap")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple, heap: TimerHeap):
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False
        self._heap: TimerHeap | None = heap

    def cancel(self) -> None:
        """Stop the timer from firing."""
        if not self.cancelled:
            self.cancelled = True
            heap, self._heap = self._heap, None
            if heap is not None:
                heap._cancelled += 1

    @property
    def active(self) -> bool:
        """True until the timer fired or was cancelled."""
        return self._heap is not None

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "active" if self._heap else "done"
        return f"<Timer {state} when={self.when:.3f} {getattr(self.callback, '__qualname__', self.callback)}>"


class TimerHeap:
    """The reactor's pending timers, earliest first."""

    MIN_COMPACT = 64

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cancelled = 0

    def push(self, when: float, callback: Callable[..., Any], args: tuple) -> Timer:
        timer = Timer(when, callback, args, self)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def next_deadline(self) -> float | None:
        """The earliest live deadline, dropping dead entries on the way."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Timer]:
        """Remove and return the live timers due at now, in order."""
        heap, due = self._heap, []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer._heap = None
                due.append(timer)
        if self._cancelled > self.MIN_COMPACT and self._cancelled * 2 > len(heap):
            self._heap = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
        return due

    def clear(self) -> None:
        for entry in self._heap:
            entry[2]._heap = None
        self._heap, self._cancelled = [], 0
