"""apps.cidr against ipaddress, the oracle: the same addresses, hosts and counts, IPv4 and IPv6;
host bits, --strict, --contains with mapped addresses; huge networks streamed, `| head` quiet."""
from __future__ import annotations

import ipaddress
import subprocess
import sys
import time

import pytest

from apps import cidr
from tests.apps._proc import REPO


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cidr.main(list(argv))
    except SystemExit as exc:           # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apps.cidr", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


NETWORKS = ["123.45.67.64/27", "10.0.0.0/30", "10.0.0.0/31", "10.0.0.7/32", "192.168.0.0/22",
            "0.0.0.0/28", "255.255.255.240/28", "2001:db8::/124", "2001:db8::/120", "::/125",
            "::1/128", "fe80::/127", "2001:db8:0:1::ff00/120", "1:2:3:4:5:6:7:0/122",
            "::ffff:10.0.0.0/120", "ff02::/123"]


@pytest.mark.parametrize("spec", NETWORKS)
@pytest.mark.parametrize("hosts", [False, True], ids=["all", "hosts"])
def test_listing_matches_ipaddress(capsys, spec, hosts):
    net = ipaddress.ip_network(spec)
    code, out, err = run_main(capsys, spec, *(["--hosts"] if hosts else []))
    assert code == 0 and err == ""
    assert out.splitlines() == [str(a) for a in (net.hosts() if hosts else net)]


@pytest.mark.parametrize("spec", NETWORKS + ["10.0.0.0/8", "0.0.0.0/0", "2001:db8::/64", "::/0",
                                             "2001:db8::/127", "2001:db8::/126"])
@pytest.mark.parametrize("hosts", [False, True], ids=["all", "hosts"])
def test_count_matches_ipaddress(capsys, spec, hosts):
    net = ipaddress.ip_network(spec)
    code, out, _ = run_main(capsys, spec, "--count", *(["--hosts"] if hosts else []))
    if not hosts:
        expected = net.num_addresses
    elif net.num_addresses <= 4096:
        expected = len(list(net.hosts()))
    else:                               # too many to list: ipaddress's rule, by prefix
        expected = net.num_addresses - (2 if net.version == 4 else 1)
    assert code == 0 and int(out) == expected


def test_the_recipes_network_with_host_bits_is_used_and_named_on_stderr():
    proc = run_cli("123.45.67.89/27")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [str(a) for a in ipaddress.ip_network("123.45.67.64/27")]
    assert "123.45.67.89/27" in proc.stderr and "123.45.67.64/27" in proc.stderr


def test_strict_refuses_host_bits_with_status_2():
    proc = run_cli("123.45.67.89/27", "--strict")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "host bits" in proc.stderr


@pytest.mark.parametrize("argv", [["nonsense"], ["10.0.0.0/33"], ["10.0.0.0/8", "--contains", "x"],
                                  ["10.0.0.0/8", "--count", "--contains", "10.0.0.1"]])
def test_bad_input_is_a_usage_error(capsys, argv):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == "" and "error" in err


@pytest.mark.parametrize("spec, addr, hosts, inside", [
    ("10.0.0.0/8", "10.1.2.3", False, True),
    ("10.0.0.0/8", "11.1.2.3", False, False),
    ("10.0.0.0/8", "::ffff:10.1.2.3", False, True),          # mapped address, IPv4 network
    ("10.0.0.0/8", "::ffff:11.1.2.3", False, False),
    ("::ffff:10.0.0.0/104", "10.1.2.3", False, True),         # mapped network, IPv4 address
    ("2001:db8::/32", "2001:db8:1::1", False, True),
    ("2001:db8::/32", "10.1.2.3", False, False),
    ("10.0.0.0/24", "10.0.0.0", False, True),
    ("10.0.0.0/24", "10.0.0.0", True, False),                 # the network address is no host
    ("10.0.0.0/24", "10.0.0.255", True, False),
    ("10.0.0.0/24", "::ffff:10.0.0.254", True, True),
    ("2001:db8::/64", "2001:db8::", True, False),
    ("123.45.67.89/27", "123.45.67.64", False, True),         # corrected network
])
def test_contains_exits_0_or_1(capsys, spec, addr, hosts, inside):
    code, out, _ = run_main(capsys, spec, "--contains", addr, *(["--hosts"] if hosts else []))
    assert code == (0 if inside else 1)
    assert (" is in " in out) == inside
    net = ipaddress.ip_network(spec, strict=False)
    plain = ipaddress.ip_address(addr)
    plain = plain.ipv4_mapped or plain if plain.version == 6 else plain
    if plain.version == net.version and not hosts:           # ipaddress agrees where it can judge
        assert (plain in net) == inside


@pytest.mark.parametrize("spec", ["10.0.0.0/8", "2001:db8::/64", "::/0"])
def test_huge_networks_stream_and_a_closed_pipe_ends_quietly(spec):
    """`| head -n 3`: the first lines come at once (nothing is built first), and the broken pipe
    ends the program with status 0 and nothing on stderr."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "apps.cidr", spec], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = [proc.stdout.readline().decode().strip() for _ in range(3)]
        proc.stdout.close()                                  # the reader leaves
        code = proc.wait(timeout=20)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    net = ipaddress.ip_network(spec)
    assert first == [str(net[i]) for i in range(3)]
    assert code == 0 and err == "", err
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("spec", ["10.64.0.0/14", "2001:db8::/110"])
def test_larger_networks_match_ipaddress_line_by_line(spec):
    """Several /24 (or 65,536-address) blocks, read as a stream and compared as it comes."""
    proc = subprocess.Popen([sys.executable, "-m", "apps.cidr", spec], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        count = 0
        for line, addr in zip(proc.stdout, ipaddress.ip_network(spec)):
            assert line == f"{addr}\n"
            count += 1
        assert proc.stdout.read() == ""
    finally:
        proc.stdout.close()
        proc.wait(timeout=20)
    assert proc.returncode == 0 and count == ipaddress.ip_network(spec).num_addresses


def test_a_slash_8_is_listed_whole_without_holding_it():
    """All 16,777,216 lines, counted as they stream by; the first, last and a block boundary
    checked (the line-by-line comparison is the test above, on a /14)."""
    proc = subprocess.Popen([sys.executable, "-m", "apps.cidr", "10.0.0.0/8"], cwd=REPO,
                            stdout=subprocess.PIPE)
    try:
        head = proc.stdout.read(1 << 20)
        lines, tail = head.count(b"\n"), b""
        while chunk := proc.stdout.read(1 << 20):
            lines += chunk.count(b"\n")
            tail = (tail + chunk)[-64:]
    finally:
        proc.stdout.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0 and lines == 2**24
    first = head.split(b"\n")
    assert first[:2] == [b"10.0.0.0", b"10.0.0.1"] and first[255:257] == [b"10.0.0.255", b"10.0.1.0"]
    assert tail.endswith(b"\n10.255.255.254\n10.255.255.255\n")


def test_count_of_the_whole_ipv6_space_is_instant():
    proc = run_cli("::/0", "--count", "--hosts")
    assert proc.returncode == 0 and int(proc.stdout) == 2**128 - 1
