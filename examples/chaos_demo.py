"""Chaos on the in-memory broker: faults under a little load, and what the callers saw.

    python examples/chaos_demo.py

Eight callers keep requesting through one client (the even ones mark their
requests ``idempotent=True``) while the sandbox's backdoor breaks things:
it kills the client's channel, deletes its reply queue, closes its connection
(as the broker, then as a network failure would), and takes the whole broker
down for longer than a request's deadline.
After each fault the table shows what the callers got in that phase: replies,
``ConnectionLost`` for non-idempotent requests caught in flight (idempotent
ones are republished and answered), ``RequestTimeout`` while the broker is
away, and the reply queue the client recovered with. No call outlives its
deadline; the client heals itself every time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio

from hare_py import Caller, Connection, HareError, Reply, Request, RPCClient, RPCServer
from hare_py.demo import configure_logging
from hare_py.testing import SandboxBroker

QUEUE = "chaos.echo"
CALLERS = 8
DEADLINE = 1.0  # seconds, per request
PHASE = 0.4  # seconds of load after each fault


class Echo(RPCServer[None]):
    """Answers after a few milliseconds, so requests are in flight when a fault hits."""

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        await anyio.sleep(0.005)
        return Reply(request.payload, state)


def faults(broker: SandboxBroker, client: RPCClient[Any]) -> list[tuple[str, Callable[[], Any]]]:
    """The faults, in order: a name and what the backdoor does."""

    def client_connection() -> int:
        return next(i for i, c in broker.connections.items() if c.name == "chaos-client")

    def kill_channel() -> None:
        assert client.reply_queue is not None
        broker.kill_channel(broker.consumers(client.reply_queue)[0].channel)

    def delete_reply_queue() -> None:
        assert client.reply_queue is not None
        broker.delete_queue(client.reply_queue)

    async def outage() -> None:
        broker.down()
        await anyio.sleep(1.5)
        broker.up()

    return [
        ("none (baseline)", lambda: None),
        ("kill the client's channel", kill_channel),
        ("delete the reply queue", delete_reply_queue),
        ("kill the client's connection", lambda: broker.kill_connection(client_connection())),
        (
            "network drops the connection",
            lambda: broker.kill_connection(client_connection(), by="network"),
        ),
        ("broker down for 1.5 s", outage),
    ]


async def main() -> list[dict[str, Any]]:
    """Run every fault under load; returns, per fault, what the callers saw."""
    phases: list[dict[str, Any]] = []
    with SandboxBroker("chaos") as broker:
        async with (
            Connection(broker.url, name="chaos-server") as server_conn,
            Connection(broker.url, name="chaos-client") as client_conn,
            Echo.start(server_conn, queue=QUEUE, durable=True) as server,
            RPCClient.start(client_conn, timeout=DEADLINE) as client,
        ):
            with anyio.fail_after(5):
                while not (server.connected and client.connected):
                    await anyio.sleep(0.01)
            seen: Counter[str] = Counter()
            longest = [0.0]
            stop = anyio.Event()

            async def caller(n: int) -> None:
                i = 0
                while not stop.is_set():
                    payload = f"{n}.{i}".encode()
                    started = anyio.current_time()
                    try:
                        reply = await client.request(payload, QUEUE, idempotent=n % 2 == 0)
                        seen["ok" if reply == payload else "WRONG REPLY"] += 1
                    except HareError as exc:
                        seen[type(exc).__name__] += 1
                        await anyio.sleep(0.01)
                    longest[0] = max(longest[0], anyio.current_time() - started)
                    i += 1

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for n in range(CALLERS):
                        tg.start_soon(caller, n)
                    for name, fault in faults(broker, client):
                        await anyio.sleep(0.1)
                        seen.clear()
                        longest[0] = 0.0
                        before = client.reply_queue
                        began = anyio.current_time()
                        result = fault()
                        if result is not None:
                            await result
                        await anyio.sleep(0.01)
                        # Both heal themselves (each on its own backoff); watch them.
                        while not (client.connected and server.connected):
                            await anyio.sleep(0.01)
                        back = anyio.current_time() - began
                        await anyio.sleep(PHASE)
                        phases.append(
                            {
                                "fault": name,
                                "seen": dict(seen),
                                "longest": longest[0],
                                "new_reply_queue": client.reply_queue != before,
                                "reconnected_after": back,
                            }
                        )
                    stop.set()
    print(f"{'fault':30} {'new reply queue':>15} {'back after':>10} {'longest call':>12}  seen")
    for phase in phases:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(phase["seen"].items()))
        print(
            f"{phase['fault']:30} {'yes' if phase['new_reply_queue'] else 'no':>15} "
            f"{phase['reconnected_after']:8.3f} s {phase['longest']:10.3f} s  {outcomes}"
        )
    return phases


if __name__ == "__main__":
    configure_logging(logging.ERROR)  # the table says what happened
    anyio.run(main)
