"""Request parameters without cgi: query strings, urlencoded bodies and multipart/form-data.

cgi.FieldStorage is gone in 3.13, so this module replaces the part of it that Cookbook 11.5
used.  It works on whole byte strings, read by read_body() and bounded by max_body, because the
WSGI layer hands over a blocking wsgi.input and the dispatcher wants dicts, not a stream; a
streaming parser would only pay off for uploads larger than memory, which this layer refuses
with 413 instead.

The multipart splitter is linear on purpose (Tornado CVE-2025-67726, CVE-2025-47287): one
bytes.find for CRLF "--" boundary with an offset that only moves forward, a find bounded by
MAX_PART_HEADERS for each part's header end, and the part count checked as each part is found.
Nothing is re-scanned, nothing is split into lines past the headers, nothing is logged per part.
The boundary delimiter may not occur inside a part (RFC 2046 5.1.1), so a CRLF "--" boundary
that is followed neither by "--" nor by (padding and) CRLF is malformed, not content.

Errors follow one rule: malformed input is RemoteProtocolError with hint 400, anything over a
limit (size, field count, part count, also too many query fields) is hint 413, as Werkzeug does
for max_form_parts.  Text values that are invalid in their charset decode with errors="replace",
like parse_qs; a filename*= (RFC 5987) must decode strictly.  RFC 2231 continuations
(filename*0=) and Content-Transfer-Encoding are not supported (RFC 7578 deprecates both).
"""
from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from .base import RemoteProtocolError

log = logging.getLogger(__name__)

MAX_FIELDS = 1000                   # text fields (query, urlencoded, multipart), each source
MAX_PARTS = 1000                    # multipart parts, fields and files together
MAX_FIELD_SIZE = 1024 * 1024        # one text field
MAX_FILE_SIZE = 16 * 1024 * 1024    # one uploaded file
MAX_BODY = 32 * 1024 * 1024         # a whole form body
MAX_PART_HEADERS = 8 * 1024         # the header block of one part

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"

Fields = dict[str, list[str]]
Files = dict[str, list["UploadedFile"]]


@dataclass
class UploadedFile:
    """One uploaded file: the client's filename (untrusted), declared type, bytes, part headers."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)


def _bad(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, 400)


def _too_big(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, 413)


def parse_query(qs: str, *, max_fields: int = MAX_FIELDS, charset: str = "utf-8") -> Fields:
    """Parse a=1&b=&a=2 into {name: [values]}; only '&' separates (CVE-2021-23336)."""
    if not qs:
        return {}
    if "%" not in qs and "+" not in qs:
        # Nothing to unescape (the usual query): split by hand, as parse_qs would, without its
        # per-field unquote calls.  Empty pieces are skipped; a name without "=" has value "".
        pieces = qs.split("&")
        if len(pieces) > max_fields:
            raise _too_big(f"more than {max_fields} fields")
        fields: Fields = {}
        for piece in pieces:
            if piece:
                name, _, value = piece.partition("=")
                if name in fields:
                    fields[name].append(value)
                else:
                    fields[name] = [value]
        return fields
    try:
        return parse_qs(qs, keep_blank_values=True, encoding=charset, errors="replace",
                        max_num_fields=max_fields, separator="&")
    except ValueError as exc:           # "Max number of fields exceeded"
        raise _too_big(f"more than {max_fields} fields") from exc


def parse_urlencoded(body: bytes, charset: str = "utf-8", *, max_fields: int = MAX_FIELDS,
                     max_field_size: int = MAX_FIELD_SIZE) -> Fields:
    """Parse an application/x-www-form-urlencoded body into {name: [values]}."""
    charset = _check_charset(charset)
    # Decoding first keeps raw (unescaped) non-ASCII bytes right; %XX decode with charset too.
    fields = parse_query(body.decode(charset, "replace"), max_fields=max_fields, charset=charset)
    for name, values in fields.items():
        if any(len(v) > max_field_size for v in values):
            raise _too_big(f"field {name!r} over {max_field_size} bytes")
    return fields


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*+)"', re.DOTALL)
_BARE = re.compile(r'[^;"]*')
_WS = re.compile(r"[ \t]*")
# Inside quotes a backslash escapes only a quote or a backslash: browsers, curl and urllib3 send
# a filename's backslashes as they are (WHATWG), so a filename C:\dir\f.txt keeps them.
_ESCAPE = re.compile(r'\\(["\\])')


def parse_options_header(value: str) -> tuple[str, dict[str, str]]:
    """Split 'form-data; name="a \\"b\\""; x=1' into ('form-data', {'name': 'a "b"', 'x': '1'})."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pos, end = 0, len(rest)
    while (pos := _WS.match(rest, pos).end()) < end:
        if rest[pos] == ";":            # tolerate empty parameters: "a;;b=1"
            pos += 1
            continue
        if not (m := _TOKEN.match(rest, pos)):
            raise _bad(f"bad parameter in header {value[:100]!r}")
        name = m.group().lower()
        pos = _WS.match(rest, m.end()).end()
        if not rest.startswith("=", pos):
            raise _bad(f"parameter {name!r} has no value")
        pos = _WS.match(rest, pos + 1).end()
        if rest.startswith('"', pos):
            if not (m := _QUOTED.match(rest, pos)):
                raise _bad(f"unterminated quoted string for {name!r}")
            params_value = _ESCAPE.sub(r"\1", m.group(1))
        else:
            m = _BARE.match(rest, pos)     # lenient: a bare value runs to the next ';'
            params_value = m.group().rstrip(" \t")
        if name in params:
            raise _bad(f"parameter {name!r} repeated")
        params[name] = params_value
        pos = _WS.match(rest, m.end()).end()
        if pos < end and rest[pos] != ";":
            raise _bad(f"junk after parameter {name!r}")
    return main.strip().lower(), params


def _check_charset(charset: str) -> str:
    try:
        info = codecs.lookup(charset)
    except LookupError:
        raise _bad(f"unknown charset {charset[:40]!r}") from None
    if not getattr(info, "_is_text_encoding", True):        # base64, rot13, zlib...
        raise _bad(f"not a text charset: {charset[:40]!r}")
    return info.name


def _decode_ext_value(value: str) -> str:
    """Decode an RFC 5987 ext-value: charset'lang'percent-encoded."""
    charset, q1, rest = value.partition("'")
    _lang, q2, encoded = rest.partition("'")
    if not (q1 and q2 and charset):
        raise _bad("malformed filename*")
    try:
        return unquote(encoded, encoding=_check_charset(charset), errors="strict")
    except UnicodeDecodeError:
        raise _bad("filename* does not decode in its charset") from None


_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_PAD_CRLF = re.compile(rb"[ \t]*\r\n")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a multipart/form-data Content-Type (RFC 2046: 1-70 bchars)."""
    ctype, params = parse_options_header(content_type)
    if ctype != MULTIPART:
        raise _bad(f"not {MULTIPART}: {ctype[:60]!r}")
    boundary = params.get("boundary")
    if boundary is None or not _BOUNDARY.fullmatch(boundary):
        raise _bad("missing or malformed multipart boundary")
    return boundary.encode("ascii")


def parse_multipart(body: bytes, content_type: str, *, max_fields: int = MAX_FIELDS,
                    max_field_size: int = MAX_FIELD_SIZE, max_file_size: int = MAX_FILE_SIZE,
                    max_parts: int = MAX_PARTS) -> tuple[Fields, Files]:
    """Parse a multipart/form-data body into ({name: [text]}, {name: [UploadedFile]})."""
    delimiter = b"--" + multipart_boundary(content_type)
    separator = b"\r\n" + delimiter
    fields: Fields = {}
    files: Files = {}
    if body.startswith(delimiter):      # no preamble
        pos = len(delimiter)
    elif (at := body.find(separator)) >= 0:
        pos = at + len(separator)
    else:
        raise _bad("no multipart boundary in body")
    parts = nfields = 0
    while not body.startswith(b"--", pos):      # "--" closes; the epilogue is ignored
        if not (m := _PAD_CRLF.match(body, pos)):
            raise _bad("multipart boundary not followed by CRLF")
        start = m.end()
        if (end := body.find(separator, start)) < 0:
            raise _bad("multipart body has no closing boundary")
        parts += 1
        if parts > max_parts:
            raise _too_big(f"more than {max_parts} multipart parts")
        name, filename, headers, data_start = _part_head(body, start, end)
        size = end - data_start
        ctype = headers.get("content-type", "text/plain")
        if filename is None:
            nfields += 1
            if nfields > max_fields:
                raise _too_big(f"more than {max_fields} fields")
            if size > max_field_size:
                raise _too_big(f"field {name!r} over {max_field_size} bytes")
            charset = _check_charset(parse_options_header(ctype)[1].get("charset", "utf-8"))
            fields.setdefault(name, []).append(body[data_start:end].decode(charset, "replace"))
        else:
            if size > max_file_size:
                raise _too_big(f"file {name!r} over {max_file_size} bytes")
            upload = UploadedFile(filename, ctype, body[data_start:end], headers)
            files.setdefault(name, []).append(upload)
        pos = end + len(separator)
    return fields, files


def _part_head(body: bytes, start: int, end: int) -> tuple[str, str | None, dict[str, str], int]:
    """Parse the headers of the part body[start:end]: (name, filename, headers, data start)."""
    if body.startswith(b"\r\n", start):
        raw, data_start = b"", start + 2
    else:
        stop = body.find(b"\r\n\r\n", start, min(end, start + MAX_PART_HEADERS + 4))
        if stop < 0:
            if end - start > MAX_PART_HEADERS:
                raise _too_big(f"multipart part headers over {MAX_PART_HEADERS} bytes")
            raise _bad("multipart part headers not terminated by an empty line")
        raw, data_start = body[start:stop], stop + 4
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n") if raw else ():
        key, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(key) or b"\r" in value or b"\n" in value:
            raise _bad("malformed multipart part header")
        name = key.decode("ascii").lower()
        if name in headers:
            raise _bad(f"multipart part header {name!r} repeated")
        try:                            # browsers send UTF-8 filenames raw
            headers[name] = value.strip(b" \t").decode("utf-8")
        except UnicodeDecodeError:
            headers[name] = value.strip(b" \t").decode("latin-1")
    if "content-disposition" not in headers:
        raise _bad("multipart part has no Content-Disposition")
    disposition, params = parse_options_header(headers["content-disposition"])
    if disposition != "form-data" or "name" not in params:
        raise _bad("multipart part is not form-data with a name")
    if any(p.startswith("filename*") and p != "filename*" for p in params):
        raise _bad("RFC 2231 parameter continuations are not supported")
    if "filename*" in params:           # RFC 6266 4.3: filename* wins over filename
        filename: str | None = _decode_ext_value(params["filename*"])
    else:
        filename = params.get("filename")
    return params["name"], filename, headers, data_start


def read_body(environ: dict, max_body: int = MAX_BODY) -> bytes:
    """Read the request body from wsgi.input, never past CONTENT_LENGTH nor over max_body."""
    raw = environ.get("CONTENT_LENGTH", "").strip()
    stream = environ["wsgi.input"]
    if not raw:                         # PEP 3333: absent or empty means no body, unless
        if not environ.get("wsgi.input_terminated"):        # the server ends the stream
            return b""
        length, want = None, max_body + 1
    elif not (raw.isascii() and raw.isdigit()):
        raise _bad(f"bad Content-Length {raw[:40]!r}")
    elif (length := int(raw)) > max_body:
        raise _too_big(f"body of {length} bytes over {max_body}")
    else:
        want = length
    chunks, got = [], 0
    while got < want and (chunk := stream.read(min(want - got, 1024 * 1024))):
        chunks.append(chunk)
        got += len(chunk)
    if length is None and got > max_body:
        raise _too_big(f"body over {max_body} bytes")
    if length is not None and got < length:
        raise _bad(f"body ended after {got} of {length} bytes")
    return b"".join(chunks)


def parse_body(environ: dict, *, max_body: int = MAX_BODY, max_fields: int = MAX_FIELDS,
               max_field_size: int = MAX_FIELD_SIZE, max_file_size: int = MAX_FILE_SIZE,
               max_parts: int = MAX_PARTS) -> tuple[Fields, Files]:
    """Read and parse a form body (urlencoded or multipart); any other type is left unread."""
    content_type = environ.get("CONTENT_TYPE", "")
    if not content_type:
        return {}, {}
    kind = content_type.partition(";")[0].strip().lower()
    if kind == URLENCODED:
        charset = parse_options_header(content_type)[1].get("charset", "utf-8")
        body = read_body(environ, max_body)
        return parse_urlencoded(body, charset, max_fields=max_fields,
                                max_field_size=max_field_size), {}
    if kind == MULTIPART:
        multipart_boundary(content_type)    # a bad header fails before the body is read
        return parse_multipart(read_body(environ, max_body), content_type,
                               max_fields=max_fields, max_field_size=max_field_size,
                               max_file_size=max_file_size, max_parts=max_parts)
    return {}, {}
