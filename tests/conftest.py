"""Shared fixtures: input buffer types (python-lz4's habit: every decoder
input is tried as bytes, bytearray, memoryview and a numpy array)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci")


def _offset_memoryview(b: bytes) -> memoryview:
    # a slice at a non-zero offset of a larger buffer
    return memoryview(b"\xaa" * 7 + b + b"\xbb" * 5)[7:7 + len(b)]


BUFFER_TYPES = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "memoryview-offset": _offset_memoryview,
    "numpy-uint8": lambda b: np.frombuffer(b, dtype=np.uint8).copy(),
}


@pytest.fixture(params=sorted(BUFFER_TYPES))
def as_buffer(request):
    """Turns bytes into each supported input buffer type in turn."""
    return BUFFER_TYPES[request.param]
