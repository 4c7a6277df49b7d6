"""The Cookbook 11.12 handler interface, kept by name so the recipe's code reads the same here.

A handler owns one file descriptor and answers five questions and callbacks: which descriptor
(`fileno`), whether it wants to be told when it can receive or send (`wants_to_*`), and what to
do when it can (`handle_*`).  The reactor asks the `wants_to_*` questions only after it called
the handler (or after `reactor.update(handler)`), never on every turn: that is the one
difference from the recipe's loop, and the reason this one stays fast with many idle handlers.

`handle_close` is the single exit: the reactor calls it exactly once, when the handler leaves
(`reactor.remove`, `close()`, `reactor.close()`).  `handle_error` receives whatever a callback
raised; the default logs it once and closes this handler only.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Reactor

log = logging.getLogger(__name__)


class EventHandler:
    """One descriptor in the reactor: the recipe's five methods plus a close path."""

    reactor: Reactor | None = None
    listener: Any = None        # the Listener that accepted it: told when the handler leaves
    # Bookkeeping owned by the reactor: the registered descriptor and the interest mask the
    # selector holds for it.  Class attributes so that recipe-style subclasses that never call
    # EventHandler.__init__ still work.
    _r_fd: int = -1
    _r_mask: int = 0
    # True if the handler calls reactor.update(self) itself whenever its wants change, from its
    # callbacks too; the reactor then skips re-reading them after each callback (two calls per
    # event saved on the hot path).  StreamHandler does; recipe-style handlers do not need to.
    reports_wants_changes: bool = False

    def fileno(self) -> int:
        """The descriptor to watch."""
        raise NotImplementedError("must implement fileno()")

    def wants_to_receive(self) -> bool:
        """True while the handler wants handle_receive() when its descriptor is readable."""
        return False

    def wants_to_send(self) -> bool:
        """True while the handler wants handle_send() when its descriptor is writable."""
        return False

    def handle_receive(self) -> None:
        """The descriptor is readable."""

    def handle_send(self) -> None:
        """The descriptor is writable."""

    def handle_added(self) -> None:
        """Called once, right after the reactor took the handler in (self.reactor is set)."""

    def handle_close(self) -> None:
        """Called exactly once, when the handler has left the reactor."""

    def handle_error(self, exc: BaseException) -> None:
        """A callback raised exc: log it once and close this handler only."""
        log.error("unhandled error in %r, closing it", self, exc_info=exc)
        self.close()

    def close(self) -> None:
        """Leave the reactor, which calls handle_close() once; never added, call it here."""
        if self.reactor is not None:
            self.reactor.remove(self)
        else:
            self.handle_close()
