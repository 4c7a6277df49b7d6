"""reactor.networks: the CIDR parsing the listeners and apps.cidr share, checked against
ipaddress, and allow/deny with IPv4-mapped peers over real loopback sockets."""
from __future__ import annotations

import ipaddress
import logging
import socket

import pytest

import reactor.listener
from reactor import StreamHandler
from reactor.listener import Listener
from reactor.networks import (network_contains, parse_network, parse_networks, peer_allowed,
                              unmap_address, unmap_network)
from reactor.testing import run_until


@pytest.mark.parametrize("spec", ["10.0.0.0/8", "192.168.1.0/24", "10.1.2.3/32", "10.1.2.3",
                                  "2001:db8::/32", "::1/128", "::/0", "0.0.0.0/0",
                                  "10.0.0.0/255.0.0.0", " 10.0.0.0/8 "])
def test_clean_networks_parse_as_ipaddress_does(spec):
    net, corrected = parse_network(spec)
    assert net == ipaddress.ip_network(spec.strip()) and not corrected
    assert parse_network(spec, strict=True)[0] == net


@pytest.mark.parametrize("spec, meant", [("123.45.67.89/27", "123.45.67.64/27"),
                                         ("10.0.0.5/8", "10.0.0.0/8"),
                                         ("2001:db8::1/64", "2001:db8::/64")])
def test_host_bits_are_corrected_or_refused_when_strict(spec, meant):
    net, corrected = parse_network(spec)
    assert str(net) == meant and corrected
    with pytest.raises(ValueError, match="host bits"):
        parse_network(spec, strict=True)


@pytest.mark.parametrize("spec", ["", "foo", "10.0.0.0/33", "10.0.0.256/8", "::1/129", "1.2.3/8"])
def test_non_networks_are_refused(spec):
    with pytest.raises(ValueError):
        parse_network(spec)


def test_mapped_addresses_and_networks_unmap():
    assert unmap_address(ipaddress.ip_address("::ffff:10.1.2.3")) == ipaddress.ip_address("10.1.2.3")
    assert unmap_address(ipaddress.ip_address("::1")) == ipaddress.ip_address("::1")
    assert unmap_network(ipaddress.ip_network("::ffff:10.0.0.0/104")) == ipaddress.ip_network("10.0.0.0/8")
    assert unmap_network(ipaddress.ip_network("::ffff:0:0/96")) == ipaddress.ip_network("0.0.0.0/0")
    assert unmap_network(ipaddress.ip_network("::/0")) == ipaddress.ip_network("::/0")


@pytest.mark.parametrize("net, addr, inside", [
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "::ffff:10.1.2.3", True),
    ("10.0.0.0/8", "::ffff:11.1.2.3", False),
    ("::ffff:10.0.0.0/104", "10.1.2.3", True),
    ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", True),
    ("2001:db8::/32", "2001:db8::1", True),
    ("2001:db8::/32", "10.1.2.3", False),
    ("10.0.0.0/8", "2001:db8::1", False),
])
def test_network_contains_matches_mapped_addresses(net, addr, inside):
    assert network_contains(ipaddress.ip_network(net), ipaddress.ip_address(addr)) == inside


def test_listener_reexports_the_shared_helpers():
    assert reactor.listener.parse_networks is parse_networks
    assert reactor.listener.peer_allowed is peer_allowed


def test_parse_networks_logs_the_correction(caplog):
    with caplog.at_level(logging.WARNING):
        assert [str(n) for n in parse_networks(["10.0.0.5/8", "::ffff:10.0.0.0/104"])] == \
            ["10.0.0.0/8", "10.0.0.0/8"]
    assert "10.0.0.5/8" in caplog.text and "10.0.0.0/8" in caplog.text


@pytest.mark.parametrize("host, allow, deny, ok", [
    ("::ffff:10.0.0.1", ["10.0.0.0/8"], [], True),
    ("::ffff:10.0.0.1", [], ["10.0.0.0/8"], False),
    ("10.0.0.1", [], ["::ffff:10.0.0.0/104"], False),
    ("::ffff:10.0.0.1", ["::ffff:10.0.0.0/104"], [], True),
    ("::1", ["127.0.0.0/8"], [], False),
    ("::1", [], ["127.0.0.0/8"], True),
    ("::1", ["::1/128"], ["10.0.0.0/8"], True),
    ("fe80::1%lo", ["fe80::/10"], [], True),
])
def test_peer_allowed_with_mapped_peers_and_rules(host, allow, deny, ok):
    assert peer_allowed(host, parse_networks(allow), parse_networks(deny)) == ok


# -- over real loopback sockets --------------------------------------------------------------------

class Hello(StreamHandler):
    def connection_made(self):
        self.write(b"hello")


def dual_stack_listener(reactor, host, **rules):
    """An AF_INET6 socket that also takes IPv4 (IPV6_V6ONLY off), bound to a loopback address only:
    bound to ::ffff:127.0.0.1 an IPv4 client arrives as ::ffff:127.0.0.1."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, 0))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        pytest.skip(f"cannot bind {host} dual-stack: {exc}")
    return reactor.add(Listener(sock, Hello, **rules))


def outcome(reactor, listener, family, host) -> str:
    """'served' or 'refused' for one client of listener."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect((host, listener.address[1]))
        client.setblocking(False)
        seen = bytearray()

        def done():
            try:
                data = client.recv(100)
            except BlockingIOError:
                return False
            except ConnectionResetError:
                seen.extend(b"<reset>")
                return True
            seen.extend(data or b"<eof>")
            return not data or seen.startswith(b"hello")
        run_until(reactor, done, timeout=5)
    return "served" if seen.startswith(b"hello") else "refused"


@pytest.mark.parametrize("rules, expected", [
    ({"deny": ["127.0.0.0/8"]}, "refused"),
    ({"deny": ["::ffff:127.0.0.0/104"]}, "refused"),
    ({"allow": ["127.0.0.1/32"]}, "served"),
    ({"allow": ["10.0.0.0/8"]}, "refused"),
    ({"allow": ["::1/128"]}, "refused"),        # the IPv4 client is not the IPv6 loopback
    ({"deny": ["::/0"]}, "served"),             # ...nor any IPv6 peer: IPv4 rules judge it
])
def test_ipv4_client_of_a_dual_stack_listener_is_judged_by_ipv4_rules(reactor, rules, expected):
    listener = dual_stack_listener(reactor, "::ffff:127.0.0.1", **rules)
    assert outcome(reactor, listener, socket.AF_INET, "127.0.0.1") == expected
    assert listener.refused == (expected == "refused")


def ipv6_loopback_or_skip():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")


@pytest.mark.parametrize("rules, expected", [
    ({"deny": ["::1/128"]}, "refused"),
    ({"allow": ["::1"]}, "served"),
    ({"allow": ["127.0.0.0/8"]}, "refused"),
    ({"deny": ["127.0.0.0/8", "::ffff:0:0/96"]}, "served"),
])
def test_ipv6_client_is_judged_by_ipv6_rules(reactor, rules, expected):
    ipv6_loopback_or_skip()
    listener = dual_stack_listener(reactor, "::1", **rules)
    assert outcome(reactor, listener, socket.AF_INET6, "::1") == expected
