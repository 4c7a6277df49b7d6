"""What every protocol core shares: the two kinds of error.

A core never does I/O, so it cannot answer a bad peer itself; it raises, and the handler turns
the error into the protocol's answer (an HTTP status, an error frame) and closes.  The split is
h11's: RemoteProtocolError is the peer's fault (with a hint for the answer, e.g. 400 or 431);
LocalProtocolError is the caller's (our own code asked for something the protocol forbids).
"""
from __future__ import annotations


class ProtocolError(Exception):
    """A protocol rule was broken; error_status_hint suggests the answer (HTTP-style)."""

    def __init__(self, msg: str, error_status_hint: int = 400) -> None:
        super().__init__(msg)
        self.error_status_hint = error_status_hint


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol."""


class LocalProtocolError(ProtocolError):
    """Our side tried to do something the protocol forbids."""
