"""A NATS server convention across two sessions at once, as in a lame duck move: a
message still arriving on the session being left is told by its own subscription
(sids are unique in the process), not by whatever its successor numbered alike."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hare_py.conventions.base import NotForThisServer
from hare_py.conventions.loom import LoomServer
from hare_py.transport.base import Delivery, Properties
from hare_py.transport.subjects import first_sid


class FakeSession:
    """Subscriptions numbered as the NATS transports number them."""

    def __init__(self) -> None:
        self.next_sid = first_sid()
        self.subjects: dict[str, str] = {}  # subject -> tag
        self.is_open = True

    async def subscribe(self, subject: str, on_message: Any, *, queue: str | None = None) -> str:
        tag = str(self.next_sid)
        self.next_sid += 1
        self.subjects.setdefault(subject, tag)
        return tag

    async def flush(self, timeout: float) -> None:
        pass


def _request(subject: str, tag: str) -> Delivery:
    body = json.dumps({"method": "task", "caller_id": "c", "payload": 1, "trace_id": ""})
    return Delivery(body.encode(), Properties(reply_to="_INBOX.r.1"), "", subject, 0, tag)


def _ignore(*args: Any) -> None:
    pass


async def _setup(server: LoomServer, session: FakeSession) -> None:
    await server.setup(session, _ignore, _ignore)  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_left_session_keeps_its_endpoints_until_it_closes(anyio_backend: str) -> None:
    server = LoomServer("svc", "inst1", ("task",), compat_wildcard=True)
    old, new = FakeSession(), FakeSession()
    await _setup(server, old)
    await _setup(server, new)  # the move: the old session still delivers
    other = "loom.rpc.svc.inst2.task"  # for another instance, seen through the compat group
    with pytest.raises(NotForThisServer):
        server.unwrap(_request(other, old.subjects["loom.rpc.svc.*.task"]))
    with pytest.raises(NotForThisServer):
        server.unwrap(_request(other, new.subjects["loom.rpc.svc.*.task"]))
    mine = "loom.rpc.svc.inst1.task"
    direct = server.unwrap(_request(mine, old.subjects[mine]))
    assert direct.routing_key == "task"
    own = next(e for e in server.endpoints if e.subject == mine)
    assert direct.stats is own.stats

    old.is_open = False
    await _setup(server, FakeSession())  # the next session forgets the closed one's tags
    assert server.stats_of(_request(mine, old.subjects[mine])) is None
    assert server.stats_of(_request(mine, new.subjects[mine])) is own.stats
