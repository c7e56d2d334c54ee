"""Fixtures of the command-line tests."""

from __future__ import annotations

import pytest

from tests.served import Served


@pytest.fixture
def served(tmp_path):
    """start(*args): a ``fastpacket serve`` process (tests.served.Served), killed at the end of the test."""
    started = []

    def start(*args):
        s = Served(list(args), tmp_path)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()
