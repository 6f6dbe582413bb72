"""The loop clocks hare_py reads: ``now()`` and the bound ``clock()`` agree with anyio's."""

from __future__ import annotations

import anyio
import pytest

from hare_py._clock import clock, now


@pytest.fixture
def anyio_backend(fast_clock_backend: object) -> object:
    return fast_clock_backend


@pytest.mark.anyio
async def test_now_and_the_bound_clock_read_the_loops_own_time() -> None:
    """On trio the mock clock jumps over the sleep: both must follow it, as anyio does."""
    read = clock()
    before = anyio.current_time()
    assert before <= now() <= anyio.current_time()
    assert before <= read() <= anyio.current_time()
    await anyio.sleep(0.01)
    assert read() >= before + 0.01
    assert abs(read() - anyio.current_time()) < 0.005
    assert abs(now() - anyio.current_time()) < 0.005


def test_outside_a_loop_the_clock_is_now() -> None:
    assert clock() is now
