"""The thin glue between protocol cores and the reactor: move bytes, turn errors into closes.

Each handler owns one core and does nothing a core could do: it feeds what the socket read to
the core and writes what the core produced.  So the cores stay testable without sockets, and
this file stays short.
"""
from __future__ import annotations

import logging

from reactor import StreamHandler

from .base import RemoteProtocolError
from .framing import MAX_LINE, LineFramer

log = logging.getLogger(__name__)


class LineHandler(StreamHandler):
    """A stream of lines: override line_received; overlong lines close the connection."""

    max_line: int = MAX_LINE
    keepends: bool = False

    def connection_made(self) -> None:
        self.framer = LineFramer(self.max_line, self.keepends)

    def data_received(self, data: bytes) -> None:
        try:
            lines = self.framer.receive_data(data)
        except RemoteProtocolError as exc:
            log.warning("%r: %s, closing", self, exc)
            self.abort()
            return
        for line in lines:
            if self.closing:
                return
            self.line_received(line)

    def eof_received(self) -> bool | None:
        rest = self.framer.close()
        if rest and not self.closing:
            self.line_received(rest)
        return None

    def line_received(self, line: bytes) -> None:
        """One line arrived (without its newline unless keepends)."""
