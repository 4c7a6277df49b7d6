"""LineFramer, the core behind every line protocol: no sockets, every split point, the bound on
the buffer whether or not the newline has arrived, and linear cost for a line fed a byte at a
time."""
from __future__ import annotations

import pytest

from protocols.base import RemoteProtocolError
from protocols.framing import MAX_LINE, LineFramer

WIRE = b"ab\ncd\n\nlast"                       # two lines, an empty line, an unterminated rest
LINES = [b"ab", b"cd", b""]
LINES_KEPT = [b"ab\n", b"cd\n", b"\n"]


def feed(framer: LineFramer, pieces) -> list[bytes]:
    lines = []
    for piece in pieces:
        lines += framer.receive_data(piece)
    return lines


@pytest.mark.parametrize("keepends", [False, True])
@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
def test_lines_split_anywhere(cut, keepends):
    framer = LineFramer(keepends=keepends)
    assert feed(framer, [WIRE[:cut], WIRE[cut:]]) == (LINES_KEPT if keepends else LINES)
    assert framer.close() == b"last"


@pytest.mark.parametrize("keepends", [False, True])
@pytest.mark.parametrize("cuts", [(i, j) for i in range(len(WIRE) + 1)
                                  for j in range(i, len(WIRE) + 1)])
def test_lines_split_twice_anywhere(cuts, keepends):
    i, j = cuts
    framer = LineFramer(keepends=keepends)
    assert feed(framer, [WIRE[:i], WIRE[i:j], WIRE[j:]]) == (LINES_KEPT if keepends else LINES)
    assert framer.close() == b"last"


@pytest.mark.parametrize("keepends", [False, True])
def test_byte_by_byte(keepends):
    framer = LineFramer(keepends=keepends)
    assert feed(framer, [WIRE[i:i + 1] for i in range(len(WIRE))]) == (
        LINES_KEPT if keepends else LINES)
    assert framer.close() == b"last"


def test_lines_come_out_as_they_complete():
    framer = LineFramer()
    assert framer.receive_data(b"one") == []
    assert framer.receive_data(b"\ntw") == [b"one"]
    assert framer.receive_data(b"o\nthree\nfo") == [b"two", b"three"]
    assert framer.receive_data(b"") == []
    assert framer.receive_data(b"ur\n") == [b"four"]


def test_carriage_return_is_data():
    assert LineFramer().receive_data(b"a\r\nb\n") == [b"a\r", b"b"]


def test_lines_are_bytes_not_views():
    framer = LineFramer()
    [line] = framer.receive_data(bytearray(b"abc\n"))
    assert type(line) is bytes


def test_close_returns_the_unterminated_rest():
    framer = LineFramer()
    assert framer.receive_data(b"done\npart") == [b"done"]
    assert framer.close() == b"part"
    assert framer.close() == b""                           # nothing left twice


def test_close_after_complete_lines_is_empty():
    framer = LineFramer(keepends=True)
    assert framer.receive_data(b"x\ny\n") == [b"x\n", b"y\n"]
    assert framer.close() == b""


def test_close_empty():
    assert LineFramer().close() == b""


def test_default_limit():
    framer = LineFramer()
    assert framer.receive_data(b"x" * MAX_LINE + b"\n") == [b"x" * MAX_LINE]
    with pytest.raises(RemoteProtocolError):
        LineFramer().receive_data(b"x" * (MAX_LINE + 1) + b"\n")


@pytest.mark.parametrize("keepends", [False, True])
def test_line_of_exactly_max_line_is_accepted(keepends):
    framer = LineFramer(max_line=10, keepends=keepends)
    assert framer.receive_data(b"0123456789") == []        # full, but not over
    assert framer.receive_data(b"\n") == [b"0123456789" + b"\n" * keepends]
    assert framer.receive_data(b"abcdefghij\nk") == [b"abcdefghij" + b"\n" * keepends]


@pytest.mark.parametrize("wire", [b"x" * 11 + b"\n", b"ok\n" + b"x" * 11 + b"\nok\n",
                                  b"x" * 5000 + b"\n"], ids=["alone", "between", "far-over"])
def test_overlong_line_with_its_newline_raises(wire):
    framer = LineFramer(max_line=10)
    with pytest.raises(RemoteProtocolError) as info:
        framer.receive_data(wire)
    assert info.value.error_status_hint == 431


@pytest.mark.parametrize("wire", [b"x" * 11, b"ok\n" + b"x" * 11, b"x" * 5000])
def test_overlong_line_without_newline_yet_raises(wire):
    """The bound holds before the newline comes: a peer cannot make us buffer without end."""
    with pytest.raises(RemoteProtocolError):
        LineFramer(max_line=10).receive_data(wire)


def test_overlong_line_fed_byte_by_byte_raises_at_the_first_byte_over():
    framer = LineFramer(max_line=10)
    for byte in b"0123456789":
        assert framer.receive_data(bytes([byte])) == []
    with pytest.raises(RemoteProtocolError):
        framer.receive_data(b"!")


def test_overlong_line_split_across_calls_with_newline_raises():
    framer = LineFramer(max_line=10)
    assert framer.receive_data(b"ok\n012345") == [b"ok"]
    with pytest.raises(RemoteProtocolError):
        framer.receive_data(b"6789!\n")


@pytest.mark.parametrize("wire", [b"x" * 11, b"ok\n" + b"x" * 11 + b"\nok\n"])
def test_stays_in_error(wire):
    """After refusing a peer the core does not resume (STYLE.md: cores stay in ERROR)."""
    framer = LineFramer(max_line=10)
    with pytest.raises(RemoteProtocolError):
        framer.receive_data(wire)
    for more in (b"", b"\n", b"fine\n"):
        with pytest.raises(RemoteProtocolError):
            framer.receive_data(more)


def test_limit_counts_the_current_line_not_the_buffer():
    """Many short lines in one read are fine however long the read is."""
    framer = LineFramer(max_line=10)
    assert framer.receive_data(b"short\n" * 1000) == [b"short"] * 1000


def test_limit_is_per_line_across_calls():
    framer = LineFramer(max_line=10)
    for _ in range(100):
        assert framer.receive_data(b"0123456") == []
        assert framer.receive_data(b"789\n") == [b"0123456789"]


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes find() had to look at."""

    scanned = 0

    def find(self, sub, start=0, *args):
        result = super().find(sub, start, *args)
        CountingBuffer.scanned += (result + 1 if result >= 0 else len(self)) - start
        return result


@pytest.mark.timeout(20)
def test_long_line_byte_by_byte_is_linear():
    """200 KB fed a byte at a time: the newline search resumes where it stopped, so the bytes
    searched stay O(n); a search from the start of the line each time would look at ~2e10.
    (White-box: the framer's buffer is swapped for one that counts.)"""
    n = 200_000
    framer = LineFramer(max_line=10 * n)
    CountingBuffer.scanned = 0
    framer._buf = CountingBuffer()
    for _ in range(n):
        assert framer.receive_data(b"x") == []
    assert framer.receive_data(b"\n") == [b"x" * n]
    assert CountingBuffer.scanned <= 3 * n


@pytest.mark.timeout(20)
def test_long_line_byte_by_byte_finishes():
    """The same, black-box: 2 MB a byte at a time finishes (well) within the timeout; an
    O(n^2) search would look at ~2e12 bytes."""
    n = 2_000_000
    framer = LineFramer(max_line=n)
    piece = b"y"
    for _ in range(n):
        framer.receive_data(piece)
    assert framer.receive_data(b"\n") == [b"y" * n]
