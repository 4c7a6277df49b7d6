"""benchmarks.rpc still runs end to end (one tiny round per case), so it cannot rot unnoticed.

Nothing here asserts speed (the machines are shared and noisy): only that every case, XML-RPC
included, measured both servers, our service and the recipe's, with the server CPU each call
cost, and that every call was checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_rpc_benchmark_measures_ours_and_the_recipes():
    # 0.5 s windows: server CPU is read from /proc in 10 ms clock ticks, and a busy server needs
    # a few of them per window for a nonzero CPU per call even on a loaded machine
    proc = subprocess.run([sys.executable, "-m", "benchmarks.rpc", "--quick", "--rounds", "1",
                           "--duration", "0.5", "--warmup", "0.05", "--retries", "0", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [row.get("case") for row in rows] == ["xmlrpc", "mp1", "mp50", "rpc1", "rpc50"], rows
    for row in rows:
        for side in ("ours", "recipe"):
            assert row[side]["calls_per_s"] > 0, (row["case"], side)
            # server CPU per call, read from /proc over the measured window
            assert row[side]["cpu_us_per_call"] > 0, (row["case"], side, row[side]["rounds"])
        assert row["ratio"] > 0
