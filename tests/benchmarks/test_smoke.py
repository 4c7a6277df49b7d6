"""The benchmarks still run end to end (one tiny round each), so they cannot rot unnoticed.

Nothing here asserts speed: the machines are shared and noisy, and speed is the benchmarks' own
business.  These only check that both servers were measured and that every echo was verified."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_json(module: str, *args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", module, "--rounds", "1", "--duration", "0.2",
                           "--warmup", "0.05", "--client", "python", "--json", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.timeout(120)
def test_echo_benchmark_measures_both_servers():
    rows = run_json("benchmarks.echo", "--cases", "64x1,1kx10")
    assert [row["case"] for row in rows] == ["64x1", "1kx10"]
    for row in rows:
        assert row["ours"]["rt_per_s"] > 0 and row["asyncio"]["rt_per_s"] > 0
        assert row["ratio"] > 0


@pytest.mark.timeout(120)
def test_scaling_benchmark_holds_idle_connections():
    rows = run_json("benchmarks.scaling", "--idle", "0,100")
    assert [row["idle"] for row in rows] == [0, 100]
    for row in rows:
        assert row["ours"]["rt_per_s"] > 0 and row["asyncio"]["rt_per_s"] > 0


@pytest.mark.timeout(120)
def test_http_benchmark_measures_all_five_servers():
    rows = run_json("benchmarks.http", "--cases", "ka10,close10")
    assert [row["case"] for row in rows] == ["ka10", "close10"]
    assert set(rows[0]["servers"]) == {"ours-raw", "ours-wsgi", "asyncio", "asyncio-core", "wsgiref"}
    assert set(rows[1]["servers"]) == {"ours-raw", "asyncio", "asyncio-core", "wsgiref"}
    for row in rows:
        for name, server in row["servers"].items():
            assert server["req_per_s"] > 0, name
            assert server["non2xx"] == 0, name
        assert row["ratios"] and all(value > 0 for value in row["ratios"].values())
    assert rows[1]["servers"]["ours-raw"]["connects_per_s"] > 0


@pytest.mark.timeout(60)
def test_http_benchmark_prints_its_table():
    """Without --json: the header names the load client, then the table and its case rows."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.http", "--quick", "--rounds", "1",
                           "--duration", "0.2", "--warmup", "0.05", "--client", "python",
                           "--cases", "ka1", "--servers", "ours-raw,asyncio"],
                          cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("HTTP/1.1 GET over 127.0.0.1;")
    assert "; client: python (" in lines[0]
    header = next(line for line in lines if line.startswith("case "))
    assert header.split() == ["case", "server", "req/s", "us/req", "busy", "srv/cli", "errors"]
    rows = lines[lines.index(header) + 1:]
    assert rows[0].startswith("keep-alive x 1") and rows[0].split()[3] == "ours-raw"
    assert rows[1].split()[0] == "asyncio" and "ours-raw/asyncio" in rows[2]
    assert not any(line.startswith("{") for line in lines)
