"""The actor's mailbox: first in first out, one waiting receiver, cancellable, closable."""

from __future__ import annotations

import anyio
import pytest

from hare_py.actor.mailbox import Mailbox

pytestmark = pytest.mark.anyio


async def test_messages_come_out_in_the_order_they_went_in() -> None:
    box = Mailbox()
    with pytest.raises(anyio.WouldBlock):
        box.receive_nowait()
    for i in range(5):
        box.send_nowait(i)
    assert len(box) == 5
    assert [box.receive_nowait(), box.receive_nowait()] == [0, 1]
    with anyio.fail_after(1):
        assert [await box.receive() for _ in range(3)] == [2, 3, 4]


async def test_a_waiting_receiver_is_woken_by_the_next_send() -> None:
    box = Mailbox()
    got: list[object] = []

    async def receive() -> None:
        got.append(await box.receive())

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            box.send_nowait("a")
    assert got == ["a"]


async def test_a_cancelled_receiver_loses_nothing() -> None:
    """A receive cancelled while waiting takes no message: the next one gets it."""
    box = Mailbox()
    with anyio.move_on_after(0.05):
        await box.receive()
    box.send_nowait("kept")
    with anyio.fail_after(1):
        assert await box.receive() == "kept"


async def test_close_wakes_the_receiver_and_refuses_what_follows() -> None:
    box = Mailbox()
    box.send_nowait("dropped")
    box.receive_nowait()

    async def receive() -> None:
        with pytest.raises(anyio.ClosedResourceError):
            await box.receive()

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            box.close()
    with pytest.raises(anyio.ClosedResourceError):
        box.send_nowait("late")
    with pytest.raises(anyio.ClosedResourceError):
        box.receive_nowait()
