"""The event-loop fixture of the adapter's tests: every test that takes
``run`` runs once on asyncio's default loop and once on uvloop, each bounded
in time (picows's habit)."""

from __future__ import annotations

import asyncio

import pytest

LOOPS = ["asyncio", "uvloop"]
#: Seconds one test's coroutine may run.
TEST_TIMEOUT = 60.0


@pytest.fixture(params=LOOPS)
def run(request):
    """run(coro): runs the coroutine on a fresh loop of the parametrised kind."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    def runner(coro, timeout=TEST_TIMEOUT):
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))

    yield runner
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


async def recv_packets(session, n, timeout=10.0):
    """The next `n` packets `session` receives (fewer if it closes first)."""
    got = []
    while len(got) < n:
        batch = await session.recv(timeout)
        if batch is None:
            break
        got.extend(batch)
    return got
