"""benchmarks.rpc still runs end to end (one tiny round per case), so it cannot rot unnoticed.

Nothing here asserts speed (the machines are shared and noisy): only that every case measured
both servers, our service and the recipe's, and that every call was checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_rpc_benchmark_measures_ours_and_the_recipes():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.rpc", "--quick", "--rounds", "1",
                           "--duration", "0.2", "--warmup", "0.05", "--retries", "0", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    cases = [row["case"] for row in rows if "case" in row]
    skipped_xmlrpc = any("xmlrpc skipped" in row.get("note", "") for row in rows)
    assert cases == (["xmlrpc"] if not skipped_xmlrpc else []) + ["mp1", "mp50", "rpc1", "rpc50"]
    for row in rows:
        if "case" in row:
            assert row["ours"]["calls_per_s"] > 0 and row["recipe"]["calls_per_s"] > 0, row["case"]
            assert row["ratio"] > 0
