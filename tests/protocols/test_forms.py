"""Form parsing without cgi: query strings, urlencoded and multipart bodies, limits, bad input,
and linear time on adversarial multipart (Tornado CVE-2025-67726 class)."""
from __future__ import annotations

import io
import time

import pytest

from protocols.base import RemoteProtocolError
from protocols.forms import (MAX_PART_HEADERS, parse_body, parse_multipart, parse_options_header,
                             parse_query, parse_urlencoded, read_body)

BOUNDARY = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"
# Binary content that looks like the wire: CRLFs, blank lines, the delimiter without its CRLF,
# the CRLF-delimiter minus its last byte, and every byte value.
TRICKY = (b"\r\n\r\nx--" + BOUNDARY.encode() + b"\r\n--" + BOUNDARY[:-1].encode() + b"\r\n"
          + bytes(range(256)) + b"\r\n--\r\n")


def multipart(*parts: tuple[bytes, bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """Build a body from (header block, content) pairs."""
    b = boundary.encode()
    out = b"".join(b"--" + b + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts)
    return out + (b"--" + b + b"--\r\n" if close else b"")


def field(name: str, value: bytes) -> tuple[bytes, bytes]:
    return f'Content-Disposition: form-data; name="{name}"'.encode(), value


def upload(name: str, filename: str, data: bytes, ctype: str = "application/octet-stream"):
    head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
    return (head + f"Content-Type: {ctype}").encode(), data


def status_of(call) -> int:
    with pytest.raises(RemoteProtocolError) as info:
        call()
    return info.value.error_status_hint


# --- query strings and urlencoded bodies ------------------------------------------------------

def test_query_repeats_blanks_and_escapes():
    assert parse_query("a=1&b=&a=2&c&d=x+y%21") == {
        "a": ["1", "2"], "b": [""], "c": [""], "d": ["x y!"]}
    assert parse_query("") == {}


def test_semicolon_is_not_a_separator():     # CVE-2021-23336
    assert parse_query("a=1;b=2") == {"a": ["1;b=2"]}


def test_too_many_query_fields_is_413():
    assert status_of(lambda: parse_query("a=1&" * 10 + "a=1", max_fields=10)) == 413
    assert len(parse_query("&".join(["a=1"] * 10), max_fields=10)["a"]) == 10


def test_urlencoded_charsets():
    assert parse_urlencoded(b"name=%C3%A9t%C3%A9&raw=\xc3\xa9") == {"name": ["été"], "raw": ["é"]}
    assert parse_urlencoded(b"n=%E9", "latin-1") == {"n": ["é"]}
    assert parse_urlencoded(b"n=%FF") == {"n": ["\ufffd"]}
    assert status_of(lambda: parse_urlencoded(b"a=1", "no-such-charset")) == 400


def test_urlencoded_limits():
    assert status_of(lambda: parse_urlencoded(b"a=" + b"x" * 11, max_field_size=10)) == 413
    assert status_of(lambda: parse_urlencoded(b"a&" * 5, max_fields=4)) == 413


# --- header parameters ------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ('form-data; name="a"; filename="b.txt"', ("form-data", {"name": "a", "filename": "b.txt"})),
    ('Form-Data;name=a ;  filename = "x\\"y\\\\z"', ("form-data", {"name": "a", "filename": 'x"y\\z'})),
    ('form-data; name="semi;colon"', ("form-data", {"name": "semi;colon"})),
    ("text/plain;; charset=utf-8;", ("text/plain", {"charset": "utf-8"})),
    ("form-data; filename=my file.txt", ("form-data", {"filename": "my file.txt"})),
])
def test_options_header(value, expected):
    assert parse_options_header(value) == expected


@pytest.mark.parametrize("value", [
    'form-data; name="open', "form-data; name", 'form-data; name="a"junk',
    'form-data; name="a"; name="b"', "form-data; =x", 'form-data; name=a"b"',
])
def test_bad_options_header_is_400(value):
    assert status_of(lambda: parse_options_header(value)) == 400


# --- multipart --------------------------------------------------------------------------------

def test_multipart_fields_and_binary_file():
    body = multipart(field("name", "Guido é".encode()), field("name", b""),
                     upload("doc", "a.bin", TRICKY), field("tail", b"x\r\ny"))
    fields, files = parse_multipart(body, CTYPE)
    assert fields == {"name": ["Guido é", ""], "tail": ["x\r\ny"]}
    [doc] = files["doc"]
    assert (doc.filename, doc.content_type, doc.data) == ("a.bin", "application/octet-stream", TRICKY)
    assert doc.headers["content-disposition"].startswith("form-data")


def test_preamble_epilogue_padding_and_quoted_boundary():
    boundary = "weird boundary'()+_,-./:=?"
    b = boundary.encode()
    body = (b"preamble --" + b + b" ignored\r\n--" + b + b" \t\r\n"
            b'Content-Disposition: form-data; name="a"\r\n\r\n1\r\n--' + b + b"--\r\nepilogue\r\n--")
    assert parse_multipart(body, f'multipart/form-data; boundary="{boundary}"') == ({"a": ["1"]}, {})


def test_filename_star_and_escaped_quotes():
    heads = [b"Content-Disposition: form-data; name=f; filename=\"fallback.txt\"; "
             b"filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.txt",
             b"Content-Disposition: form-data; name=f; filename*=iso-8859-1'en'%E9t%E9.txt",
             b'Content-Disposition: form-data; name=f; filename="say \\"hi\\".txt"',
             "Content-Disposition: form-data; name=f; filename=\"日本.txt\"".encode(),
             b'Content-Disposition: form-data; name=f; filename=""']
    _, files = parse_multipart(multipart(*[(h, b"d") for h in heads]), CTYPE)
    assert [f.filename for f in files["f"]] == [
        "naïve résumé.txt", "été.txt", 'say "hi".txt', "日本.txt", ""]


def test_part_charset_and_content_type_default():
    body = multipart((b'Content-Disposition: form-data; name="a"\r\n'
                      b"Content-Type: text/plain; charset=latin-1", b"\xe9"),
                     (b'Content-Disposition: form-data; name="f"; filename="x"', b"\xe9"))
    fields, files = parse_multipart(body, CTYPE)
    assert fields == {"a": ["é"]} and files["f"][0].content_type == "text/plain"


@pytest.mark.parametrize("content_type", [
    "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=" + "b" * 71,
    'multipart/form-data; boundary="ends with space "', "multipart/form-data; boundary=a\x00b",
    "multipart/mixed; boundary=abc", 'multipart/form-data; boundary="unterminated',
])
def test_bad_boundary_is_400(content_type):
    assert status_of(lambda: parse_multipart(multipart(field("a", b"1")), content_type)) == 400


def test_boundary_of_70_chars_is_fine():
    boundary = "b" * 70
    body = multipart(field("a", b"1"), boundary=boundary)
    assert parse_multipart(body, f"multipart/form-data; boundary={boundary}")[0] == {"a": ["1"]}


@pytest.mark.parametrize("body", [
    multipart(field("a", b"1"), close=False),                      # no closing boundary
    multipart(field("a", b"1"))[:-4],                              # closing "--" cut
    multipart((b"Content-Type: text/plain", b"1")),                # no Content-Disposition
    multipart((b"", b"1")),                                         # no headers at all
    multipart((b"Content-Disposition: attachment; name=a", b"1")),  # not form-data
    multipart((b"Content-Disposition: form-data; filename=a", b"1")),  # no name
    multipart((b"Content-Disposition form-data; name=a", b"1")),   # no colon
    multipart((b"Content-Disposition: form-data; name=a\r\n Folded: x", b"1")),
    multipart((b"Content-Disposition: form-data; name=a\nX: y", b"1")),  # bare LF
    multipart((b"Content-Disposition: form-data; name=a\r\n"
               b"Content-Disposition: form-data; name=b", b"1")),   # repeated header
    multipart((b"Content-Disposition: form-data; name=a; filename*=no-quotes", b"1")),
    multipart((b"Content-Disposition: form-data; name=a; filename*=utf-8''%FF", b"1")),
    multipart((b"Content-Disposition: form-data; name=a; filename*0=x", b"1")),
    multipart(field("a", b"1")).replace(b"\r\n", b"\n"),           # LF-only wire
    b"no boundary here at all",
    b"",
    b"--" + BOUNDARY.encode() + b"X\r\n",                          # boundary followed by junk
    multipart(field("a", b"x\r\n--" + BOUNDARY.encode() + b"junk")),  # delimiter inside a part
    b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; name=a\r\n",  # unterminated
])
def test_malformed_multipart_is_400(body):
    assert status_of(lambda: parse_multipart(body, CTYPE)) == 400


def test_every_truncation_is_400():
    body = multipart(field("a", b"1"), upload("f", "x", TRICKY))
    parse_multipart(body, CTYPE)
    for cut in range(len(body) - len(b"--\r\n")):
        assert status_of(lambda: parse_multipart(body[:cut], CTYPE)) == 400, cut


def test_multipart_limits_are_413():
    body = multipart(field("a", b"x" * 11), upload("f", "x", b"y" * 11))
    assert parse_multipart(body, CTYPE, max_field_size=11, max_file_size=11)
    assert status_of(lambda: parse_multipart(body, CTYPE, max_field_size=10)) == 413
    assert status_of(lambda: parse_multipart(body, CTYPE, max_file_size=10)) == 413
    many = multipart(*[field("a", b"1")] * 11)
    assert status_of(lambda: parse_multipart(many, CTYPE, max_fields=10)) == 413
    assert status_of(lambda: parse_multipart(many, CTYPE, max_parts=10)) == 413
    big_head = (b"Content-Disposition: form-data; name=a\r\nX-Pad: " + b"p" * MAX_PART_HEADERS, b"")
    assert status_of(lambda: parse_multipart(multipart(big_head), CTYPE)) == 413


# --- linear time on adversarial input ---------------------------------------------------------

def fast(call, budget=1.0):
    """Run call (which may raise RemoteProtocolError); return seconds, failing over budget."""
    t0 = time.perf_counter()
    try:
        call()
    except RemoteProtocolError:
        pass
    elapsed = time.perf_counter() - t0
    assert elapsed < budget, f"{elapsed:.2f}s"
    return elapsed


@pytest.mark.parametrize("filler", [
    b"\r\n--",                                  # delimiter fragments
    b"\r\n",                                    # many CRLFs
    b"\r\n--" + BOUNDARY[:-1].encode(),         # the delimiter minus its last byte, repeated
    b"\r\n\r\n--" + BOUNDARY[:20].encode() + b"\r\n",
])
def test_adversarial_multipart_is_linear(filler):
    junk = filler * (2 * 1024 * 1024 // len(filler))
    head = (b"--" + BOUNDARY.encode() + b"\r\n"
            b'Content-Disposition: form-data; name="f"; filename="x"\r\n\r\n')
    closed = head + junk + b"\r\n--" + BOUNDARY.encode() + b"--\r\n"
    fast(lambda: parse_multipart(head + junk, CTYPE))         # no closing boundary: 400
    fast(lambda: parse_multipart(closed, CTYPE))              # parses: the junk is the file
    _, files = parse_multipart(closed, CTYPE)
    assert files["f"][0].data == junk
    fast(lambda: parse_multipart(b"--" + BOUNDARY.encode() + b"\r\n" + junk, CTYPE))  # in headers
    fast(lambda: parse_multipart(junk, CTYPE))                # in the preamble


def test_many_parts_hit_the_limit_fast():
    body = multipart(*[field("a", b"")] * 20000)
    fast(lambda: parse_multipart(body, CTYPE))
    assert status_of(lambda: parse_multipart(body, CTYPE)) == 413
    fields, _ = parse_multipart(body, CTYPE, max_parts=20000, max_fields=20000)
    assert len(fields["a"]) == 20000


def test_header_parameters_with_many_backslashes_are_linear():   # gh-123067 class
    value = 'form-data; name="' + "\\\\" * 200000 + '"; filename="' + "\\" * 100001
    fast(lambda: parse_options_header(value))


# --- reading the body from wsgi.input ---------------------------------------------------------

def environ_for(body: bytes, content_type: str, length: str | None = None, extra: bytes = b""):
    return {"CONTENT_TYPE": content_type, "wsgi.input": io.BytesIO(body + extra),
            "CONTENT_LENGTH": str(len(body)) if length is None else length}


def test_body_read_stops_at_content_length():
    environ = environ_for(b"a=1", "application/x-www-form-urlencoded", extra=b"&b=2 next request")
    assert parse_body(environ) == ({"a": ["1"]}, {})
    assert environ["wsgi.input"].read() == b"&b=2 next request"


def test_multipart_body_read_from_environ():
    body = multipart(field("a", b"1"), upload("f", "x.bin", TRICKY))
    fields, files = parse_body(environ_for(body, CTYPE, extra=b"garbage"))
    assert fields == {"a": ["1"]} and files["f"][0].data == TRICKY


def test_other_content_types_are_left_unread():
    environ = environ_for(b'{"a": 1}', "application/json")
    assert parse_body(environ) == ({}, {})
    assert environ["wsgi.input"].read() == b'{"a": 1}'


def test_urlencoded_charset_parameter():
    environ = environ_for(b"n=%E9", "application/x-www-form-urlencoded; charset=ISO-8859-1")
    assert parse_body(environ) == ({"n": ["é"]}, {})


@pytest.mark.parametrize("length, status", [("12x", 400), ("-1", 400), ("1e3", 400),
                                            ("٣", 400), ("99", 400), ("1000001", 413)])
def test_bad_content_length(length, status):
    environ = environ_for(b"a=1", "application/x-www-form-urlencoded", length=length)
    assert status_of(lambda: parse_body(environ, max_body=1000000)) == status


def test_missing_content_length_means_no_body():
    environ = environ_for(b"a=1", "application/x-www-form-urlencoded", length="")
    assert parse_body(environ) == ({}, {})


def test_input_terminated_reads_to_eof_within_limit():
    environ = environ_for(b"a=1", "application/x-www-form-urlencoded", length="")
    environ["wsgi.input_terminated"] = True
    assert read_body(environ) == b"a=1"
    environ["wsgi.input"] = io.BytesIO(b"x" * 11)
    assert status_of(lambda: read_body(environ, max_body=10)) == 413


def test_bad_multipart_header_fails_before_reading():
    environ = environ_for(b"x" * 10, "multipart/form-data; boundary=")
    assert status_of(lambda: parse_body(environ)) == 400
    assert environ["wsgi.input"].tell() == 0


def test_unescaped_queries_parse_as_parse_qs_does():
    """parse_query splits queries without '%' or '+' by hand: it must agree with parse_qs."""
    import random
    from urllib.parse import parse_qs
    rng = random.Random(7)
    for _ in range(3000):
        qs = "".join(rng.choice("ab=&;é ") for _ in range(rng.randint(0, 12)))
        assert parse_query(qs) == parse_qs(qs, keep_blank_values=True, separator="&"), qs


def test_backslashes_in_quoted_filenames_are_kept():
    """Browsers and curl send a filename's backslashes unescaped (WHATWG); only \\" and \\\\ are
    escapes, so a Windows path survives and an escaped quote still works."""
    _, params = parse_options_header(r'form-data; name="f"; filename="C:\dir\f.txt"')
    assert params["filename"] == "C:\\dir\\f.txt"
    _, params = parse_options_header(r'form-data; name="a \"b\" \\ c"')
    assert params["name"] == 'a "b" \\ c'
