"""Request bodies for the HTTP client: form fields, JSON, raw bytes, and multipart uploads.

Why it has this shape
---------------------
A body is either bytes (small, known: forms, JSON) or a `BodyStream` that hands out pieces when
the connection can take them, so that a 2 GiB upload costs a 64 KiB buffer, not 2 GiB.  A
stream knows its length when every piece does (regular files, seekable objects, bytes) and is
then sent with Content-Length; otherwise the client frames it with chunked encoding.  A stream
can be rewound when every file it reads is seekable, which a 307/308 redirect and a retry on a
stale kept-alive connection need.

Multipart follows what browsers, curl and urllib3 send (the WHATWG form-data encoding, RFC 7578):
a random boundary checked against the in-memory parts; field names and filenames in quoted
strings where `"`, CR and LF are percent-encoded (a raw CR/LF there would let a filename add
headers to its part), and a content type or extra part header holding CR, LF or NUL refused;
non-ASCII names as raw UTF-8, never `filename*` (RFC 7578 4.2 forbids it).
No I/O but reading the caller's file objects, which happens only when the client asks for the
next piece.
"""
from __future__ import annotations

import io
import json as _json
import mimetypes
import os
import secrets
import stat
import urllib.parse
from typing import Any, BinaryIO, Iterable, Iterator

CHUNK = 64 * 1024                   # bytes read from a file per piece
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

_PARAM_ESCAPES = str.maketrans({'"': "%22", "\r": "%0D", "\n": "%0A"})


class BodyStream:
    """A request body handed out piece by piece; length None means unknown (sent chunked)."""

    length: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        raise NotImplementedError

    def rewind(self) -> bool:
        """Go back to the start so that the body can be sent again; False if it cannot."""
        return False


class FileBody(BodyStream):
    """A file object sent as the whole body (`data=open(...)`), never read whole."""

    def __init__(self, fileobj: Any) -> None:
        self._file = fileobj
        self._start = _tell(fileobj)
        self.length = _remaining(fileobj)

    def __iter__(self) -> Iterator[bytes]:
        return _read_file(self._file, self.length)

    def rewind(self) -> bool:
        return _seek(self._file, self._start)


class IterBody(BodyStream):
    """Pieces from an iterable of bytes (a generator): sent chunked, sent once."""

    def __init__(self, pieces: Iterable[bytes | str]) -> None:
        self._pieces = pieces
        self._used = False

    def __iter__(self) -> Iterator[bytes]:
        self._used = True
        for piece in self._pieces:
            if isinstance(piece, str):
                yield piece.encode("utf-8")
            elif isinstance(piece, (bytes, bytearray, memoryview)):
                yield bytes(piece)
            else:                       # bytes(3) would be b"\0\0\0", bytes(10**9) a GB of them
                raise TypeError(f"a body iterable yields bytes or str, not {type(piece).__name__}")

    def rewind(self) -> bool:
        return not self._used


class MultipartBody(BodyStream):
    """multipart/form-data: text fields and files, the files streamed from their objects."""

    def __init__(self, fields: list[tuple[str, str | bytes]], files: list[tuple],
                 boundary: str | None = None) -> None:
        # files: (field name, filename, source, content type or None, extra headers); a None
        # filename makes the part a form field with no filename (requests' (None, value))
        parts: list[tuple[bytes, Any]] = []     # (part head, bytes or (file, start, size))
        for name, value in fields:
            value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts.append((_part_head(name, None, None, {}), value))
        for name, filename, source, ctype, extra in files:
            if ctype is None and filename is not None:
                ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            head = _part_head(name, filename, ctype, extra or {})
            if isinstance(source, (bytes, bytearray, memoryview, str)):
                parts.append((head, source.encode("utf-8") if isinstance(source, str) else bytes(source)))
            elif hasattr(source, "read"):
                parts.append((head, (source, _tell(source), _remaining(source))))
            else:
                raise TypeError(f"file {name!r}: expected bytes, str or a file object, "
                                f"not {type(source).__name__}")
        held = [piece for part in parts for piece in part if isinstance(piece, bytes)]
        while True:                             # a boundary that no in-memory part contains
            self.boundary = boundary or secrets.token_hex(16)
            mark = b"--" + self.boundary.encode("ascii")
            if boundary or not any(mark in piece for piece in held):
                break
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self._segments: list[Any] = []          # bytes, or (file object, start offset, size or None)
        for i, (head, content) in enumerate(parts):
            self._segments.append((b"\r\n" if i else b"") + mark + b"\r\n" + head)
            if not isinstance(content, bytes) or content:
                self._segments.append(content)
        self._segments.append((b"\r\n" if parts else b"") + mark + b"--\r\n")
        sizes = [len(s) if isinstance(s, bytes) else s[2] for s in self._segments]
        self.length = None if None in sizes else sum(sizes)

    def __iter__(self) -> Iterator[bytes]:
        pending = bytearray()
        for segment in self._segments:
            if isinstance(segment, bytes):
                pending += segment
                continue
            for piece in _read_file(segment[0], segment[2]):
                if pending:
                    if len(pending) + len(piece) <= CHUNK:
                        pending += piece
                        continue
                    yield bytes(pending)
                    pending.clear()
                yield piece
        if pending:
            yield bytes(pending)

    def rewind(self) -> bool:
        return all(_seek(s[0], s[1]) for s in self._segments if not isinstance(s, bytes))

    def to_bytes(self) -> bytes:
        """The whole body (for tests and small forms)."""
        return b"".join(self)


def _part_head(name: str, filename: str | None, ctype: str | None, extra: dict) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{_quote_param(name)}"'
    if filename is not None:
        disposition += f'; filename="{_quote_param(filename)}"'
    lines = [disposition]
    if ctype is not None:
        if any(c in ctype for c in "\r\n\0"):
            raise ValueError(f"control character in the multipart content type {ctype!r}")
        lines.append(f"Content-Type: {ctype}")
    for key, value in extra.items():
        if any(c in f"{key}{value}" for c in "\r\n\0"):
            raise ValueError(f"control character in multipart header {key!r}")
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _quote_param(value: str) -> str:
    """A name or filename for a quoted-string, escaped the way browsers do (WHATWG)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if "\0" in value:
        raise ValueError("NUL in a multipart name or filename")
    return value.translate(_PARAM_ESCAPES)


def _default_filename(source: Any, field: str) -> str:
    name = getattr(source, "name", None)
    if isinstance(name, (str, bytes)) and not isinstance(name, int):
        name = os.fsdecode(name)
        if name and not (name.startswith("<") and name.endswith(">")):
            return os.path.basename(name)
    return field


def _tell(f: Any) -> int | None:
    try:
        return f.tell() if f.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _seek(f: Any, pos: int | None) -> bool:
    if pos is None:
        return False
    try:
        f.seek(pos)
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _remaining(f: Any) -> int | None:
    """Bytes left to read from f, when that can be known without reading it."""
    if isinstance(f, io.TextIOBase):
        return None                             # characters, not bytes
    try:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode):
            return max(0, st.st_size - f.tell())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    try:
        if f.seekable():
            pos = f.tell()
            end = f.seek(0, os.SEEK_END)
            f.seek(pos)
            return max(0, end - pos)
    except (AttributeError, OSError, ValueError):
        pass
    return None


def _read_file(f: BinaryIO, size: int | None) -> Iterator[bytes]:
    """Pieces of f, at most size bytes in all when size is known (the Content-Length sent)."""
    left = size
    while left is None or left > 0:
        piece = f.read(CHUNK if left is None else min(CHUNK, left))
        if not piece:
            return
        if isinstance(piece, str):
            piece = piece.encode("utf-8")
        if left is not None:
            left -= len(piece)
        yield piece


def _pairs(data: Any) -> list[tuple[Any, Any]]:
    """(name, value) pairs of a dict or a list of pairs, list values repeated."""
    items = data.items() if hasattr(data, "items") else data
    out = []
    for name, value in items:
        if isinstance(value, (list, tuple)):
            out.extend((name, v) for v in value)
        elif value is not None:
            out.append((name, value))
    return out


def _file_entries(files: Any) -> list[tuple]:
    """Normalise requests-style files= into (name, filename, source, content type, headers):
    a bare source is named after its file (or the field); a (None, value) tuple is a field."""
    out = []
    for name, spec in (files.items() if hasattr(files, "items") else files):
        ctype = None
        extra: dict = {}
        if isinstance(spec, (tuple, list)):
            if not 2 <= len(spec) <= 4:
                raise ValueError(f"file {name!r}: expected (filename, data[, type[, headers]])")
            filename, source = spec[0], spec[1]
            if len(spec) > 2:
                ctype = spec[2]
            if len(spec) > 3:
                extra = dict(spec[3])
        else:
            source = spec
            filename = _default_filename(source, str(name))
        out.append((str(name), filename, source, ctype, extra))
    return out


def encode_body(data: Any = None, json: Any = None,
                files: Any = None) -> tuple[bytes | BodyStream | None, str | None]:
    """(body, Content-Type or None) for requests-style data=, json= and files=.

    data: a dict or list of pairs (form-encoded; with files, the text fields), str (UTF-8),
    bytes, a file object (streamed) or an iterable of bytes (streamed, chunked)."""
    if json is not None and (data is not None or files is not None):
        raise ValueError("json= cannot be combined with data= or files=")
    if files is not None:
        if data is not None and not (hasattr(data, "items") or isinstance(data, (list, tuple))):
            raise ValueError("with files=, data= must be a dict or a list of pairs")
        fields = [(str(n), v if isinstance(v, (str, bytes)) else str(v))
                  for n, v in _pairs(data or ())]
        body = MultipartBody(fields, _file_entries(files))
        return body, body.content_type
    if json is not None:
        return _json.dumps(json).encode("utf-8"), JSON
    if data is None:
        return None, None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), None
    if isinstance(data, str):
        return data.encode("utf-8"), None
    if hasattr(data, "read"):
        return FileBody(data), None
    if hasattr(data, "items") or isinstance(data, (list, tuple)):
        return urllib.parse.urlencode(_pairs(data)).encode("ascii"), FORM
    if hasattr(data, "__iter__"):
        return IterBody(data), None
    raise TypeError(f"cannot send {type(data).__name__} as a body")
