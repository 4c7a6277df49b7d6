"""The ports and flags a command line means, checked without binding anything.

Every other app test runs with `--port 0`, so nothing else would notice a default port drifting
from the README's table.  Each app's own build_parser() is the oracle for what it runs alone;
for `apps.serve` it is the parser each service gets from serve's service_args(), which is the
exact path its main() takes.  apps.udp picks its echo port in mount(), so that one is read from
mount() with a bind_udp that records instead of binding.
"""
from __future__ import annotations

import types

import pytest

from apps import arrays, echo, kvstore, mpecho, rest, rpc, serve, udp, wsgi

# The README's services table: module -> default port (TCP unless it says udp).
README_PORTS = {echo: 20000, udp: 14000, rest: 8080, kvstore: 15000, mpecho: 25000,
                rpc: 17000, arrays: 16000, wsgi: 8000}
README_UDP_ECHO_PORT = 15000
STREAM = [name for name in serve.SERVICES if name != "udp"]


def udp_ports(args) -> dict[str, int]:
    """{service: port} that apps.udp's mount() would bind for args (nothing is bound)."""
    bound = {}

    def record(reactor, host, port, factory):
        bound[factory.__name__] = port
        return types.SimpleNamespace(address=(host, port))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(udp, "bind_udp", record)
        udp.mount(None, args)
    return {"time": bound["UDPTimeServer"], "echo": bound["UDPEchoServer"]}


@pytest.mark.parametrize("module", list(README_PORTS), ids=lambda m: m.__name__)
def test_each_app_alone_defaults_to_the_readme_port(module):
    args = module.build_parser().parse_args(["some.module:app"] if module is wsgi else [])
    assert args.port == README_PORTS[module]
    assert args.host == "127.0.0.1"


def test_udp_alone_puts_echo_on_15000_and_both_on_free_ports_with_port_0():
    defaults = udp.build_parser().parse_args([])
    assert udp_ports(defaults) == {"time": 14000, "echo": README_UDP_ECHO_PORT}
    assert udp_ports(udp.build_parser().parse_args(["--port", "0"])) == {"time": 0, "echo": 0}


def serve_sub_args(name: str, argv: list[str]):
    """The namespace apps.serve's main() builds for service `name` from its own argv."""
    args = serve.build_parser().parse_args(argv)
    return serve.SERVICES[name].build_parser().parse_args(serve.service_args(name, args))


@pytest.mark.parametrize("name", serve.SERVICES)
def test_serve_mounts_each_service_on_its_readme_port(name):
    module = serve.SERVICES[name]
    sub = serve_sub_args(name, [])
    assert sub.port == README_PORTS[module]
    if module is udp:
        assert udp_ports(sub) == {"time": 14000, "echo": README_UDP_ECHO_PORT}


@pytest.mark.parametrize("name", serve.SERVICES)
def test_serve_with_port_0_puts_every_service_on_a_free_port(name):
    sub = serve_sub_args(name, ["--port", "0"])
    assert sub.port == 0
    if serve.SERVICES[name] is udp:
        assert udp_ports(sub) == {"time": 0, "echo": 0}


@pytest.mark.parametrize("name", STREAM)
def test_serve_forwards_allow_deny_and_max_connections_to_stream_services(name):
    sub = serve_sub_args(name, ["--allow", "127.0.0.1/32", "--allow", "10.0.0.0/8",
                                "--deny", "10.1.0.0/16", "--max-connections", "7"])
    assert (sub.allow, sub.deny, sub.max_connections) == (
        ["127.0.0.1/32", "10.0.0.0/8"], ["10.1.0.0/16"], 7)
    plain = serve_sub_args(name, [])
    assert (plain.allow, plain.deny, plain.max_connections) == ([], [], None)
