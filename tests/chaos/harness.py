"""Load and invariants for the chaos suite.

``Load`` runs N callers in a loop; each payload carries a unique id that the
caller checks in the reply. Every call is timed against its deadline. The
broker-side checks (channels, consumers, queues of one connection) go through
rabbitmqctl.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio

from hare_py import ConnectedMeta, HareError, NoReply, RPCClient


class Watched(RPCClient[list[ConnectedMeta]]):
    """Counts inits and remembers every channel open (reply queue per reconnect)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inits = 0
        self.metas: list[ConnectedMeta] = []

    async def init(self, arg: Any) -> list[ConnectedMeta]:
        self.inits += 1
        return self.metas

    async def handle_connected(self, meta: ConnectedMeta, state: list[ConnectedMeta]) -> Any:
        state.append(meta)
        return NoReply(state)


@dataclass
class Load:
    """``callers`` tasks calling ``client.request`` in a loop until told to stop."""

    client: RPCClient[Any]
    routing_key: str
    callers: int = 32
    timeout: float = 2.0
    grace: float = 0.5  # a call may end this long after its deadline, no longer
    ok: int = 0
    wrong: int = 0  # replies that carried someone else's id
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)  # non-HareError exceptions
    overruns: list[float] = field(default_factory=list)  # call durations past deadline + grace
    successes: list[tuple[float, float]] = field(default_factory=list)  # (start, end)
    longest: float = 0.0

    stopping: bool = False

    async def run(self) -> None:
        """Call until ``stop()``; each caller then finishes its current call."""
        async with anyio.create_task_group() as tg:
            for i in range(self.callers):
                tg.start_soon(self._caller, i)

    def stop(self) -> None:
        self.stopping = True

    async def _caller(self, index: int) -> None:
        seq = 0
        while not self.stopping:
            seq += 1
            payload = f"{index}:{seq}:{uuid.uuid4().hex}".encode()
            start = anyio.current_time()
            failed = False
            try:
                reply = await self.client.request(payload, self.routing_key, timeout=self.timeout)
            except HareError as exc:
                self.errors[type(exc).__name__] += 1
                failed = True
            except Exception as exc:
                self.unexpected.append(repr(exc))
                failed = True
            else:
                if reply == payload:
                    self.ok += 1
                    self.successes.append((start, anyio.current_time()))
                else:
                    self.wrong += 1
            elapsed = anyio.current_time() - start
            self.longest = max(self.longest, elapsed)
            if elapsed > self.timeout + self.grace:
                self.overruns.append(elapsed)
            if failed:
                await anyio.sleep(0.02)  # a failing broker is not a reason to spin

    def recovery_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` until a call started after it succeeded."""
        ends = [end for start, end in self.successes if start >= moment]
        return min(ends) - moment if ends else None

    def ok_after(self, moment: float) -> int:
        return sum(1 for start, _ in self.successes if start >= moment)

    def check(self) -> None:
        """The invariants every chaos test holds."""
        assert self.wrong == 0, f"{self.wrong} replies reached the wrong caller"
        assert self.unexpected == [], f"untyped errors: {self.unexpected[:5]}"
        assert self.overruns == [], (
            f"{len(self.overruns)} calls outlived deadline+grace, "
            f"longest {max(self.overruns):.2f} s"
        )
        assert self.client.pending == 0, f"{self.client.pending} requests left pending"
        assert self.ok > 0

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": dict(self.errors),
            "wrong": self.wrong,
            "longest_call_s": round(self.longest, 3),
        }


def connection_resources(rabbitmq: Any, connection_name: str) -> tuple[int, int]:
    """(channels, consumers) the broker holds for the named client connection."""
    pids = [
        row["pid"]
        for row in rabbitmq.connections()
        if row.get("client_properties", {}).get("connection_name") == connection_name
    ]
    out = rabbitmq.ctl(
        "list_channels", "connection", "consumer_count", "--formatter", "json", "--quiet"
    )
    rows = [row for row in json.loads(out or "[]") if row.get("connection") in pids]
    return len(rows), sum(int(row.get("consumer_count", 0)) for row in rows)


def queue_names(rabbitmq: Any) -> set[str]:
    out = rabbitmq.ctl("list_queues", "name", "--formatter", "json", "--quiet")
    return {row["name"] for row in json.loads(out or "[]")}
