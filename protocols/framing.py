"""Framing cores: split a byte stream into messages, with a bound on every buffer.

Bytes in, messages out, no I/O.  The line search resumes where the previous one stopped, so a
long line arriving a byte at a time costs O(n), not O(n^2) (h11's ReceiveBuffer does the same).
"""
from __future__ import annotations

from .base import RemoteProtocolError

MAX_LINE = 64 * 1024


class LineFramer:
    """Split a byte stream into lines, refusing lines over max_line bytes."""

    def __init__(self, max_line: int = MAX_LINE, keepends: bool = False) -> None:
        self._buf = bytearray()
        self._max_line = max_line
        self._keep = 1 if keepends else 0
        self._scanned = 0           # bytes of _buf already known to hold no newline

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed bytes; return the complete lines they finish."""
        buf = self._buf
        buf += data
        lines, start = [], 0
        find, keep = buf.find, self._keep
        pos = self._scanned
        while (end := find(b"\n", pos)) >= 0:
            if end - start > self._max_line:
                raise RemoteProtocolError("line too long", 431)
            lines.append(bytes(buf[start:end + keep]))
            start = pos = end + 1
        if start:
            del buf[:start]
        self._scanned = len(buf)
        if len(buf) > self._max_line:
            raise RemoteProtocolError("line too long", 431)
        return lines

    def close(self) -> bytes:
        """End of stream: return the unterminated rest (possibly empty)."""
        rest, self._buf, self._scanned = bytes(self._buf), bytearray(), 0
        return rest
