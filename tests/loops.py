"""The event-loop fixture of the adapter's tests: every test that takes
``run`` runs once on asyncio's default loop and once on uvloop, each bounded
in time (picows's habit)."""

from __future__ import annotations

import asyncio
import gc

import pytest

LOOPS = ["asyncio", "uvloop"]
#: Seconds one test's coroutine may run.
TEST_TIMEOUT = 60.0
#: Seconds the tasks a test left running may take to end once cancelled.
TEARDOWN_TIMEOUT = 5.0


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
    # what a test left running (a failing assert skips its own clean-up) is
    # cancelled and awaited here, as asyncio.run does, and what it left
    # unreferenced is collected now: an unclosed socket or transport then
    # warns in this test's teardown, not in whichever test the garbage
    # collector happens to run next
    loop.run_until_complete(asyncio.sleep(0))
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=TEARDOWN_TIMEOUT))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    gc.collect()


async def recv_packets(session, n, timeout=10.0):
    """The next `n` packets `session` receives (fewer if it closes first)."""
    got = []
    while len(got) < n:
        batch = await session.recv(timeout)
        if batch is None:
            break
        got.extend(batch)
    return got
