"""Caller: answered at most once, waited for until a loop time, given up on."""

from __future__ import annotations

import anyio
import pytest

from hare_py import Caller

pytestmark = pytest.mark.anyio


def test_a_caller_is_answered_once() -> None:
    """The first resolve wins; later ones and give_up change nothing."""
    caller = Caller()
    with pytest.raises(LookupError):
        _ = caller.value
    assert caller.resolve(1) and caller.done
    assert not caller.resolve(2) and not caller.give_up()
    assert caller.value == 1 and not caller.gave_up


def test_a_caller_given_up_is_done_with_no_value_of_its_own() -> None:
    """give_up ends the wait for good: a late answer is ignored."""
    caller = Caller()
    assert caller.give_up()
    assert caller.done and caller.gave_up
    assert not caller.resolve("late")


async def test_wait_returns_at_its_deadline_or_at_the_answer() -> None:
    """wait(until) returns at ``until`` unanswered, and at once once answered."""
    caller = Caller()
    with anyio.fail_after(5):
        await caller.wait(anyio.current_time() + 0.05)
        assert not caller.done
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller.wait, anyio.current_time() + 60)
            await anyio.sleep(0.01)
            caller.resolve("now")
    assert caller.value == "now"
