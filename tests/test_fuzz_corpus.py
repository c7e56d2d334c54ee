"""The atheris targets' oracles (fuzz/atheris) over their seed corpora
(fuzz/corpus), once each and without atheris: keeps the targets in step
with the API and the reference models between fuzz runs (.ci/run step 5
fuzzes them; README, Fuzzing)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
TARGETS = ["feed", "decoder_aggregate", "aggregator", "ring", "sendbuf", "layout"]


@pytest.mark.parametrize("target", TARGETS)
def test_seed_corpus_passes_the_oracle(target, monkeypatch):
    monkeypatch.setenv("FASTPACKET_FUZZ_REPLAY", "1")  # read when _fuzzlib is first imported
    monkeypatch.syspath_prepend(str(FUZZ / "atheris"))
    module = importlib.import_module(f"fuzz_{target}")
    seeds = sorted((FUZZ / "corpus" / target).iterdir())
    assert len(seeds) >= 5, f"fuzz/corpus/{target} lost its seeds (python fuzz/make_corpus.py)"
    for seed in seeds:
        module.test_one_input(seed.read_bytes())  # raises OracleMismatch (an AssertionError) on a mismatch
    assert "atheris" not in sys.modules or sys.modules["_fuzzlib"].atheris is None
