"""XML-RPC (Cookbook 11.6) on the HTTP/1.1 server: a dispatcher core and a thin handler.

Why it has this shape
---------------------
The dispatcher is sans-I/O: `dispatch(xml bytes) -> xml bytes`, with the marshalling of
`xmlrpc.client` (its `Unmarshaller` to read, `dumps` to write), so whatever the stdlib's
`ServerProxy` sends and expects, we read and write the same way.  What the stdlib's
`SimpleXMLRPCServer` leaves open is closed here, before or while the document is parsed:

  * the body is bounded by the HTTP core (413 before a byte of it is read), and a gzip body is
    inflated only up to the same bound (413 past it: a 1 GB bomb costs max_body, not 1 GB), in
    linear time, and of at most MAX_GZIP_MEMBERS members (70,000 empty ones were a minute);
  * the expat parser refuses any DOCTYPE and any entity declaration, so billion laughs,
    quadratic blowup and external entities never start (the defusedxml approach); the body is
    parsed in one Parse() call, so expat's reparse of large tokens (fixed in 2.6.0) is not
    quadratic either;
  * element nesting and the element count are bounded while parsing: a 100k-deep array is a
    Fault, never a RecursionError in `dumps` when the value comes back;
  * methods dispatch from a table filled at registration: no `getattr` on a request's name,
    so no dotted names, no `_private`, no `__class__` (the CVE-2005-0089 class);
  * anything a method raises is a Fault (code 1, the stdlib's "<class 'KeyError'>:'x'" text),
    and so is a broken request (the interoperability codes -32700...-32603): the connection
    stays up and kept alive;
  * answers are bounded like requests: a response past max_response is a Fault, and
    system.multicall takes at most max_multicall calls and stops calling once its answer is
    too long (400 calls of keys() in 40 kB would answer 20 MB);
  * a CR in a string goes out as `&#13;`: `xmlrpc.client.escape` leaves it raw, and the
    client's parser would read it, and CR LF, as LF.

The handler sits on the raw `HTTPServerHandler`, not on WSGI.  XML-RPC needs one path check,
one method check and one header; the HTTP core already gives what WSGI would add (keep-alive,
pipelining in order, 413 before the body, deadlines), and a WSGI environ, `start_response` and
body iterable cost more than the parse: measured with one ServerProxy doing set/get, about 80 us
of server CPU per call raw against 115 us through protocols.wsgi (of which the XML parse is 16).
"""
from __future__ import annotations

import inspect
import logging
import re
import zlib
from typing import Any, Callable, Iterable, Iterator
from xml.parsers.expat import ExpatError, ParserCreate
from xmlrpc.client import (INTERNAL_ERROR, INVALID_METHOD_PARAMS, INVALID_XMLRPC,
                           METHOD_NOT_FOUND, NOT_WELLFORMED_ERROR, Fault, Marshaller,
                           Unmarshaller, dumps)

from .base import RemoteProtocolError
from .handlers import HTTPServerHandler
from .http import Request, get_list

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024          # request body, and a gzip body once inflated
MAX_DEPTH = 100                     # nested elements: about 32 arrays or structs in each other
MAX_ELEMENTS = 1_000_000            # elements in one document
RPC_PATHS = ("/", "/RPC2")          # SimpleXMLRPCRequestHandler.rpc_paths; others are 404
MAX_GZIP_MEMBERS = 16               # members of one gzip body (ServerProxy sends one)
MAX_RESPONSE = MAX_BODY             # bytes of a methodResponse, else a Fault
MAX_MULTICALL = 10_000              # calls in one system.multicall
_GZIP_MIN_MEMBER = 20               # bytes of the smallest gzip member (header, block, trailer)

# A registered name: an identifier that does not start with "_".  "system." is ours.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class _Refused(Exception):
    """The document uses a feature we never parse (DOCTYPE, entities) or is too big."""


def _refuse_doctype(*args: Any) -> None:
    raise _Refused("DOCTYPE and entity declarations are refused")


class _Reader:
    """Expat events to an Unmarshaller, counting nesting depth and elements on the way."""

    __slots__ = ("start", "end", "depth", "count", "max_depth", "max_elements")

    def __init__(self, target: Unmarshaller, max_depth: int, max_elements: int) -> None:
        self.start, self.end = target.start, target.end
        self.depth = self.count = 0
        self.max_depth, self.max_elements = max_depth, max_elements

    def on_start(self, tag: str, attrs: Any) -> None:
        self.depth += 1
        self.count += 1
        if self.depth > self.max_depth:
            raise _Refused(f"elements nested deeper than {self.max_depth}")
        if self.count > self.max_elements:
            raise _Refused(f"more than {self.max_elements} elements")
        self.start(tag, attrs)

    def on_end(self, tag: str) -> None:
        self.depth -= 1
        self.end(tag)


def parse_call(data: bytes, *, max_depth: int = MAX_DEPTH, max_elements: int = MAX_ELEMENTS,
               use_builtin_types: bool = True) -> tuple[str, tuple]:
    """(method name, params) of a methodCall document, as `xmlrpc.client.loads` reads it, but
    with DOCTYPE and entities refused and nesting bounded; any other document is a Fault."""
    target = Unmarshaller(use_builtin_types=use_builtin_types)
    target.xml(None, None)               # expat hands over str: nothing left to decode
    reader = _Reader(target, max_depth, max_elements)
    parser = ParserCreate(None, None)
    parser.buffer_text = True            # one data event per text node, not one per line
    parser.StartElementHandler = reader.on_start
    parser.EndElementHandler = reader.on_end
    parser.CharacterDataHandler = target.data
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_doctype
    parser.ExternalEntityRefHandler = _refuse_doctype
    try:
        parser.Parse(data, True)
        params = target.close()
    except _Refused as exc:
        raise Fault(NOT_WELLFORMED_ERROR, f"refused: {exc}") from None
    except ExpatError as exc:
        raise Fault(NOT_WELLFORMED_ERROR, f"not well-formed XML: {exc}") from None
    except Fault:                        # the peer sent a fault document: not a call
        raise Fault(INVALID_XMLRPC, "a fault is not a methodCall") from None
    except Exception as exc:             # ResponseError, a bad <int>, <boolean>, base64 ...
        # the text may quote the peer's input (a megabyte tag name): echo only its start
        raise Fault(INVALID_XMLRPC, f"invalid XML-RPC: {type(exc).__name__}: {exc}"[:200]) from None
    method = target.getmethodname()
    if not isinstance(method, str):
        raise Fault(INVALID_XMLRPC, "not a methodCall")
    return method, params


def gunzip(data: bytes, limit: int, max_members: int | None = MAX_GZIP_MEMBERS) -> bytes:
    """Inflate a gzip body, never producing more than limit bytes (413 past it, 400 if it is
    not gzip, 413 for more than max_members members): unlike gzip.decompress, a bomb costs
    limit bytes of memory, not its full size.

    Linear in the body: a member ends where its inflater says, so each member's inflater is
    fed slices of a memoryview from where the last one stopped, growing from the smallest
    member (20 bytes) by doubling; what it reads past its member's end is never more than it
    read of the member, so zlib reads each byte at most about three times, however many members
    there are.  (Handing each member the whole remainder, and taking back its unused_data, is
    quadratic: 70,000 empty members in 1.4 MB cost a minute.)  ServerProxy sends one member."""
    view = memoryview(data)
    end = len(view)
    out: list[bytes] = []
    size = start = members = 0
    try:
        while True:
            members += 1
            if max_members is not None and members > max_members:
                raise RemoteProtocolError(
                    f"gzip body of more than {max_members} members", 413)
            d = zlib.decompressobj(wbits=31)
            pos, step = start, _GZIP_MIN_MEMBER
            while not d.eof:
                if pos >= end:
                    raise RemoteProtocolError("truncated gzip body")
                chunk = view[pos:pos + step]
                pos += len(chunk)
                step *= 2
                piece = d.decompress(chunk, limit - size + 1)
                size += len(piece)
                if size > limit:
                    raise RemoteProtocolError(f"gzip body inflates past {limit} bytes", 413)
                out.append(piece)
            start = pos - len(d.unused_data)    # concatenated members, as GzipFile reads them
            if start >= end:
                break
    except zlib.error as exc:
        raise RemoteProtocolError(f"bad gzip body: {exc}") from None
    return b"".join(out)


class XMLRPCDispatcher:
    """Registered functions by name, the system.* introspection and multicall, and the
    XML in / XML out step; no I/O, so it serves any transport (and tests without one)."""

    def __init__(self, *, allow_none: bool = False, encoding: str = "utf-8",
                 use_builtin_types: bool = True, introspection: bool = True,
                 multicall: bool = True, max_depth: int = MAX_DEPTH,
                 max_elements: int = MAX_ELEMENTS, max_response: int = MAX_RESPONSE,
                 max_multicall: int = MAX_MULTICALL) -> None:
        # use_builtin_types: bytes and datetime rather than Binary and DateTime, which are
        # unhashable (no dict keys) and slower; the client decides its own types anyway.
        self.allow_none, self.encoding = allow_none, encoding
        self.use_builtin_types = use_builtin_types
        self.max_depth, self.max_elements = max_depth, max_elements
        self.max_response, self.max_multicall = max_response, max_multicall
        self.funcs: dict[str, Callable[..., Any]] = {}
        if introspection:
            self.register_introspection_functions()
        if multicall:
            self.register_multicall_functions()

    # -- registration (the SimpleXMLRPCServer calls) ----------------------------------------

    def register_function(self, function: Callable[..., Any] | None = None,
                          name: str | None = None) -> Any:
        """Serve function under name (default: its __name__); usable as a decorator.  Names
        are identifiers not starting with "_": nothing else can ever be dispatched."""
        if function is None:
            return lambda f: self.register_function(f, name)
        name = function.__name__ if name is None else name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"cannot serve {name!r}: names are identifiers without a leading _")
        self.funcs[name] = function
        return function

    def register_instance(self, instance: Any, methods: Iterable[str] | None = None) -> None:
        """Serve instance's methods: those named in methods, else in its `_rpc_methods_` (the
        recipe's list), else its public callables.  The table is fixed now: a later attribute,
        or a dotted name in a request, reaches nothing."""
        if methods is None:
            methods = getattr(instance, "_rpc_methods_", None)
        if methods is None:
            methods = [n for n in dir(instance) if not n.startswith("_")
                       and callable(getattr(instance, n, None))]
        for name in methods:
            self.register_function(getattr(instance, name), name)

    def register_introspection_functions(self) -> None:
        """system.listMethods, system.methodHelp, system.methodSignature."""
        self.funcs["system.listMethods"] = self.system_listMethods
        self.funcs["system.methodHelp"] = self.system_methodHelp
        self.funcs["system.methodSignature"] = self.system_methodSignature

    def register_multicall_functions(self) -> None:
        """system.multicall: many calls in one request."""
        self.funcs["system.multicall"] = self.system_multicall

    # -- system.* ----------------------------------------------------------------------------

    def system_listMethods(self) -> list[str]:
        """system.listMethods() => the names this server dispatches, sorted."""
        return sorted(self.funcs)

    def system_methodHelp(self, name: str) -> str:
        """system.methodHelp('name') => the method's documentation string."""
        func = self.funcs.get(name) if isinstance(name, str) else None
        return (inspect.getdoc(func) or "") if func is not None else ""

    def system_methodSignature(self, name: str) -> str:
        """system.methodSignature('name') => 'signatures not supported' (as the stdlib)."""
        return "signatures not supported"

    def system_multicall(self, calls: list) -> list:
        """system.multicall([{'methodName': 'add', 'params': [2, 2]}, ...]) => [[4], ...]

        A failing call is a fault struct in its place; the others still run, in order."""
        return list(self._multicall(calls))

    def _multicall(self, calls: Any) -> Iterator[Any]:
        """The results of system.multicall, one by one: [result] or a fault struct."""
        if not isinstance(calls, list):
            raise Fault(INVALID_METHOD_PARAMS, "system.multicall takes a list of calls")
        if len(calls) > self.max_multicall:
            raise Fault(INVALID_METHOD_PARAMS,
                        f"system.multicall takes at most {self.max_multicall} calls")
        for call in calls:
            try:
                if not isinstance(call, dict):
                    raise Fault(INVALID_METHOD_PARAMS, "a call is a struct")
                name, params = call.get("methodName"), call.get("params", [])
                if name == "system.multicall":
                    raise Fault(INVALID_METHOD_PARAMS, "system.multicall cannot be nested")
                if not isinstance(name, str) or not isinstance(params, list):
                    raise Fault(INVALID_METHOD_PARAMS, "a call needs methodName and params")
                yield [self.call(name, params)]
            except Fault as fault:
                yield _fault_struct(fault)

    def _multicall_response(self, calls: Any) -> str:
        """The methodResponse of system.multicall, marshalled call by call so that it stops at
        max_response characters, before more is built or called (400 calls of keys() in a
        40 kB request would build a 20 MB answer; 70,000 in 8 MiB, gigabytes).  The text is
        what dumps((results,), methodresponse=True) writes, joined from each result's <value>;
        a result that does not marshal is a fault in its place, not the end of the others."""
        head = _MULTICALL_HEAD if self.encoding == "utf-8" else _MULTICALL_HEAD.replace(
            "?>", f" encoding='{self.encoding}'?>", 1)
        parts = [head]
        size = len(head) + len(_MULTICALL_TAIL)
        encoding, allow_none = self.encoding, self.allow_none
        for result in self._multicall(calls):
            try:                             # a Marshaller per value: a failed one is dirty
                value = Marshaller(encoding, allow_none).dumps((result,))
            except Exception as exc:
                value = Marshaller(encoding, allow_none).dumps(
                    (_fault_struct(Fault(1, f"{type(exc)}:{exc}")),))
            value = value[len(_PARAM_HEAD):-len(_PARAM_TAIL)]
            size += len(value)
            if size > self.max_response:
                raise _too_large(self.max_response)
            parts.append(value)
        parts.append(_MULTICALL_TAIL)
        return "".join(parts)

    # -- calling -----------------------------------------------------------------------------

    def call(self, name: str, params: tuple | list) -> Any:
        """Call a registered method; any exception comes out as a Fault."""
        func = self.funcs.get(name)
        if func is None:
            raise Fault(METHOD_NOT_FOUND, f'method "{name[:100]}" is not supported')
        try:
            return func(*params)
        except Fault:
            raise
        except Exception as exc:
            log.debug("%s raised", name, exc_info=True)
            raise Fault(1, f"{type(exc)}:{exc}") from None

    def dispatch(self, data: bytes) -> bytes:
        """A methodCall document in, its methodResponse document out (a result or a Fault):
        never raises, so a bad request costs the peer a Fault, not the connection.  A response
        longer than max_response is a Fault too: requests are bounded, and so are answers."""
        try:
            method, params = parse_call(data, max_depth=self.max_depth,
                                        max_elements=self.max_elements,
                                        use_builtin_types=self.use_builtin_types)
            if (method == "system.multicall" and len(params) == 1
                    and self.funcs.get(method) == self.system_multicall):
                response = self._multicall_response(params[0])
            else:
                result = self.call(method, params)
                response = dumps((result,), methodresponse=True, allow_none=self.allow_none,
                                 encoding=self.encoding)
                if len(response) > self.max_response:
                    raise _too_large(self.max_response)
        except Fault as fault:
            response = dumps(fault, allow_none=self.allow_none, encoding=self.encoding)
        except Exception as exc:         # the result would not marshal (None, 2**40, depth)
            response = dumps(Fault(1, f"{type(exc)}:{exc}"), allow_none=self.allow_none,
                             encoding=self.encoding)
        if "\r" in response:
            # xmlrpc.client.escape leaves CR as it is, and the peer's XML parser turns a raw
            # CR (or CR LF) into LF: written as a character reference, it arrives as CR.
            response = response.replace("\r", "&#13;")
        encoded = response.encode(self.encoding, "xmlcharrefreplace")
        if len(encoded) > self.max_response:      # a character is one byte or more: rarely
            encoded = fault_response(INTERNAL_ERROR, _too_large(self.max_response).faultString,
                                     self.encoding)
        return encoded


def _fault_struct(fault: Fault) -> dict:
    """A fault in a multicall result list, as SimpleXMLRPCDispatcher writes it."""
    return {"faultCode": fault.faultCode, "faultString": fault.faultString}


def _too_large(limit: int) -> Fault:
    return Fault(INTERNAL_ERROR, f"the response would exceed {limit} bytes")


# How Marshaller.dumps frames one value, and the methodResponse around a multicall's array
# (xmlrpc.client.dumps((list,), methodresponse=True) writes exactly these).
_PARAM_HEAD, _PARAM_TAIL = "<params>\n<param>\n", "</param>\n</params>\n"
_MULTICALL_HEAD = ("<?xml version='1.0'?>\n<methodResponse>\n" + _PARAM_HEAD
                   + "<value><array><data>\n")
_MULTICALL_TAIL = "</data></array></value>\n" + _PARAM_TAIL + "</methodResponse>\n"


def fault_response(code: int, message: str, encoding: str = "utf-8") -> bytes:
    """A methodResponse carrying Fault(code, message)."""
    return dumps(Fault(code, message), encoding=encoding).encode(encoding, "xmlcharrefreplace")


# -- the handler ------------------------------------------------------------------------------

_XML = [(b"content-type", b"text/xml")]
_XML_GZIP = [(b"content-type", b"text/xml"), (b"content-encoding", b"gzip")]
_TEXT = (b"content-type", b"text/plain")
_IDENTITY = ([], [b"identity"])
_GZIP = ([b"gzip"], [b"x-gzip"])


class XMLRPCHandler(HTTPServerHandler):
    """One HTTP connection serving `dispatcher` (set by xmlrpc_factory): POST to rpc_paths."""

    dispatcher: XMLRPCDispatcher
    rpc_paths: frozenset = frozenset(p.encode() for p in RPC_PATHS)
    max_body: int = MAX_BODY
    limits: dict = {"max_body": MAX_BODY}
    encode_threshold: int | None = None  # gzip responses above this size if the client accepts

    def request_received(self, request: Request, body: bytes) -> None:
        if request.target not in self.rpc_paths:
            self.respond(404, [_TEXT], b"Not Found\n")
            return
        if request.method != b"POST":
            self.respond(405, [_TEXT, (b"allow", b"POST")], b"XML-RPC takes POST\n")
            return
        headers = request.headers
        codings = get_list(headers, b"content-encoding")
        if codings not in _IDENTITY:
            if codings not in _GZIP:
                self.respond(415, [_TEXT], b"Content-Encoding must be gzip or identity\n")
                return
            try:
                body = gunzip(body, self.max_body)
            except RemoteProtocolError as exc:
                self.respond(exc.error_status_hint, [_TEXT], f"{exc}\n".encode())
                return
        response = self.dispatcher.dispatch(body)
        threshold = self.encode_threshold
        if threshold is not None and len(response) > threshold and b"gzip" in get_list(
                headers, b"accept-encoding"):
            c = zlib.compressobj(6, zlib.DEFLATED, 31)
            self.respond(200, _XML_GZIP, c.compress(response) + c.flush())
            return
        self.respond(200, _XML, response)


def xmlrpc_factory(dispatcher: XMLRPCDispatcher, *, max_body: int = MAX_BODY,
                   rpc_paths: Iterable[str] = RPC_PATHS, encode_threshold: int | None = None,
                   **options: Any) -> type[XMLRPCHandler]:
    """A handler class for listen_tcp that serves dispatcher; options set handler attributes
    (keep_alive_timeout, header_timeout, ...)."""
    attrs = {"dispatcher": dispatcher, "max_body": max_body,
             "limits": {**XMLRPCHandler.limits, "max_body": max_body},
             "rpc_paths": frozenset(p.encode() for p in rpc_paths),
             "encode_threshold": encode_threshold, **options}
    return type("XMLRPC", (XMLRPCHandler,), attrs)


__all__ = ["MAX_BODY", "MAX_DEPTH", "MAX_ELEMENTS", "MAX_GZIP_MEMBERS", "MAX_MULTICALL",
           "MAX_RESPONSE", "RPC_PATHS", "Fault",
           "XMLRPCDispatcher", "XMLRPCHandler", "fault_response", "gunzip", "parse_call",
           "xmlrpc_factory"]
