"""docs/wire-format.md is normative: its Python examples (exact bytes of a
GAME packet, a big-endian layout, a protocol error, an aggregate frame) run
here as printed, each on its own, so the spec and the code cannot drift
apart."""

from __future__ import annotations

import pathlib
import re

import pytest

SPEC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "wire-format.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list:
    return _BLOCK.findall(SPEC.read_text(encoding="utf-8"))


def test_spec_has_examples() -> None:
    assert len(_blocks()) >= 4


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_spec_example_runs(index: int) -> None:
    code = _blocks()[index]
    exec(compile(code, f"{SPEC.name} example {index + 1}", "exec"), {"__name__": "wire_format_example"})
