"""protocols.xmlrpc: the dispatcher without a network (the stdlib's SimpleXMLRPCDispatcher and
xmlrpc.client as oracles), the attacks of shared/notes/reliability.md section 5 (E8-E11), and
the handler over loopback with the stdlib's own ServerProxy and http.client as peers."""
from __future__ import annotations

import datetime
import gzip
import http.client
import socket
import time
import tracemalloc
import xmlrpc.client
import xmlrpc.server
import zlib
from xmlrpc.client import Fault, ServerProxy, dumps, loads

import pytest

from protocols.base import RemoteProtocolError
import protocols.xmlrpc as xmlrpc_mod
from protocols.xmlrpc import (MAX_DEPTH, MAX_GZIP_MEMBERS, MAX_MULTICALL, XMLRPCDispatcher,
                              gunzip, parse_call, xmlrpc_factory)
from tests.protocols.zlib_counter import counting_zlib

# -- helpers ------------------------------------------------------------------------------------


def call(dispatcher: XMLRPCDispatcher, method: str, *params, allow_none: bool = True):
    """Marshal a call the way ServerProxy does, dispatch it, unmarshal the answer (a Fault
    raises, as it does for a ServerProxy user)."""
    data = dumps(params, method, allow_none=allow_none).encode()
    return raw(dispatcher, data)


def raw(dispatcher: XMLRPCDispatcher, data: bytes):
    (result,), _ = loads(dispatcher.dispatch(data), use_builtin_types=True)
    return result


def fault_of(dispatcher: XMLRPCDispatcher, data: bytes) -> Fault:
    with pytest.raises(Fault) as info:
        raw(dispatcher, data)
    return info.value


class Store:
    """The recipe's KeyValueServer methods, plus things that must never be reachable."""

    _rpc_methods_ = ["get", "set", "keys"]

    def __init__(self):
        self._data = {}
        self.touched = []

    def get(self, name):
        """Return the value of name."""
        return self._data[name]

    def set(self, name, value):
        self._data[name] = value

    def keys(self):
        return list(self._data)

    def wipe(self):                      # public, but not in _rpc_methods_
        self.touched.append("wipe")
        self._data.clear()

    def _secret(self):
        self.touched.append("_secret")
        return "secret"


@pytest.fixture
def store():
    return Store()


@pytest.fixture
def dispatcher(store):
    d = XMLRPCDispatcher(allow_none=True)
    d.register_instance(store)
    d.register_function(pow)
    return d


# -- calls, results and faults -------------------------------------------------------------------

VALUES = [0, -2**31, 2**31 - 1, 1.5, True, False, "", "héllo \u2603 <&>", None, b"\x00\xffbytes",
          datetime.datetime(2024, 2, 29, 12, 30, 1), [], [1, [2, [3]]], {}, {"a": {"b": [None]}}]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_round_trip_as_serverproxy_sends_them(dispatcher, value):
    assert call(dispatcher, "set", "k", value) is None
    assert call(dispatcher, "get", "k") == value


def test_call_without_params_and_builtin_functions(dispatcher):
    assert call(dispatcher, "keys") == []
    assert call(dispatcher, "pow", 2, 10) == 1024


def test_a_missing_key_is_the_stdlib_fault(dispatcher, store):
    stdlib = xmlrpc.server.SimpleXMLRPCDispatcher(allow_none=True)
    stdlib.register_function(store.get)
    data = dumps(("nope",), "get").encode()
    with pytest.raises(Fault) as theirs:
        loads(stdlib._marshaled_dispatch(data))
    ours = fault_of(dispatcher, data)
    assert (ours.faultCode, ours.faultString) == (theirs.value.faultCode,
                                                  theirs.value.faultString)
    assert ours.faultString == "<class 'KeyError'>:'nope'"


def test_wrong_arguments_and_raised_faults(dispatcher):
    assert "TypeError" in fault_of(dispatcher, dumps((1, 2, 3), "get").encode()).faultString

    @dispatcher.register_function(name="fail")
    def fail():
        raise Fault(42, "as you wish")
    assert fault_of(dispatcher, dumps((), "fail").encode()).faultCode == 42


@pytest.mark.parametrize("result", [None, 2**40, object(), {1: "non-string key"}],
                         ids=["None", "2**40", "object", "int-key"])
def test_results_that_do_not_marshal_are_faults(result):
    d = XMLRPCDispatcher(allow_none=False)
    d.register_function(lambda: result, "answer")
    assert fault_of(d, dumps((), "answer").encode()).faultCode == 1


def test_allow_none_off_refuses_none_results_but_still_answers():
    d = XMLRPCDispatcher()
    d.register_function(lambda: None, "nothing")
    d.register_function(lambda: 1, "one")
    assert "allow_none" in fault_of(d, dumps((), "nothing").encode()).faultString
    assert call(d, "one") == 1


# -- what may be dispatched -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["_secret", "__class__", "__init__", "wipe", "get.__globals__",
                                  "get.__self__._secret", "_data", "store.get", "a.b.c", " get",
                                  "system.multicall.__self__", "system._dispatch", "GET",
                                  "get\u200b", "x" * 10000])
def test_only_registered_names_dispatch(dispatcher, store, name):
    fault = fault_of(dispatcher, dumps((), name).encode())
    assert fault.faultCode == xmlrpc.client.METHOD_NOT_FOUND
    assert len(fault.faultString) < 200
    assert store.touched == []


def test_empty_or_missing_method_names(dispatcher):
    empty = b"<methodCall><methodName></methodName><params/></methodCall>"
    assert fault_of(dispatcher, empty).faultCode == xmlrpc.client.METHOD_NOT_FOUND
    assert fault_of(dispatcher, b"<methodCall><params/></methodCall>").faultCode == \
        xmlrpc.client.INVALID_XMLRPC


def test_register_instance_fixes_the_table_at_registration(store):
    d = XMLRPCDispatcher()
    d.register_instance(store)
    store.later = lambda: "late"
    assert sorted(n for n in d.funcs if not n.startswith("system.")) == ["get", "keys", "set"]
    assert fault_of(d, dumps((), "later").encode()).faultCode == xmlrpc.client.METHOD_NOT_FOUND


def test_register_instance_without_a_list_takes_public_callables():
    class Math:
        scale = 3

        def add(self, x, y):
            return x + y

        def _hidden(self):
            return 0
    d = XMLRPCDispatcher(introspection=False, multicall=False)
    d.register_instance(Math())
    assert list(d.funcs) == ["add"]


@pytest.mark.parametrize("name", ["_x", "__call__", "a.b", "", "1a", "sys tem", "system.x", 3])
def test_registering_unservable_names_is_refused(name):
    with pytest.raises(ValueError):
        XMLRPCDispatcher().register_function(len, name)


def test_system_methods(dispatcher):
    names = call(dispatcher, "system.listMethods")
    assert names == sorted(names)
    assert {"get", "set", "keys", "pow", "system.multicall", "system.methodHelp"} <= set(names)
    assert "wipe" not in names
    assert call(dispatcher, "system.methodHelp", "get") == "Return the value of name."
    assert call(dispatcher, "system.methodHelp", "nope") == ""
    assert call(dispatcher, "system.methodSignature", "get") == "signatures not supported"


def test_system_methods_can_be_left_out():
    d = XMLRPCDispatcher(introspection=False, multicall=False)
    for name in ("system.listMethods", "system.methodHelp", "system.multicall"):
        assert fault_of(d, dumps(([],), name).encode()).faultCode == xmlrpc.client.METHOD_NOT_FOUND


def test_multicall_matches_the_stdlib_client(dispatcher):
    proxy_calls = [{"methodName": "set", "params": ["a", 1]},
                   {"methodName": "get", "params": ["a"]},
                   {"methodName": "get", "params": ["missing"]},
                   {"methodName": "nope", "params": []},
                   {"methodName": "system.multicall", "params": [[]]},
                   "not a struct",
                   {"params": []},
                   {"methodName": "get", "params": "not a list"}]
    results = call(dispatcher, "system.multicall", proxy_calls)
    assert results[:2] == [[None], [1]]
    codes = [r["faultCode"] for r in results[2:]]
    assert codes == [1, xmlrpc.client.METHOD_NOT_FOUND] + [xmlrpc.client.INVALID_METHOD_PARAMS] * 4
    iterator = xmlrpc.client.MultiCallIterator(results)
    assert iterator[1] == 1
    with pytest.raises(Fault, match="KeyError"):
        iterator[2]
    assert fault_of(dispatcher, dumps(("x",), "system.multicall").encode()).faultCode == \
        xmlrpc.client.INVALID_METHOD_PARAMS


@pytest.mark.parametrize("encoding", ["utf-8", "iso-8859-1"])
def test_multicall_response_is_what_dumps_writes(store, encoding):
    """The multicall answer is marshalled result by result (to stop at max_response), and is
    still byte for byte the document xmlrpc.client.dumps makes of the whole list."""
    d = XMLRPCDispatcher(allow_none=True, encoding=encoding)
    d.register_instance(store)
    store._data.update({"s": "h\u00e9llo <&> \u2603", "l": [1, [2.5, {"x": None}]], "b": b"\x00",
                        "t": datetime.datetime(2024, 2, 29, 12, 30, 1), "n": None})
    calls = [{"methodName": "get", "params": [k]} for k in [*store._data, "missing"]]
    calls += [{"methodName": "keys", "params": []}, {"methodName": "nope", "params": []}]
    request = dumps((calls,), "system.multicall").encode()
    expected = dumps((d.system_multicall(calls),), methodresponse=True, allow_none=True,
                     encoding=encoding).encode(encoding, "xmlcharrefreplace")
    assert d.dispatch(request) == expected


def test_a_multicall_result_that_does_not_marshal_is_a_fault_in_its_place():
    d = XMLRPCDispatcher(allow_none=False)
    d.register_function(lambda: None, "nothing")
    d.register_function(lambda: 1, "one")
    results = call(d, "system.multicall", [{"methodName": "nothing", "params": []},
                                           {"methodName": "one", "params": []}],
                   allow_none=False)
    assert results[0]["faultCode"] == 1 and "allow_none" in results[0]["faultString"]
    assert results[1] == [1]


def test_multicall_count_is_bounded(dispatcher, store):
    calls = [{"methodName": "set", "params": ["k", 1]}] * (MAX_MULTICALL + 1)
    fault = fault_of(dispatcher, dumps((calls,), "system.multicall").encode())
    assert fault.faultCode == xmlrpc.client.INVALID_METHOD_PARAMS
    assert store._data == {}                    # refused before any call ran
    assert len(call(dispatcher, "system.multicall", calls[:MAX_MULTICALL])) == MAX_MULTICALL


def test_responses_are_bounded(store):
    """A response past max_response is a Fault, a single call's as well as a multicall's; a
    multicall stops calling once its answer is too long."""
    d = XMLRPCDispatcher(allow_none=True, max_response=10_000)
    d.register_instance(store)
    counted = []
    d.register_function(lambda: counted.append(1) or "x" * 1000, "kilo")
    assert call(d, "kilo") == "x" * 1000
    store._data["big"] = "y" * 10_000
    assert fault_of(d, dumps(("big",), "get").encode()).faultCode == xmlrpc.client.INTERNAL_ERROR
    counted.clear()
    request = dumps(([{"methodName": "kilo", "params": []}] * 1000,), "system.multicall").encode()
    response = d.dispatch(request)
    assert len(response) < 10_000 and b"exceed" in response
    assert len(counted) < 11                    # 1000 calls asked for, 10 or so made
    assert len(call(d, "system.multicall", [{"methodName": "kilo", "params": []}] * 8)) == 8


def test_carriage_returns_reach_the_client(dispatcher, store):
    """xmlrpc.client.escape leaves CR raw and the client's parser would read it as LF: the
    server writes it as a character reference, so the stdlib client gets the CR back.  (A
    request must do the same to carry one: the stdlib client's own requests lose it.)"""
    value = {"a\r": "x\r\ny\rz"}
    request = dumps(("k\r", value), "set").replace("\r", "&#13;").encode()
    assert raw(dispatcher, request) is None
    assert store._data == {"k\r": value}
    assert b"\r" not in dispatcher.dispatch(dumps(("k\r",), "get").replace("\r", "&#13;").encode())
    assert raw(dispatcher, dumps(("k\r",), "get").replace("\r", "&#13;").encode()) == value
    assert call(dispatcher, "keys") == ["k\r"]


# -- documents that are refused (E8, E11) --------------------------------------------------------

CALL = b"<methodCall><methodName>get</methodName><params><param><value>%s</value></param></params></methodCall>"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
""" + CALL % b"<string>&lol9;</string>"

QUADRATIC = (b'<?xml version="1.0"?><!DOCTYPE q [<!ENTITY a "' + b"x" * 100_000 + b'">]>'
             + CALL % (b"<string>" + b"&a;" * 20_000 + b"</string>"))

BOMBS = {
    "billion-laughs": BILLION_LAUGHS,
    "quadratic-blowup": QUADRATIC,
    "external-entity": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                       + CALL % b"<string>&e;</string>",
    "external-dtd": b'<?xml version="1.0"?><!DOCTYPE methodCall SYSTEM "http://127.0.0.1:9/x.dtd">'
                    + CALL % b"<string>x</string>",
    "parameter-entity": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/passwd">%p;]>'
                        + CALL % b"<string>x</string>",
    "harmless-doctype": b"<!DOCTYPE methodCall>" + CALL % b"<string>x</string>",
}


@pytest.mark.parametrize("doc", BOMBS.values(), ids=BOMBS.keys())
def test_doctype_and_entities_are_refused_before_expansion(dispatcher, store, doc):
    store.set("x", "reachable")
    started = time.perf_counter()
    fault = fault_of(dispatcher, doc)
    assert time.perf_counter() - started < 1.0
    assert fault.faultCode == xmlrpc.client.NOT_WELLFORMED_ERROR
    assert "DOCTYPE" in fault.faultString


def test_undefined_entities_are_errors_not_lookups(dispatcher):
    assert fault_of(dispatcher, CALL % b"<string>&nope;</string>").faultCode == \
        xmlrpc.client.NOT_WELLFORMED_ERROR


def nested_arrays(depth: int) -> bytes:
    return CALL % (b"<array><data><value>" * depth + b"<int>1</int>"
                   + b"</value></data></array>" * depth)


def test_deep_nesting_is_a_fault_not_a_recursion_error(dispatcher):
    started = time.perf_counter()
    fault = fault_of(dispatcher, nested_arrays(100_000))
    assert time.perf_counter() - started < 2.0
    assert fault.faultCode == xmlrpc.client.NOT_WELLFORMED_ERROR
    assert "deeper" in fault.faultString


def test_nesting_up_to_the_bound_round_trips(dispatcher):
    deepest = (MAX_DEPTH - 5) // 3       # methodCall params param value ... int: 5, array data value: 3
    value = 1
    for _ in range(deepest):
        value = [value]
    assert call(dispatcher, "set", "deep", value) is None
    assert call(dispatcher, "get", "deep") == value
    assert fault_of(dispatcher, nested_arrays(deepest + 1)).faultCode == \
        xmlrpc.client.NOT_WELLFORMED_ERROR


def test_element_count_is_bounded():
    d = XMLRPCDispatcher(max_elements=1000)
    d.register_function(len)
    ok = dumps(([1] * 200,), "len").encode()
    assert raw(d, ok) == 200
    assert "elements" in fault_of(d, dumps(([1] * 600,), "len").encode()).faultString


MALFORMED = {
    "empty": b"",
    "not-xml": b"hello",
    "unclosed": b"<methodCall><methodName>get</methodName>",
    "response-not-call": dumps((1,), methodresponse=True).encode(),
    "fault-not-call": dumps(Fault(3, "x")).encode(),
    "fault-with-bad-members": b"<methodResponse><fault><value><struct><member><name>x</name>"
                              b"<value><int>1</int></value></member></struct></value></fault>"
                              b"</methodResponse>",
    "bad-int": CALL % b"<int>one</int>",
    "huge-int": CALL % (b"<i8>" + b"9" * 5000 + b"</i8>"),
    "bad-boolean": CALL % b"<boolean>2</boolean>",
    "bad-base64": CALL % b"<base64>abc</base64>",
    "bad-date": CALL % b"<dateTime.iso8601>yesterday</dateTime.iso8601>",
    "unknown-tag-in-value": CALL % b"<evil>1</evil>",
    "huge-unknown-tag": CALL % (b"<" + b"e" * 100_000 + b"/>"),
    "unbalanced-array": b"<methodCall><methodName>get</methodName><params><param><value><array>"
                        b"<data></data></array></value></param></params><array></methodCall>",
}


@pytest.mark.parametrize("doc", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_faults(dispatcher, doc):
    fault = fault_of(dispatcher, doc)
    assert fault.faultCode in (xmlrpc.client.NOT_WELLFORMED_ERROR, xmlrpc.client.INVALID_XMLRPC)
    assert len(fault.faultString) <= 200


def test_declared_encodings_are_honoured(dispatcher, store):
    store.set("é", "utf-16 works")
    doc = "<?xml version='1.0' encoding='utf-16'?>" + (CALL % b"<string>\xc3\xa9</string>").decode()
    assert raw(dispatcher, doc.encode("utf-16")) == "utf-16 works"


def test_parse_call_matches_stdlib_loads():
    data = dumps((1, "two", [3.0, {"four": b"5"}], None), "m", allow_none=True).encode()
    assert parse_call(data) == loads(data, use_builtin_types=True)[::-1]


# -- gzip bodies (E9) --------------------------------------------------------------------------------

def test_gunzip_round_trip_and_concatenated_members():
    assert gunzip(gzip.compress(b"abc"), 3) == b"abc"
    assert gunzip(gzip.compress(b"ab") + gzip.compress(b"cd"), 10) == b"abcd"
    assert gunzip(gzip.compress(b""), 0) == b""


def test_gunzip_limit_is_exact():
    assert gunzip(gzip.compress(b"x" * 100), 100) == b"x" * 100
    with pytest.raises(RemoteProtocolError) as info:
        gunzip(gzip.compress(b"x" * 101), 100)
    assert info.value.error_status_hint == 413
    with pytest.raises(RemoteProtocolError) as info:    # the limit spans members
        gunzip(gzip.compress(b"x" * 60) * 2, 100)
    assert info.value.error_status_hint == 413


@pytest.mark.parametrize("sizes", [[0] * 500, [1, 5000, 3, 70000, 0, 20, 100_000],
                                   [(i * 7919) % 3000 for i in range(300)]],
                         ids=["empty", "mixed", "many"])
def test_gunzip_reads_each_byte_a_bounded_number_of_times(monkeypatch, sizes):
    """Many members are read in linear time: zlib is fed at most 3x the body in all, whatever
    the number and sizes of the members (the old loop fed each member the whole rest)."""
    parts = [bytes((i * 31 + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]
    body = b"".join(gzip.compress(p) for p in parts)
    fed = counting_zlib(monkeypatch)
    assert gunzip(body, 1 << 24, max_members=None) == b"".join(parts)
    assert sum(fed) <= 3 * len(body)
    assert fed.count(0) >= len(parts)


def test_gzip_members_are_counted(monkeypatch):
    one = gzip.compress(b"x")
    assert gunzip(one * MAX_GZIP_MEMBERS, 1000) == b"x" * MAX_GZIP_MEMBERS
    fed = counting_zlib(monkeypatch)
    with pytest.raises(RemoteProtocolError) as info:
        gunzip(one * 70_000, 1000)
    assert info.value.error_status_hint == 413
    assert sum(fed) <= 3 * len(one) * (MAX_GZIP_MEMBERS + 1)     # the rest is never read


def gzip_bomb(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join(c.compress(block) for _ in range(size >> 20)) + c.flush()


def test_gzip_bomb_is_stopped_at_the_limit():
    bomb = gzip_bomb(64 << 20)                   # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < 1 << 20
    limit = 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError) as info:
            gunzip(bomb, limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.error_status_hint == 413
    assert peak < 4 * limit


@pytest.mark.parametrize("data", [b"", b"not gzip", gzip.compress(b"abc")[:-5],
                                  gzip.compress(b"abc") + b"trailing"],
                         ids=["empty", "not-gzip", "truncated", "trailing-garbage"])
def test_gunzip_refuses_what_is_not_gzip(data):
    with pytest.raises(RemoteProtocolError) as info:
        gunzip(data, 1000)
    assert info.value.error_status_hint == 400


# -- the handler over loopback --------------------------------------------------------------------

@pytest.fixture
def server(serve_in_thread, dispatcher):
    return serve_in_thread(xmlrpc_factory(dispatcher, max_body=64 * 1024, encode_threshold=1400))


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict | None = None):
    conn.request("POST", path, body, {"Content-Type": "text/xml", **(headers or {})})
    response = conn.getresponse()
    return response, response.read()


def test_serverproxy_over_one_kept_alive_connection(server, rt, store):
    url = "http://%s:%d" % server
    with ServerProxy(url, allow_none=True) as proxy, ServerProxy(url + "/", allow_none=True) as root:
        for i in range(20):
            proxy.set("k", i)
            with pytest.raises(Fault):
                proxy.get("missing")
        assert proxy.get("k") == 19
        assert root.keys() == ["k"]                  # POST / as well as POST /RPC2
        multi = xmlrpc.client.MultiCall(proxy)
        multi.get("k")
        multi.keys()
        assert list(multi()) == [19, ["k"]]
    assert rt.call(lambda: rt.reactor.stats()["accepts"]) == 2


def test_paths_methods_and_encodings(server):
    conn = http.client.HTTPConnection(*server, timeout=5)
    body = dumps(("k",), "get").encode()
    response, _ = post(conn, "/other", body)
    assert response.status == 404
    conn.request("GET", "/RPC2")
    response = conn.getresponse()
    assert (response.status, response.getheader("allow")) == (405, "POST")
    response.read()
    response, _ = post(conn, "/RPC2", body, {"Content-Encoding": "br"})
    assert response.status == 415
    response, data = post(conn, "/RPC2", gzip.compress(dumps((), "keys").encode()),
                          {"Content-Encoding": "gzip"})
    assert response.status == 200 and loads(data)[0] == ([],)
    response, _ = post(conn, "/RPC2", gzip_bomb(8 << 20), {"Content-Encoding": "gzip"})
    assert response.status == 413
    response, _ = post(conn, "/RPC2", b"\x1f\x8bnot really", {"Content-Encoding": "gzip"})
    assert response.status == 400
    response, data = post(conn, "/RPC2", BILLION_LAUGHS)      # a Fault, and still kept alive
    assert response.status == 200 and b"DOCTYPE" in data
    response, data = post(conn, "/RPC2", dumps((), "keys").encode())
    assert response.status == 200
    conn.close()


def test_large_responses_are_gzipped_for_clients_that_accept_it(server):
    with ServerProxy("http://%s:%d" % server, allow_none=True) as proxy:
        proxy.set("big", "x" * 5000)
        assert proxy.get("big") == "x" * 5000       # ServerProxy sends Accept-Encoding: gzip
    conn = http.client.HTTPConnection(*server, timeout=5)
    response, data = post(conn, "/RPC2", dumps(("big",), "get").encode(),
                          {"Accept-Encoding": "gzip"})
    assert response.getheader("content-encoding") == "gzip"
    assert loads(gzip.decompress(data))[0] == ("x" * 5000,)
    conn.close()


def test_gzip_requests_from_serverproxy(server):
    transport = xmlrpc.client.Transport()
    transport.encode_threshold = 0               # ServerProxy gzips every request
    with ServerProxy("http://%s:%d" % server, transport=transport, allow_none=True) as proxy:
        proxy.set("z", "zipped")
        assert proxy.get("z") == "zipped"


def test_oversized_body_is_413_before_it_is_read(server):
    with socket.create_connection(server, timeout=5) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                     b"Content-Length: 1000000000\r\n\r\n")   # and never a byte of the body
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower()


def test_pipelined_calls_are_answered_in_order(server):
    bodies = [dumps(("k", i), "set").encode() for i in range(3)] + [dumps(("k",), "get").encode()]
    wire = b"".join(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
                    for b in bodies)
    with socket.create_connection(server, timeout=5) as sock:
        sock.sendall(wire)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 ") == 4
    assert answer.rstrip().endswith(b"<value><int>2</int></value>\n</param>\n</params>\n</methodResponse>")
