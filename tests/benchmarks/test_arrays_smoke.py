"""benchmarks.arrays still runs end to end (one small transfer per case), so it cannot rot.

No speed is asserted (the machines are shared and noisy); only that every case was measured,
that its bytes arrived intact (the benchmark compares CRCs and fails otherwise), and that each
side's memory was read."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.arrays import IMPLS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_arrays_benchmark_measures_every_case():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.arrays", "--size", "4", "--rounds", "1",
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [row["case"] for row in rows] == list(IMPLS)
    for row in rows:
        assert row["size"] == 4 << 20 and row["gb_per_s"] > 0 and row["vs_blocking"] > 0
        assert row["sender_mem"] is not None and row["receiver_mem"] is not None
    assert rows[0]["case"] == "blocking" and rows[0]["vs_blocking"] == 1.0
