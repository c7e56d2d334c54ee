"""tools/soak.py stays runnable: a few seconds of churn and a small wave
against a real ``fastpacket serve`` (the 30-minute soak and the
20,000-connection wave are run by hand, see README)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

SOAK = pathlib.Path(__file__).resolve().parents[1] / "tools" / "soak.py"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the soak reads /proc")


def run(args, timeout=120):
    return subprocess.run([sys.executable, str(SOAK)] + args, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_churn_samples_rss_into_a_csv(tmp_path):
    csv = tmp_path / "soak.csv"
    r = run(["churn", "--minutes", "0.1", "--interval", "1", "--warmup-minutes", "0.02", "--concurrency", "4",
             "--max-growth-kib", "1e9", "--csv", str(csv)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 client errors" in r.stdout and "growth after warm-up:" in r.stdout
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("elapsed_s,rss_kib,hwm_kib") and len(rows) >= 4


def test_wave_reports_rss_before_during_and_after():
    r = run(["wave", "--connections", "200", "--settle", "1"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "200 opened and echoed" in r.stdout and "RSS idle" in r.stdout
