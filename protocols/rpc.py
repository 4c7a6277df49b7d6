"""Recipe 11.8's RPC: `RPCHandler` dispatches (name, args, kwargs) calls to registered
functions and answers with the result or the exception raised, over one of two wires.

Why it has this shape
---------------------
* JSON (the default): after the HMAC challenge of recipe 11.9 (protocols.auth), each request is
  a length-prefixed frame (the `!i` header of multiprocessing.connection) holding the JSON array
  `[name, args, kwargs]`; each answer is a frame holding `{"result": value}` or
  `{"error": {"type": "TypeError", "message": "..."}}`.  JSON can build nothing but data, so it
  is safe for anyone who passed authentication.  It is strict RFC 8259 JSON both ways: NaN and
  Infinity are refused in requests and never written in answers.
* pickle: the recipe's own wire, multiprocessing.connection with its authkey handshake, so the
  recipe's client (`Client(address, authkey=...)` + an RPCProxy that sends
  `pickle.dumps((name, args, kwargs))`, which Connection.send pickles once more) works unchanged.
  Pickle can run code, so it is read only after mutual authentication, and then by an
  Unpickler whose find_class admits an allow-list of harmless types (the "Restricting Globals"
  recipe of the pickle docs): a `__reduce__` naming os.system fails before anything is called.
* An allow-list bounds which code runs, not what it costs: a pickle of under 200 bytes can
  build a tuple DAG whose hash walks 2**27 tuples, and 9 bytes (`LONG_BINPUT 2**28`) make the C
  Unpickler zero-fill a 4 GiB memo.  So before the Unpickler sees a byte, check_pickle() reads
  every opcode (with pickletools' table of them) on a model of the stack: lengths within the
  data and no opcode across the end of its frame; memo indices only as far as something was
  memoized; only immutable values may be fetched again from the memo (a shared list could grow
  after it was shared), and the tree they expand to is bounded by a multiple of the pickle's
  size; set elements and dict keys are only values whose hash an attacker cannot collide (str,
  bytes, ints below the hash modulus, None, bools, dates), so no set or dict is a hash flood.
  The allow-list holds no constructor that computes much from a short argument
  (Fraction('1e2000000'), bytearray(2**30), range): bytearray, complex and Decimal are
  admitted only through wrappers that check their arguments.  The scan costs about 2 us for
  the recipe's add(x, y) request (the C Unpickler itself, 0.3 us).

Only registered names dispatch: the registry is a dict, never getattr on an object, and names
that are dotted or start with an underscore cannot be registered.  An unknown name is answered
with NameError.  Functions run on the reactor thread, so they must not block.
"""
from __future__ import annotations

import builtins
import collections
import concurrent.futures
import decimal
import io
import json
import logging
import pickle
import pickletools
import socket
import sys
from typing import Any, Callable, Iterable

from reactor import StreamHandler

from .auth import HMACClientAuth, client_authenticate, with_hmac_auth
from .base import RemoteProtocolError
from .mpconn import FrameDecoder, MPClientHandler, MPConnectionHandler, frame

log = logging.getLogger(__name__)

MAX_JSON_FRAME = 1024 * 1024
MAX_PICKLE_MESSAGE = 1024 * 1024
PICKLE_PROTOCOL = pickle.DEFAULT_PROTOCOL

# Exceptions that may cross the wire by type: the builtins (a user's own exception class is sent
# as RuntimeError naming it: the other side could not, and should not, import it).
BUILTIN_EXCEPTIONS: dict[str, type[BaseException]] = {
    name: obj for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception) and not name.startswith("_")}

# (module, name) the restricted Unpickler may load: values, nothing that acts or computes much.
# Sets and frozensets need no global from protocol 4 on (EMPTY_SET, FROZENSET: checked by
# check_pickle); bytearray, complex and Decimal are loaded as the checking wrappers of _WRAPPED.
SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("builtins", n) for n in ("bytearray", "complex", "slice")]
    + [("datetime", n) for n in ("date", "time", "datetime", "timedelta", "timezone")]
    + [("decimal", "Decimal")])
# What a client also accepts in answers: the builtin exceptions.
SAFE_GLOBALS_WITH_EXCEPTIONS: frozenset[tuple[str, str]] = SAFE_GLOBALS | frozenset(
    ("builtins", name) for name in BUILTIN_EXCEPTIONS)


class RemoteError(Exception):
    """The remote function raised an exception of a type this side does not rebuild."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message


class BadRequest(RemoteProtocolError):
    """A request that is not (name, args, kwargs): answered, then the connection is closed."""


def _bytearray(source: Any = b"", encoding: Any = None) -> bytearray:
    """bytearray as pickles use it (bytes, or a str and "latin-1"), never bytearray(n)."""
    if type(source) is bytes and encoding is None:
        return bytearray(source)
    if type(source) is str and encoding == "latin-1":
        return bytearray(source, "latin-1")
    raise pickle.UnpicklingError("bytearray() is loaded from bytes only")


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    """complex(real, imag) from numbers, never from a string to parse."""
    if type(real) not in (int, float) or type(imag) not in (int, float):
        raise pickle.UnpicklingError("complex() is loaded from two numbers only")
    return complex(real, imag)


def _decimal(value: Any = "0") -> decimal.Decimal:
    """Decimal(str), as Decimal pickles itself; no int or digit tuple to convert."""
    if type(value) is not str:
        raise pickle.UnpicklingError("Decimal() is loaded from a string only")
    return decimal.Decimal(value)


# What find_class hands out for these allowed names: the wrapper, not the type.
_WRAPPED: dict[tuple[str, str], Callable[..., Any]] = {
    ("builtins", "bytearray"): _bytearray, ("builtins", "complex"): _complex,
    ("decimal", "Decimal"): _decimal}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that loads only the globals in `allowed`; anything else is an error.
    (A class attribute, not an __init__ argument: a Python __init__ would double the cost of
    each small load; restricted_loads makes one subclass per allow-list.)  Use it through
    restricted_loads(), which first has check_pickle() bound what the pickle may build."""

    allowed: frozenset[tuple[str, str]] = SAFE_GLOBALS

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            wrapper = _WRAPPED.get((module, name))
            return wrapper if wrapper is not None else super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


# -- the pre-scan ---------------------------------------------------------------------------------

PICKLE_EXPANSION = 16   # the object tree may be this many times the pickle's size in units ...
PICKLE_SLACK = 4096     # ... plus this many (a unit: one object, or 16 bytes of a str or int)

# A value on check_pickle's model of the stack is (flags, weight, name), a list if it is a
# container that opcodes still fill: weight counts the units of the tree it expands to; name is
# the raw UTF-8 of a short str (for STACK_GLOBAL) or the (module, name) of a global.
_SHARE = 1      # immutable once built: a memo GET may push it again
_KEY = 2        # may go into a set or be a dict key: its hash cannot be made to collide
_LIST, _DICT, _SET = 4, 8, 16       # what APPEND(S), SETITEM(S) and ADDITEMS may fill
_TUPLE = 32     # what REDUCE takes as arguments
_GLOBAL = 64    # what find_class returned
_STATE = 128    # a REDUCE result BUILD may update (an exception's attributes)

# Flags of what REDUCE returns, by the callable's name; any other callable's result is _STATE
# (mutable: never shared, never a key).  The datetime types hash their bytes with the
# interpreter's randomized hash; Decimal, complex and slice hash by value, so they are no keys.
_RESULTS: dict[tuple[str, str], int] = {
    **{("datetime", n): _SHARE | _KEY
       for n in ("date", "time", "datetime", "timedelta", "timezone")},
    ("decimal", "Decimal"): _SHARE, ("builtins", "complex"): _SHARE,
    ("builtins", "slice"): _SHARE}

# Below the modulus an int hashes to itself: distinct ints, distinct hashes.  Past it,
# hash(i * (2**61 - 1)) == 0 for every i: a flood.
_HASH_MODULUS = sys.hash_info.modulus

# What each opcode is to the scan: (kind, argument size, detail), indexed by the opcode byte.
(_STR, _MEMOIZE, _SMALL_INT, _TUPLE_N, _MARK, _EMPTY, _GET, _PUT, _FILL, _ADD_ONE, _COLLECT,
 _LEAF, _LONG, _BYTEARRAY, _STACK_GLOBAL, _REDUCE, _BUILD, _POP, _POP_MARK, _SKIP, _STOP,
 _TEXT, _FRAME, _REFUSED) = range(24)
_KEY_LEAF = (_SHARE | _KEY, 1, None)            # None, True, False, a 32-bit int
_FLOAT = (_SHARE, 1, None)
_SPEC: list[tuple[int, int, Any]] = [(_REFUSED, 0, "an unknown opcode")] * 256
for _op in pickletools.opcodes:
    # Refused: DUP (a second reference to anything; pickle.dumps never writes it), INST, OBJ,
    # NEWOBJ, NEWOBJ_EX (classes called or __new__ed with any arguments), EXT1/2/4 (the copyreg
    # registry), PERSID, BINPERSID, NEXT_BUFFER, READONLY_BUFFER (nothing out of band).
    _SPEC[ord(_op.code)] = (_REFUSED, 0, _op.name)
for _code, _spec in {
        # counted strings: size of the length; detail: True for str (kept for STACK_GLOBAL)
        "\x8c": (_STR, 1, True), "X": (_STR, 4, True), "\x8d": (_STR, 8, True),
        "C": (_STR, 1, False), "B": (_STR, 4, False), "\x8e": (_STR, 8, False),
        "\x96": (_BYTEARRAY, 8, None),
        "\x94": (_MEMOIZE, 0, None),
        "K": (_SMALL_INT, 1, _KEY_LEAF), "M": (_SMALL_INT, 2, _KEY_LEAF),
        "J": (_SMALL_INT, 4, _KEY_LEAF),
        "\x8a": (_LONG, 1, None), "\x8b": (_LONG, 4, None),
        "\x85": (_TUPLE_N, 0, 1), "\x86": (_TUPLE_N, 0, 2), "\x87": (_TUPLE_N, 0, 3),
        "(": (_MARK, 0, None),
        "]": (_EMPTY, 0, _LIST), "}": (_EMPTY, 0, _DICT), "\x8f": (_EMPTY, 0, _SET),
        "h": (_GET, 1, None), "j": (_GET, 4, None),
        "q": (_PUT, 1, None), "r": (_PUT, 4, None),
        # pop to MARK and fill the container below it: detail is the container's flag
        "e": (_FILL, 0, _LIST), "u": (_FILL, 0, _DICT), "\x90": (_FILL, 0, _SET),
        "a": (_ADD_ONE, 0, _LIST), "s": (_ADD_ONE, 0, _DICT),
        # pop to MARK and make a new value: detail is its flags (a frozenset's needs keys)
        "t": (_COLLECT, 0, _SHARE | _TUPLE), "l": (_COLLECT, 0, _LIST),
        "d": (_COLLECT, 0, _DICT), "\x91": (_COLLECT, 0, _SHARE),
        "N": (_LEAF, 0, _KEY_LEAF), "\x88": (_LEAF, 0, _KEY_LEAF), "\x89": (_LEAF, 0, _KEY_LEAF),
        ")": (_LEAF, 0, (_SHARE | _KEY | _TUPLE, 1, None)), "G": (_LEAF, 8, _FLOAT),
        "\x93": (_STACK_GLOBAL, 0, None), "R": (_REDUCE, 0, None), "b": (_BUILD, 0, None),
        "0": (_POP, 0, None), "1": (_POP_MARK, 0, None),
        "\x80": (_SKIP, 1, None), "\x95": (_FRAME, 8, None), ".": (_STOP, 0, None),
        # protocol 0 and 1 opcodes with text or odd arguments: read by pickletools
        **{c: (_TEXT, 0, pickletools.code2op[c]) for c in "ILFSVTUgpc"},
}.items():
    _SPEC[ord(_code)] = _spec
del _op, _code, _spec


class _Refused(pickle.UnpicklingError):
    def __init__(self, pos: int, why: str) -> None:
        super().__init__(f"pickle refused at offset {pos}: {why}")


_NOT_A_KEY = ("a set element or dict key must be a str, bytes, an int below the hash modulus, "
              "None, a bool or a date")


def check_pickle(data: bytes, expansion: int = PICKLE_EXPANSION) -> None:
    """Raise pickle.UnpicklingError unless loading data builds a bounded tree of values.

    Nothing is loaded: every opcode is read (each length checked against the data), memo
    indices stay within what was memoized, a memo GET fetches only immutable values (tuples,
    strings, numbers, dates: never a list, dict, set or object, which could change after being
    shared), set elements and dict keys are values with collision-free hashes, and no value
    expands (counting a shared part each time it is reached) to more than
    expansion * len(data) + PICKLE_SLACK units.  So hashing, comparing, printing or pickling
    what comes out costs at most that much, and the Unpickler allocates about len(data).

    It runs before every restricted load, so it is written for speed: one loop, no generator,
    immutable values as tuples (constants where they can be), only containers as lists."""
    limit = expansion * len(data) + PICKLE_SLACK
    stack: list = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    fence = 0                   # the stack index of the last MARK: nothing below it is reachable
    end = len(data)
    # Frames: no opcode may run across the end of its frame, as pickle's own _Unframer says
    # ("pickle exhausted before end of frame"); the C Unpickler does not check, and a length
    # read across a frame's end comes out as garbage (MemoryError from 20 bytes, and worse).
    # (An opcode without an argument cannot cross: only those with one are checked.)
    frame_end = 0
    if data[:3] in (b"\x80\x04\x95", b"\x80\x05\x95"):       # PROTO, FRAME: pickle.dumps
        frame_end = 11 + int.from_bytes(data[3:11], "little")
        if frame_end > end:
            raise _Refused(2, "a frame runs past the end")
        i = pos = 11
    else:
        i = pos = 0
    crossing = "an opcode runs across the end of its frame"
    append = stack.append
    try:
        while True:
            pos = i
            kind, size, detail = _SPEC[data[i]]         # IndexError past the end: no STOP
            i += 1 + size                               # past the end: caught at the next read
            if kind == _MEMOIZE:
                if len(stack) <= fence:
                    raise _Refused(pos, "MEMOIZE of nothing")
                memo[len(memo)] = stack[-1]
            elif kind == _STR or kind == _LONG or kind == _BYTEARRAY:   # a length, then bytes
                n = int.from_bytes(data[i - size:i], "little")
                start = i
                i += n
                if i > end:
                    raise _Refused(pos, f"a length of {n} runs past the end")
                if pos < frame_end < i:
                    raise _Refused(pos, crossing)
                if kind == _STR:
                    # a str's bytes are kept when they may name a global for STACK_GLOBAL
                    item = (_SHARE | _KEY, 1 + n // 16,
                            data[start:i] if detail and n < 256 else None)
                    append(item)
                    if data[i] == 0x94:                 # MEMOIZE, as pickle.dumps writes it
                        memo[len(memo)] = item
                        i += 1
                elif kind == _BYTEARRAY:
                    append([0, 1 + n // 16, None])
                else:
                    key = n <= 8 and (-_HASH_MODULUS < int.from_bytes(
                        data[start:i], "little", signed=True) < _HASH_MODULUS)
                    append((_SHARE | _KEY if key else _SHARE, 1 + n // 16, None))
            elif kind == _SMALL_INT or kind == _LEAF:
                if pos < frame_end < i:
                    raise _Refused(pos, crossing)
                append(detail)
            elif kind == _TUPLE_N:
                if len(stack) - detail < fence:
                    raise _Refused(pos, "stack underflow")
                weight = 1
                for item in stack[-detail:]:
                    weight += item[1]
                del stack[-detail:]
                if weight > limit:
                    raise _Refused(pos, f"a value expands past {limit} units")
                item = (_SHARE | _TUPLE, weight, None)
                append(item)
                if data[i] == 0x94:
                    memo[len(memo)] = item
                    i += 1
            elif kind == _EMPTY:
                item = [detail, 1, None]
                append(item)
                if data[i] == 0x94:
                    memo[len(memo)] = item
                    i += 1
            elif kind == _SKIP:                         # PROTO
                if pos < frame_end < i:
                    raise _Refused(pos, crossing)
            elif kind == _FRAME:
                if pos < frame_end:
                    raise _Refused(pos, "a frame begins before the last one ended")
                frame_end = i + int.from_bytes(data[i - 8:i], "little")
                if frame_end > end:
                    raise _Refused(pos, "a frame runs past the end")
            elif kind == _STOP:
                if len(stack) != 1 or marks:
                    raise _Refused(pos, "STOP with a stack that does not hold one value")
                return
            elif kind == _MARK:
                marks.append(len(stack))
                fence = len(stack)
            elif kind == _GET or kind == _PUT:
                if pos < frame_end < i:
                    raise _Refused(pos, crossing)
                index = int.from_bytes(data[i - size:i], "little")
                if kind == _GET:
                    item = memo.get(index)
                    if item is None:
                        raise _Refused(pos, f"memo index {index} was never memoized")
                    if not item[0] & _SHARE:
                        raise _Refused(pos, "a list, dict, set or object is referenced twice")
                    append(item)
                else:
                    if len(stack) <= fence:
                        raise _Refused(pos, "PUT of nothing")
                    if index > len(memo):
                        raise _Refused(pos, f"memo index {index} skips past the {len(memo)} "
                                            "memoized")
                    memo[index] = stack[-1]
            elif kind == _FILL or kind == _ADD_ONE:
                if kind == _FILL:
                    if not marks:
                        raise _Refused(pos, "no MARK")
                    mark = marks.pop()
                    fence = marks[-1] if marks else 0
                    items = stack[mark:]
                    del stack[mark:]
                else:
                    n = 1 if detail == _LIST else 2
                    if len(stack) - n <= fence:
                        raise _Refused(pos, "stack underflow")
                    items = stack[-n:]
                    del stack[-n:]
                if len(stack) <= fence:
                    raise _Refused(pos, "stack underflow")
                target = stack[-1]
                if not target[0] & detail:
                    raise _Refused(pos, "a list, dict or set is filled with the wrong opcode")
                if detail == _DICT:
                    if len(items) % 2:
                        raise _Refused(pos, "SETITEMS of an odd count")
                    if any(not k[0] & _KEY for k in items[::2]):
                        raise _Refused(pos, _NOT_A_KEY)
                elif detail == _SET and any(not k[0] & _KEY for k in items):
                    raise _Refused(pos, _NOT_A_KEY)
                weight = target[1]
                for item in items:
                    weight += item[1]
                if weight > limit:
                    raise _Refused(pos, f"a value expands past {limit} units")
                target[1] = weight
            elif kind == _COLLECT:
                if not marks:
                    raise _Refused(pos, "no MARK")
                mark = marks.pop()
                fence = marks[-1] if marks else 0
                items = stack[mark:]
                del stack[mark:]
                if detail == _DICT:
                    if len(items) % 2:
                        raise _Refused(pos, "DICT of an odd count")
                    if any(not k[0] & _KEY for k in items[::2]):
                        raise _Refused(pos, _NOT_A_KEY)
                elif detail == _SHARE and any(not k[0] & _KEY for k in items):
                    raise _Refused(pos, _NOT_A_KEY)             # FROZENSET
                weight = 1
                for item in items:
                    weight += item[1]
                if weight > limit:
                    raise _Refused(pos, f"a value expands past {limit} units")
                append((detail, weight, None) if detail & _SHARE else [detail, weight, None])
            elif kind == _STACK_GLOBAL:
                if len(stack) - 2 < fence:
                    raise _Refused(pos, "stack underflow")
                (_, _, module), (_, _, name) = stack[-2:]
                del stack[-2:]
                if type(module) is not bytes or type(name) is not bytes:
                    raise _Refused(pos, "STACK_GLOBAL needs two strings")
                append((_SHARE | _GLOBAL, 1, (module.decode("utf-8", "surrogatepass"),
                                              name.decode("utf-8", "surrogatepass"))))
            elif kind == _REDUCE:
                if len(stack) - 2 < fence:
                    raise _Refused(pos, "stack underflow")
                func, args = stack[-2:]
                del stack[-2:]
                if not func[0] & _GLOBAL or not args[0] & _TUPLE:
                    raise _Refused(pos, "REDUCE needs a global and a tuple")
                flags = _RESULTS.get(func[2], _STATE)
                append((flags, 1 + args[1], None) if flags & _SHARE
                       else [flags, 1 + args[1], None])
            elif kind == _BUILD:
                if len(stack) - 2 < fence:
                    raise _Refused(pos, "stack underflow")
                state = stack.pop()
                target = stack[-1]
                if not target[0] & _STATE:
                    raise _Refused(pos, "BUILD of what is not a freshly made object")
                target[1] += state[1]
                if target[1] > limit:
                    raise _Refused(pos, f"a value expands past {limit} units")
            elif kind == _POP:
                if marks and marks[-1] == len(stack):
                    marks.pop()
                    fence = marks[-1] if marks else 0
                elif len(stack) <= fence:
                    raise _Refused(pos, "stack underflow")
                else:
                    stack.pop()
            elif kind == _POP_MARK:
                if not marks:
                    raise _Refused(pos, "no MARK")
                del stack[marks.pop():]
                fence = marks[-1] if marks else 0
            elif kind == _TEXT:                         # protocol 0 and 1: rare, read slowly
                i = _text_op(data, pos, detail, stack, memo, fence)
                if pos < frame_end < i:
                    raise _Refused(pos, crossing)
            else:
                raise _Refused(pos, f"{detail} is refused")
    except IndexError:
        raise _Refused(pos, "no STOP") from None
    except ValueError as exc:                           # pickletools' readers, decoding
        raise _Refused(pos, f"not a pickle: {exc}") from None


def _text_op(data: bytes, pos: int, op: Any, stack: list, memo: dict, fence: int) -> int:
    """check_pickle for an opcode of protocol 0 or 1 whose argument is text (or a BINSTRING):
    read by pickletools; returns where the next opcode starts."""
    f = io.BytesIO(data)
    f.seek(pos + 1)
    arg = op.arg.reader(f)
    code = op.code
    if code in "IL":
        key = -_HASH_MODULUS < arg < _HASH_MODULUS
        stack.append((_SHARE | _KEY if key else _SHARE, 1 + int(arg).bit_length() // 128, None))
    elif code == "F":
        stack.append(_FLOAT)
    elif code in "STUV":
        stack.append((_SHARE | _KEY, 1 + len(arg) // 16, None))
    elif code == "g":
        item = memo.get(arg)
        if item is None:
            raise _Refused(pos, f"memo index {arg} was never memoized")
        if not item[0] & _SHARE:
            raise _Refused(pos, "a list, dict, set or object is referenced twice")
        stack.append(item)
    elif code == "p":
        if len(stack) <= fence:
            raise _Refused(pos, "PUT of nothing")
        if not 0 <= arg <= len(memo):
            raise _Refused(pos, f"memo index {arg} skips past the {len(memo)} memoized")
        memo[arg] = stack[-1]
    else:                                               # GLOBAL "module name"
        module, _, name = arg.partition(" ")
        stack.append((_SHARE | _GLOBAL, 1, (module, name)))
    return f.tell()


_unpicklers: dict[frozenset, type[RestrictedUnpickler]] = {}


def restricted_loads(data: bytes, allowed: Iterable[tuple[str, str]] = SAFE_GLOBALS) -> Any:
    """pickle.loads of what check_pickle() accepts, with find_class limited to allowed."""
    cls = _unpicklers.get(allowed)          # type: ignore[call-overload]
    if cls is None:
        allowed = frozenset(allowed)
        cls = _unpicklers.setdefault(allowed, type("Restricted", (RestrictedUnpickler,),
                                                   {"allowed": allowed}))
        if len(_unpicklers) > 64:
            _unpicklers.clear()
    check_pickle(data)
    return cls(io.BytesIO(data)).load()


_BYTES_OPS = {0x43: 1, 0x42: 4, 0x8E: 8}       # SHORT_BINBYTES, BINBYTES, BINBYTES8: length size
_BYTES_TAILS = (b"\x94.", b"q\x00.", b".")     # MEMOIZE or BINPUT 0 (or nothing), STOP


def bytes_pickle_payload(data: bytes) -> bytes | None:
    """The bytes object a pickle of one bytes object (protocol 3-5) holds, parsed without an
    Unpickler; None for any other pickle.  The recipe's client pickles every request twice
    (pickle.dumps, then Connection.send), so this outer layer is on every call's path."""
    if len(data) < 5 or data[0] != 0x80 or data[1] not in (3, 4, 5):
        return None
    i = 11 if data[2] == 0x95 else 2                # FRAME opcode + 8-byte length: skipped
    if i >= len(data):
        return None
    size = _BYTES_OPS.get(data[i])
    if size is None:
        return None
    start = i + 1 + size
    n = int.from_bytes(data[i + 1:start], "little")
    end = start + n
    if len(data) < end or data[end:] not in _BYTES_TAILS:
        return None
    return data[start:end]


def _wire_exception(exc: BaseException) -> Exception:
    """exc if the other side may rebuild it (a builtin type with picklable args), else a
    RuntimeError naming it."""
    if BUILTIN_EXCEPTIONS.get(type(exc).__name__) is type(exc):
        try:
            pickle.dumps(exc, PICKLE_PROTOCOL)
            return exc
        except Exception:
            pass
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def rebuild_error(type_name: str, message: str) -> Exception:
    """The exception a JSON error answer stands for: a builtin type by name, else RemoteError."""
    cls = BUILTIN_EXCEPTIONS.get(type_name)
    return cls(message) if cls is not None else RemoteError(type_name, message)


class RPCHandler:
    """The recipe's registry of callable functions (kept under the recipe's name): no I/O, so
    every wire below and every test uses the same dispatch."""

    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}

    def register_function(self, func: Callable[..., Any], name: str | None = None) -> None:
        """Make func callable remotely as name (default: its __name__)."""
        name = func.__name__ if name is None else name
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"cannot register {name!r}: plain public names only (no dots, no _)")
        self._functions[name] = func

    @property
    def names(self) -> list[str]:
        return sorted(self._functions)

    def call(self, name: Any, args: Any = (), kwargs: Any = None) -> Any:
        """Run one call; NameError if name is not registered."""
        func = self._functions.get(name) if type(name) is str else None
        if func is None:
            raise NameError(f"no function named {name!r} is registered")
        return func(*args, **(kwargs or {}))

    def handle_request(self, request: Any) -> tuple[bool, Any]:
        """(True, result) or (False, exception) for a decoded request; BadRequest if it is not
        a (name, args, kwargs) triple of the right types."""
        if type(request) not in (list, tuple) or len(request) != 3:
            raise BadRequest("a request is (name, args, kwargs)")
        name, args, kwargs = request
        if (type(name) is not str or type(args) not in (list, tuple)
                or type(kwargs) is not dict or not all(type(k) is str for k in kwargs)):
            raise BadRequest("a request is (str, list, dict of str)")
        try:
            return True, self.call(name, args, kwargs)
        except Exception as exc:
            return False, exc


# -- JSON codec -----------------------------------------------------------------------------------

def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON (RFC 8259)")


# Strict JSON both ways: NaN and Infinity are neither read (json.loads takes them by default)
# nor written (a result of inf, or of 1e999 read as inf, is an error answer), so every peer's
# parser (JavaScript, Go, serde) can read what we send.
_json_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_json_decode = json.JSONDecoder(parse_constant=_not_json).decode


def _json_loads(data: bytes | str) -> Any:
    """json.loads, refusing NaN, Infinity and -Infinity."""
    if not isinstance(data, str):
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    elif data.startswith("\ufeff"):
        raise ValueError("JSON text starts with a BOM")
    return _json_decode(data)


def json_request(name: str, args: tuple, kwargs: dict) -> bytes:
    return _json_dumps([name, args, kwargs]).encode()


def json_answer(ok: bool, value: Any) -> bytes:
    """The answer frame's payload; a result JSON cannot carry becomes a TypeError answer."""
    if ok:
        try:
            return b'{"result":%s}' % _json_dumps(value).encode()
        except (TypeError, ValueError) as exc:
            value = TypeError(f"result not JSON serializable: {exc}")
    exc = _wire_exception(value)
    return _json_dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}).encode()


def json_decode_answer(payload: bytes) -> Any:
    """A JSON answer: its result, or raise the error it carries."""
    answer = _json_loads(payload)
    if type(answer) is dict:
        if "result" in answer:
            return answer["result"]
        error = answer.get("error")
        if type(error) is dict:
            raise rebuild_error(str(error.get("type")), str(error.get("message")))
    raise RemoteProtocolError("malformed RPC answer")


# -- pickle codec ---------------------------------------------------------------------------------

def pickle_decode_request(payload: bytes, allowed: Iterable[tuple[str, str]] = SAFE_GLOBALS) -> tuple[Any, bool]:
    """(request, wrapped): the recipe's client pickles its request and Connection.send pickles
    those bytes again (wrapped); a plain Connection.send((name, args, kwargs)) does not."""
    try:
        inner = bytes_pickle_payload(payload)
        if inner is not None:
            return restricted_loads(inner, allowed), True
        outer = restricted_loads(payload, allowed)
        if type(outer) is bytes:
            return restricted_loads(outer, allowed), True
    except Exception as exc:
        raise BadRequest(f"cannot unpickle request: {exc}") from None
    return outer, False


def pickle_answer(ok: bool, value: Any, wrapped: bool) -> bytes:
    """The answer payload, wrapped as the recipe's `connection.send(pickle.dumps(r))` is."""
    if not ok:
        value = _wire_exception(value)
    try:
        data = pickle.dumps(value, PICKLE_PROTOCOL)
    except Exception as exc:
        data = pickle.dumps(TypeError(f"result cannot be pickled: {exc}"), PICKLE_PROTOCOL)
    return pickle.dumps(data, PICKLE_PROTOCOL) if wrapped else data


# -- servers on the reactor -----------------------------------------------------------------------

class JSONRPCServerHandler(StreamHandler):
    """JSON frames in, JSON frames out (put the HMAC stage in front: json_rpc_server())."""

    rpc: RPCHandler = RPCHandler()
    max_frame: int = MAX_JSON_FRAME

    def connection_made(self) -> None:
        self._decoder = FrameDecoder(self.max_frame)

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._decoder.frames(data)
        except RemoteProtocolError as exc:
            log.warning("%r: %s, resetting", self, exc)
            self.abort()
            return
        handle, write = self.rpc.handle_request, self.write
        for payload in payloads:
            if self.closing:
                return
            try:
                try:
                    request = _json_loads(payload)
                except Exception as exc:            # ValueError, RecursionError, ...
                    raise BadRequest(f"not JSON: {type(exc).__name__}") from None
                ok, value = handle(request)
            except BadRequest as exc:
                log.warning("%r: bad request: %s", self, exc)
                write(frame(json_answer(False, ValueError(str(exc)))))
                self.close()
                return
            write(frame(json_answer(ok, value)))


class PickleRPCServerHandler(MPConnectionHandler):
    """The recipe's RPC over multiprocessing.connection: pickles read only after mutual
    authentication, and then with the restricted Unpickler."""

    rpc: RPCHandler = RPCHandler()
    max_message: int = MAX_PICKLE_MESSAGE
    allowed_globals: frozenset[tuple[str, str]] = SAFE_GLOBALS

    def connection_made(self) -> None:
        if not self.authkey:        # MPConnectionHandler without a key would skip the handshake
            log.error("%r: the pickle RPC needs an authkey; refusing the connection", self)
            self.abort()
            return
        super().connection_made()

    def bytes_received(self, data: bytes) -> None:
        try:
            request, wrapped = pickle_decode_request(data, self.allowed_globals)
            ok, value = self.rpc.handle_request(request)
        except BadRequest as exc:
            log.warning("%r: bad request: %s", self, exc)
            self.send_bytes(pickle_answer(False, ValueError(str(exc)), True))
            self.close()
            return
        self.send_bytes(pickle_answer(ok, value, wrapped))


def json_rpc_server(rpc: RPCHandler, key: bytes, *, mutual: bool = False,
                    auth_timeout: float | None = 10.0,
                    max_frame: int = MAX_JSON_FRAME) -> type[StreamHandler]:
    """A handler class (a listener's factory) serving rpc over JSON behind the HMAC stage."""
    cls = type("JSONRPC", (JSONRPCServerHandler,), {"rpc": rpc, "max_frame": max_frame})
    return with_hmac_auth(cls, key, mutual=mutual, timeout=auth_timeout)


def pickle_rpc_server(rpc: RPCHandler, authkey: bytes, *, allow_legacy_md5: bool = True,
                      auth_timeout: float | None = 10.0, max_message: int = MAX_PICKLE_MESSAGE,
                      allowed_globals: Iterable[tuple[str, str]] = SAFE_GLOBALS) -> type[StreamHandler]:
    """A handler class serving rpc with pickle over multiprocessing.connection."""
    if not authkey:
        raise ValueError("the pickle codec needs an authkey: pickle is read only after authentication")
    return type("PickleRPC", (PickleRPCServerHandler,), {
        "rpc": rpc, "authkey": authkey, "allow_legacy_md5": allow_legacy_md5,
        "auth_timeout": auth_timeout, "max_message": max_message,
        "allowed_globals": frozenset(allowed_globals)})


# -- clients --------------------------------------------------------------------------------------

class _Proxy:
    """proxy.add(2, 3) -> self._call("add", (2, 3), {}); names with _ are never remote."""

    def __init__(self, call: Callable[[str, tuple, dict], Any]) -> None:
        self._call = call

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        call = self._call

        def do_rpc(*args: Any, **kwargs: Any) -> Any:
            return call(name, args, kwargs)
        do_rpc.__name__ = name
        return do_rpc


class RPCProxy(_Proxy):
    """The recipe's blocking proxy: proxy.add(2, 3) returns 5 or raises what add raised.
    Build it with connect()."""

    def __init__(self, sock_or_conn: Any, codec: str = "json", *,
                 max_answer: int = MAX_PICKLE_MESSAGE, timeout: float | None = 30.0) -> None:
        super().__init__(self._json_call if codec == "json" else self._pickle_call)
        if codec not in ("json", "pickle"):
            raise ValueError(f"unknown codec {codec!r}")
        self._conn, self._max, self._timeout = sock_or_conn, max_answer, timeout
        self._decoder = FrameDecoder(max_answer)

    def _json_call(self, name: str, args: tuple, kwargs: dict) -> Any:
        sock = self._conn
        sock.settimeout(self._timeout)
        sock.sendall(frame(json_request(name, args, kwargs)))
        decoder = self._decoder
        while (payload := decoder.next_frame()) is None:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            decoder.feed(data)
        return json_decode_answer(payload)

    def _pickle_call(self, name: str, args: tuple, kwargs: dict) -> Any:
        conn = self._conn
        conn.send_bytes(pickle.dumps((name, args, kwargs), PICKLE_PROTOCOL))
        if self._timeout is not None and not conn.poll(self._timeout):
            raise TimeoutError(f"no answer to {name} within {self._timeout} s")
        data = conn.recv_bytes(self._max)
        result = restricted_loads(data, SAFE_GLOBALS_WITH_EXCEPTIONS)
        if type(result) is bytes:                  # a recipe-style (twice pickled) answer
            result = restricted_loads(result, SAFE_GLOBALS_WITH_EXCEPTIONS)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RPCProxy:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def connect(address: tuple[str, int], key: bytes, codec: str = "json", *, mutual: bool = False,
            timeout: float | None = 30.0, ssl_context: Any = None,
            server_hostname: str | None = None) -> RPCProxy:
    """A blocking RPCProxy to address: JSON behind the HMAC stage (over TLS with ssl_context,
    verifying server_hostname, default the host), or pickle over a stdlib
    multiprocessing.connection.Client (answers read with the restricted Unpickler; the stdlib
    Client has no TLS)."""
    if codec == "pickle":
        if ssl_context is not None:
            raise ValueError("the pickle codec rides multiprocessing.connection, which has no TLS")
        from multiprocessing.connection import Client
        return RPCProxy(Client(address, authkey=key), "pickle", timeout=timeout)
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or address[0])
        client_authenticate(sock, key, mutual=mutual, timeout=timeout)
    except BaseException:
        sock.close()
        raise
    return RPCProxy(sock, "json", timeout=timeout)


class _ClientCalls:
    """What both reactor clients share: a queue of futures answered in order."""

    def _init_calls(self) -> None:
        self._futures: collections.deque[concurrent.futures.Future] = collections.deque()
        self._held: list[bytes] = []            # requests made before the wire is ready
        self._ready = False
        self.proxy = _Proxy(self.call)

    def call(self, name: str, args: tuple = (), kwargs: dict | None = None) -> concurrent.futures.Future:
        """Send a call now (or once authenticated); the future gets the result or exception.
        Must run on the reactor thread (reactor.call_soon_threadsafe from others)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.closing:
            future.set_exception(ConnectionError("connection closed"))
            return future
        payload = self._encode(name, tuple(args), dict(kwargs or {}))
        self._futures.append(future)
        if self._ready:
            self._send_request(payload)
        else:
            self._held.append(payload)
        return future

    def _wire_ready(self) -> None:
        self._ready = True
        held, self._held = self._held, []
        for payload in held:
            self._send_request(payload)

    def _answer(self, decode: Callable[[], Any]) -> None:
        if not self._futures:
            log.warning("%r: an answer nobody asked for, closing", self)
            self.abort()
            return
        future = self._futures.popleft()
        try:
            result = decode()
        except RemoteProtocolError as exc:
            future.set_exception(exc)
            self.abort()
            return
        except Exception as exc:
            future.set_exception(exc)
            return
        future.set_result(result)

    def _fail_all(self, exc: BaseException | None) -> None:
        error = ConnectionError(f"connection lost: {exc}" if exc else "connection closed")
        while self._futures:
            self._futures.popleft().set_exception(error)


class JSONRPCClientProtocol(_ClientCalls, StreamHandler):
    """JSON RPC calls over frames, without authentication (JSONRPCClientHandler adds it)."""

    max_frame: int = MAX_JSON_FRAME

    def __init__(self, sock: socket.socket, address: Any = None) -> None:
        super().__init__(sock, address)
        self._init_calls()

    def _encode(self, name: str, args: tuple, kwargs: dict) -> bytes:
        return frame(json_request(name, args, kwargs))

    def _send_request(self, payload: bytes) -> None:
        self.write(payload)

    def connection_made(self) -> None:          # behind HMACClientAuth: once authenticated
        self._decoder = FrameDecoder(self.max_frame)
        self._wire_ready()

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._decoder.frames(data)
        except RemoteProtocolError as exc:
            log.warning("%r: %s, resetting", self, exc)
            self.abort()
            return
        for payload in payloads:
            self._answer(lambda: json_decode_answer(payload))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail_all(exc)


class JSONRPCClientHandler(HMACClientAuth, JSONRPCClientProtocol):
    """A JSON RPC client on the reactor: answers the HMAC challenge, then `proxy.add(2, 3)`
    returns a concurrent.futures.Future.  Set auth_key (or use json_rpc_client())."""

    def auth_failed(self, exc: BaseException) -> None:
        self._fail_all(exc)


def json_rpc_client(key: bytes, *, mutual: bool = False,
                    auth_timeout: float | None = 10.0) -> type[JSONRPCClientHandler]:
    """A JSONRPCClientHandler class for connect_tcp(reactor, host, port, cls)."""
    return type("JSONRPCClient", (JSONRPCClientHandler,), {
        "auth_key": bytes(key), "auth_mutual": mutual, "auth_timeout": auth_timeout})


class PickleRPCClientHandler(_ClientCalls, MPClientHandler):
    """A pickle RPC client on the reactor over multiprocessing.connection; answers are read with
    the restricted Unpickler (the builtin exceptions allowed).  Set authkey."""

    max_message: int = MAX_PICKLE_MESSAGE

    def __init__(self, sock: socket.socket, address: Any = None) -> None:
        super().__init__(sock, address)
        self._init_calls()

    def _encode(self, name: str, args: tuple, kwargs: dict) -> bytes:
        return pickle.dumps((name, args, kwargs), PICKLE_PROTOCOL)

    def _send_request(self, payload: bytes) -> None:
        self.send_bytes(payload)

    def authenticated(self) -> None:
        self._wire_ready()

    def bytes_received(self, data: bytes) -> None:
        def decode() -> Any:
            result = restricted_loads(data, SAFE_GLOBALS_WITH_EXCEPTIONS)
            if type(result) is bytes:
                result = restricted_loads(result, SAFE_GLOBALS_WITH_EXCEPTIONS)
            if isinstance(result, BaseException):
                raise result
            return result
        self._answer(decode)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail_all(exc)


def pickle_rpc_client(authkey: bytes, **options: Any) -> type[PickleRPCClientHandler]:
    """A PickleRPCClientHandler class for connect_tcp(reactor, host, port, cls)."""
    return type("PickleRPCClient", (PickleRPCClientHandler,), {"authkey": bytes(authkey), **options})
