"""benchmarks.client still runs end to end (one tiny round), so it cannot rot unnoticed.

Nothing here asserts speed: the machines are shared and noisy.  It only checks that every
client was measured against the same server and every response was verified (a wrong answer
makes the benchmark exit non-zero)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_client_benchmark_measures_all_four_clients():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.client", "--quick", "--requests", "50",
                           "--rounds", "1", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert set(row["clients"]) == {"ours x1", "ours x10", "http.client", "urllib"}
    for name, result in row["clients"].items():
        assert result["req_per_s"] > 0 and result["client_cpu_us"] > 0, name
    assert set(row["ratios"]) == {"ours x10/urllib", "ours x1/http.client"}


@pytest.mark.timeout(120)
def test_client_benchmark_prints_its_table():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.client", "--quick", "--requests", "30",
                           "--rounds", "1", "--clients", "ours x10,urllib"],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ours x10" in proc.stdout and "urllib" in proc.stdout and "target >= 3x" in proc.stdout
