"""The backstop: one task gives up on callers still unanswered at their deadline plus the grace."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from hare_py.actor.backstop import Backstop
from hare_py.actor.caller import Caller

pytestmark = pytest.mark.anyio

GRACE = 0.1


@pytest.fixture
def anyio_backend(fast_clock_backend: object) -> object:
    return fast_clock_backend


@asynccontextmanager
async def running(backstop: Backstop) -> AsyncIterator[Backstop]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(backstop.run)
        yield backstop
        tg.cancel_scope.cancel()


async def wait(caller: Caller) -> float:
    """Wait for ``caller`` the way ``request()`` does; return when it ended."""
    if not caller.done:
        await caller.waiter(asyncio._get_running_loop())  # None on trio
    return anyio.current_time()


async def test_an_overdue_caller_is_given_up_on_at_its_deadline_plus_the_grace() -> None:
    backstop = Backstop(GRACE)
    with anyio.fail_after(5):
        async with running(backstop):
            start = anyio.current_time()
            caller = Caller(start + 0.2)
            backstop.add(caller)
            ended = await wait(caller)
            backstop.leave(caller)
    assert caller.gave_up
    assert 0.2 + GRACE <= ended - start < 0.2 + GRACE + 0.5
    assert len(backstop) == 0


async def test_an_answered_caller_is_left_alone_and_dropped() -> None:
    backstop = Backstop(GRACE)
    with anyio.fail_after(5):
        async with running(backstop):
            caller = Caller(anyio.current_time() + 0.2)
            backstop.add(caller)
            caller.resolve("answer")
            await wait(caller)
            backstop.leave(caller)
            assert len(backstop) == 0
            await anyio.sleep(0.5)  # past its deadline plus the grace
    assert caller.value == "answer"


async def test_an_earlier_deadline_added_later_wakes_the_backstop_in_time() -> None:
    backstop = Backstop(GRACE)
    with anyio.fail_after(5):
        async with running(backstop):
            start = anyio.current_time()
            late, early = Caller(start + 60), Caller(start + 0.2)
            backstop.add(late)
            await anyio.sleep(0.01)  # the backstop sleeps until the late one's deadline
            backstop.add(early)
            ended = await wait(early)
            backstop.leave(early)
            assert not late.done
            late.resolve(None)
            backstop.leave(late)
    assert early.gave_up
    assert ended - start < 0.2 + GRACE + 0.5


async def test_callers_are_given_up_on_in_deadline_order_whatever_order_they_came_in() -> None:
    backstop = Backstop(GRACE)
    ended: dict[int, float] = {}
    with anyio.fail_after(5):
        async with running(backstop), anyio.create_task_group() as tg:
            start = anyio.current_time()
            offsets = [0.3, 0.1, 0.5, 0.2, 0.4, 0.2]
            callers = [Caller(start + offset) for offset in offsets]

            async def one(i: int) -> None:
                ended[i] = await wait(callers[i]) - start
                backstop.leave(callers[i])

            for i, caller in enumerate(callers):
                backstop.add(caller)
                tg.start_soon(one, i)
    for i, offset in enumerate(offsets):
        assert callers[i].gave_up
        assert offset + GRACE <= ended[i] < offset + GRACE + 0.05
    assert len(backstop) == 0


async def test_answered_callers_behind_a_waiting_one_do_not_pile_up() -> None:
    """A caller with a long deadline at the front of the line keeps the answered ones
    behind it from being dropped at once: a sweep drops them."""
    backstop = Backstop(GRACE)
    start = anyio.current_time()
    first = Caller(start + 60)
    backstop.add(first)
    for i in range(10_000):
        caller = Caller(start + 60 + i)
        backstop.add(caller)
        caller.resolve(None)
        backstop.leave(caller)
        assert len(backstop) <= 2 * 2 + 64 + 1  # twice the most waiting, and the slack
    forever = Caller(math.inf)  # never due: the backstop does not hold it
    backstop.add(forever)
    assert len(backstop) <= 2 * 2 + 64 + 1
    first.resolve(None)
    backstop.leave(first)
    backstop.leave(forever)
    assert len(backstop) <= 64 + 1
