"""The LinkSession seam itself: outcomes, settle modes, dynamic nodes and their refusal."""

from __future__ import annotations

import secrets
import sys
from typing import Any

import anyio
import pytest

from hare_py import RPCClient
from hare_py.conventions import amqp10
from hare_py.errors import BrokerError
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import (
    ConnectOptions,
    Delivery,
    LinkSession,
    Message,
    Outcome,
    Properties,
    ReturnedMessage,
)

from .conftest import listening

pytestmark = pytest.mark.anyio


async def test_outcomes_come_back_as_returns(listen_url: str) -> None:
    """Rejected and released transfers of a mandatory send come back with 0-9-1 codes;
    accepted ones do not."""
    server_url, client_url = parse_url(listening(listen_url)), parse_url(listen_url)
    returned: list[ReturnedMessage] = []
    settled: list[bytes] = []
    async with backend_for(server_url).connect(server_url, ConnectOptions()) as listener:
        serving = await listener.open_session()
        assert isinstance(serving, LinkSession) and serving.listening

        def on_message(delivery: Delivery) -> None:
            outcomes: dict[bytes, Outcome] = {b"ok": "accept", b"no": "reject", b"later": "release"}
            outcome = outcomes[delivery.body]
            settled.append(delivery.body)
            tg.start_soon(serving.settle, delivery, outcome)

        async with anyio.create_task_group() as tg:
            await serving.open_receiver("judge", on_message, credit=10)
            async with backend_for(client_url).connect(client_url, ConnectOptions()) as conn:
                session = await conn.open_session(on_return=returned.append)
                messages = [
                    Message("", "judge", body, Properties(correlation_id=body.decode()))
                    for body in (b"ok", b"no", b"later")
                ]
                with anyio.fail_after(10):
                    await session.send(messages, mandatory=True)
                    while len(returned) < 2:
                        await anyio.sleep(0.01)
                    await anyio.sleep(0.2)  # an accepted one would come back by now if broken
                await session.close()
    assert settled == [b"ok", b"no", b"later"]
    codes = {r.properties.correlation_id: (r.reply_code, r.reply_text) for r in returned}
    assert codes == {"no": (312, "amqp:rejected"), "later": (312, "released: nobody took it")}
    assert {r.routing_key for r in returned} == {"judge"}


async def test_at_most_once_receiver_needs_no_settle(listen_url: str) -> None:
    """An at-most-once receiver gets pre-settled deliveries, and its credit comes back anyway."""
    server_url, client_url = parse_url(listening(listen_url)), parse_url(listen_url)
    got: list[bytes] = []
    async with backend_for(server_url).connect(server_url, ConnectOptions()) as listener:
        serving = await listener.open_session()
        assert isinstance(serving, LinkSession)
        async with backend_for(client_url).connect(client_url, ConnectOptions()) as conn:
            session = await conn.open_session()
            assert isinstance(session, LinkSession)
            address = await session.open_receiver(
                None, lambda d: got.append(d.body), credit=2, mode="at-most-once"
            )
            assert address.startswith("reply-")
            with anyio.fail_after(10):
                await serving.send([Message("", address, b"%d" % i) for i in range(10)])
                while len(got) < 10:
                    await anyio.sleep(0.01)
    assert got == [b"%d" % i for i in range(10)]


async def test_dynamic_receiver_on_protons_broker(proton_broker_peer: Any) -> None:
    """A dynamic receiver gets an address from the peer, and what is sent there arrives."""
    url = parse_url(proton_broker_peer.url)
    got: list[Delivery] = []
    async with backend_for(url).connect(url, ConnectOptions()) as conn:
        session = await conn.open_session()
        assert isinstance(session, LinkSession)
        address = await session.open_receiver(None, got.append, credit=5)
        with anyio.fail_after(10):
            await session.send([Message("", address, b"x", Properties(reply_to=address))])
            while not got:
                await anyio.sleep(0.01)
            await session.settle(got[0], "accept")
    assert got[0].body == b"x"
    assert got[0].routing_key == address


@pytest.mark.rabbitmq
async def test_refused_dynamic_node_ends_the_session(rabbitmq10_url: str) -> None:
    """RabbitMQ 3.x refuses a dynamic source with not-implemented, and the session closes."""
    url = parse_url(rabbitmq10_url)
    async with backend_for(url).connect(url, ConnectOptions()) as conn:
        session = await conn.open_session()
        assert isinstance(session, LinkSession)
        with anyio.fail_after(10), pytest.raises(BrokerError, match="not-implemented"):
            await session.open_receiver(None, lambda d: None, credit=5)
        with anyio.fail_after(10):
            reason = await session.wait_closed()
    assert reason.by == "broker"


@pytest.mark.rabbitmq
async def test_unrecognised_peer_refusing_dynamic_nodes_gets_the_fixed_address(
    rabbitmq10_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer not known to lack dynamic nodes that refuses one: the next session uses the
    fixed reply address, and requests go through."""
    module = sys.modules["hare_py.conventions.amqp10"]  # the package's amqp10 is the function
    monkeypatch.setattr(module, "is_rabbitmq3", lambda peer: False)
    from hare_py import Caller, Reply, Request, RPCServer

    class Echo(RPCServer[None]):
        async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
            return Reply(request.payload, state)

    convention = amqp10("/queue/")
    async with (
        Echo.start(rabbitmq10_url, queue="fallback", convention=convention),
        RPCClient.start(rabbitmq10_url, convention=convention, timeout=10) as client,
    ):
        with anyio.fail_after(15):
            assert await client.request(b"through", "fallback") == b"through"
            assert client.reply_queue is not None
            assert client.reply_queue.startswith("/queue/hare-reply-")


async def test_transfer_over_max_body_size_arrives_undecodable(listen_url: str) -> None:
    """A transfer over the receiver's max_body_size is dropped as it arrives and handed on
    undecodable; the next one is whole."""
    server_url = parse_url(listening(listen_url) + "&max_body_size=1000")
    client_url = parse_url(listen_url)
    got: list[Delivery] = []
    async with backend_for(server_url).connect(server_url, ConnectOptions()) as listener:
        serving = await listener.open_session()
        assert isinstance(serving, LinkSession)
        await serving.open_receiver("small", got.append, credit=10)
        async with backend_for(client_url).connect(client_url, ConnectOptions()) as conn:
            session = await conn.open_session()
            with anyio.fail_after(10):
                # The first send opens the link: the peer's max-message-size is not known yet.
                await session.send([Message("", "small", b"x" * 300_000)])
                await session.send([Message("", "small", b"fits")])
                while len(got) < 2:
                    await anyio.sleep(0.01)
    assert got[0].undecodable is not None and "max_body_size=1000" in got[0].undecodable
    assert got[0].body == b""
    assert got[1].undecodable is None and got[1].body == b"fits"


async def test_failure_inside_event_processing_ends_the_connection_loudly(
    listen_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception while handling an event ends the connection with 541 and a log line;
    nothing escapes into the caller's code, and its session closes."""
    from structlog.testing import capture_logs

    from hare_py.transport.amqp10 import _links

    server_url, client_url = parse_url(listening(listen_url)), parse_url(listen_url)

    def broken(self: Any, delivery: Any) -> None:
        raise RuntimeError("a bug")

    async with backend_for(server_url).connect(server_url, ConnectOptions()) as listener:
        serving = await listener.open_session()
        async with backend_for(client_url).connect(client_url, ConnectOptions()) as conn:
            session = await conn.open_session()
            assert isinstance(session, LinkSession)
            address = await session.open_receiver(None, lambda d: None, credit=5)
            monkeypatch.setattr(_links.Receiver, "on_raw_delivery", broken)
            with capture_logs() as logs, anyio.fail_after(10):
                await serving.send([Message("", address, b"boom")])
                reason = await conn.wait_closed()
                closed = await session.wait_closed()
    assert (reason.code, reason.by) == (541, "network")
    assert closed.by == "connection"
    assert any(e["event"] == "amqp10.engine_failed" and "a bug" in e["error"] for e in logs)


@pytest.mark.rabbitmq
async def test_refused_target_costs_the_senders_only(rabbitmq10_url: str) -> None:
    """RabbitMQ ending the AMQP session to refuse a target (/queue/amq.gen-...) returns that
    message; the receivers, on their own AMQP session, go on, and so do later sends."""
    url = parse_url(rabbitmq10_url)
    returned: list[ReturnedMessage] = []
    got: list[bytes] = []
    address = f"/queue/refusal-{secrets.token_hex(4)}"
    async with backend_for(url).connect(url, ConnectOptions()) as conn:
        session = await conn.open_session(on_return=returned.append)
        assert isinstance(session, LinkSession)
        await session.open_receiver(address, lambda d: got.append(d.body), credit=5)
        refused = Message("", "/queue/amq.gen-not-yours", b"x", Properties(correlation_id="r"))
        with anyio.fail_after(15):
            await session.send([refused], mandatory=True)
            while not returned:
                await anyio.sleep(0.01)
            await session.send([Message("", address, b"still here")], mandatory=True)
            while not got:
                await anyio.sleep(0.01)
        assert session.is_open
    assert returned[0].properties.correlation_id == "r"
    assert returned[0].reply_code == 403
    assert got == [b"still here"]
