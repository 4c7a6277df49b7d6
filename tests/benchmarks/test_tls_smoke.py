"""`python -m benchmarks.tls --quick` still runs end to end (one tiny round per case), so it
cannot rot unnoticed.  Nothing here asserts speed (shared, noisy machines): only that every
server of every case was measured, without errors, and that the ratios were computed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_tls_benchmark_quick_measures_every_server():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.tls", "--quick", "--rounds", "1",
                           "--duration", "0.2", "--warmup", "0.05", "--retries", "0", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["case"]: row for row in map(json.loads, proc.stdout.splitlines())}
    expected = {"echo", "handshake"} | ({"https", "resumed"} if shutil.which("wrk") else set())
    assert set(rows) == expected
    for case, row in rows.items():
        for name, server in row["servers"].items():
            assert server["rate"] > 0 and server["errors"] == 0, (case, name)
        assert row["ratios"] and all(value > 0 for value in row["ratios"].values())
    assert set(rows["echo"]["servers"]) == {"ours-echo", "asyncio-echo"}
    if "https" in rows:
        assert set(rows["https"]["servers"]) == {"ours-raw", "ours-wsgi", "asyncio-http"}
