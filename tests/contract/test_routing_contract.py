"""Contract: how each exchange type routes (messages published with confirms, then drained)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from contract_helpers import Amqp, drain

from hare_py.transport import Channel, Properties

pytestmark = pytest.mark.anyio


async def routed(
    amqp: Amqp,
    exchange_type: str,
    bindings: dict[str, list[tuple[str, dict[str, Any] | None]]],
    messages: list[tuple[str, dict[str, Any] | None]],
    exchange: str | None = None,
) -> dict[str, list[str]]:
    """Bind one queue per label, publish ``messages``; which message bodies each queue got.

    ``bindings`` maps a label to (routing key, arguments) pairs; ``messages`` are
    (routing key, headers) pairs; bodies are the message's index.
    """
    ch: Channel = await amqp.channel(publisher_confirms=True)
    if exchange is None:
        exchange = amqp.exchange_name()
        await ch.exchange_declare(exchange, exchange_type)  # type: ignore[arg-type]
    queues = {}
    for label, keys in bindings.items():
        queues[label] = amqp.queue_name(label)
        await ch.queue_declare(queues[label])
        for key, args in keys:
            await ch.queue_bind(queues[label], exchange, key, args)
    for index, (key, headers) in enumerate(messages):
        await ch.basic_publish(
            str(index).encode(),
            exchange=exchange,
            routing_key=key,
            properties=Properties(headers=headers),
        )
    return {
        label: [d.body.decode() for d in await drain(ch, name)] for label, name in queues.items()
    }


async def test_default_exchange_routes_by_queue_name(amqp: Amqp) -> None:
    """The default exchange delivers to the queue named by the routing key, and nowhere else."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        a, b = amqp.queue_name(), amqp.queue_name()
        await ch.queue_declare(a)
        await ch.queue_declare(b)
        await ch.basic_publish(b"to-a", routing_key=a)
        await ch.basic_publish(b"to-nobody", routing_key=amqp.queue_name())
        got = await drain(ch, a)
        assert [d.body for d in got] == [b"to-a"]
        assert (got[0].exchange, got[0].routing_key) == ("", a)
        assert await drain(ch, b) == []


async def test_direct_exchange_matches_keys_exactly(amqp: Amqp) -> None:
    """A direct exchange routes on routing key equality; one queue may have several keys."""
    with anyio.fail_after(5):
        got = await routed(
            amqp,
            "direct",
            {"ab": [("a", None), ("b", None)], "a": [("a", None)], "none": [("a.b", None)]},
            [("a", None), ("b", None), ("c", None), ("A", None)],
        )
        assert got == {"ab": ["0", "1"], "a": ["0"], "none": []}


TOPIC_BINDINGS = {
    "star": "*.orange.*",
    "hash_tail": "lazy.#",
    "star_tail": "*.*.rabbit",
    "hash": "#",
    "exact": "quick.orange.rabbit",
    "hash_mid": "a.#.z",
    "empty": "",
    "one_star": "*",
}
TOPIC_KEYS = [
    "quick.orange.rabbit",  # 0
    "lazy.orange.elephant",  # 1
    "quick.orange.fox",  # 2
    "lazy.brown.fox",  # 3
    "lazy",  # 4
    "quick.orange.male.rabbit",  # 5
    "a.z",  # 6
    "a.b.c.z",  # 7
    "",  # 8
    "orange",  # 9
]


async def test_topic_exchange_wildcards(amqp: Amqp) -> None:
    """Topic: "*" matches exactly one word, "#" zero or more; "" is a key of no words."""
    with anyio.fail_after(5):
        got = await routed(
            amqp,
            "topic",
            {label: [(pattern, None)] for label, pattern in TOPIC_BINDINGS.items()},
            [(key, None) for key in TOPIC_KEYS],
        )
        assert got == {
            "star": ["0", "1", "2"],
            "hash_tail": ["1", "3", "4"],
            "star_tail": ["0"],
            "hash": [str(i) for i in range(len(TOPIC_KEYS))],
            "exact": ["0"],
            "hash_mid": ["6", "7"],
            "empty": ["8"],
            "one_star": ["4", "9"],
        }


async def test_fanout_exchange_ignores_keys(amqp: Amqp) -> None:
    """A fanout exchange delivers every message to every bound queue, once each."""
    with anyio.fail_after(5):
        got = await routed(
            amqp,
            "fanout",
            {"a": [("x", None)], "b": [("", None), ("y", None)]},
            [("anything", None), ("", None)],
        )
        assert got == {"a": ["0", "1"], "b": ["0", "1"]}


HEADER_MESSAGES: list[tuple[str, dict[str, Any] | None]] = [
    ("", {"format": "pdf", "type": "report"}),  # 0
    ("", {"format": "pdf"}),  # 1
    ("", {"format": "zip", "type": "log"}),  # 2
    ("", None),  # 3
    ("", {"format": "pdf", "type": "report", "x-tag": "t"}),  # 4
    ("", {"x-tag": "t"}),  # 5
    ("", {"count": 7, "flag": True}),  # 6
]


async def test_headers_exchange_all_and_any(amqp: Amqp) -> None:
    """Headers: all needs every binding header, any needs one; x- keys are ignored by both."""
    with anyio.fail_after(5):
        got = await routed(
            amqp,
            "headers",
            {
                "all": [("", {"x-match": "all", "format": "pdf", "type": "report"})],
                "default_all": [("", {"format": "pdf", "type": "report"})],
                "any": [("", {"x-match": "any", "format": "zip", "type": "report"})],
                "all_ignores_x": [("", {"x-match": "all", "format": "pdf", "x-tag": "other"})],
                "any_only_x": [("", {"x-match": "any", "x-tag": "t"})],
                "typed": [("", {"x-match": "all", "count": 7, "flag": True})],
                "key_ignored": [("ignored-key", {"x-match": "all", "format": "zip"})],
            },
            HEADER_MESSAGES,
        )
        assert got == {
            "all": ["0", "4"],
            "default_all": ["0", "4"],
            "any": ["0", "2", "4"],
            "all_ignores_x": ["0", "1", "4"],
            "any_only_x": [],
            "typed": ["6"],
            "key_ignored": ["2"],
        }


async def test_headers_exchange_with_x(amqp: Amqp) -> None:
    """Headers all-with-x / any-with-x also match on x- headers."""
    with anyio.fail_after(5):
        got = await routed(
            amqp,
            "headers",
            {
                "all_x": [("", {"x-match": "all-with-x", "format": "pdf", "x-tag": "t"})],
                "any_x": [("", {"x-match": "any-with-x", "x-tag": "t"})],
            },
            HEADER_MESSAGES,
        )
        assert got == {"all_x": ["4"], "any_x": ["4", "5"]}


async def test_system_headers_exchange_routes(amqp: Amqp) -> None:
    """amq.match is a headers exchange like any other."""
    with anyio.fail_after(5):
        got = await routed(
            amqp,
            "headers",
            {"pdf": [("", {"format": "pdf"})]},
            HEADER_MESSAGES,
            exchange="amq.match",
        )
        assert got == {"pdf": ["0", "1", "4"]}


async def test_unbind_stops_routing(amqp: Amqp) -> None:
    """After queue_unbind the queue gets no more messages by that binding."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q, x = amqp.queue_name(), amqp.exchange_name()
        await ch.exchange_declare(x, "direct")
        await ch.queue_declare(q)
        await ch.queue_bind(q, x, "k")
        await ch.basic_publish(b"bound", exchange=x, routing_key="k")
        await ch.queue_unbind(q, x, "k")
        await ch.basic_publish(b"unbound", exchange=x, routing_key="k")
        assert [d.body for d in await drain(ch, q)] == [b"bound"]


async def test_alternate_exchange_takes_unroutable_messages(amqp: Amqp) -> None:
    """An exchange's alternate-exchange receives what the exchange itself cannot route."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        x, ae, q = amqp.exchange_name(), amqp.exchange_name("ae"), amqp.queue_name()
        await ch.exchange_declare(ae, "fanout")
        await ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
        await ch.queue_declare(q)
        await ch.queue_bind(q, ae)
        await ch.basic_publish(b"stray", exchange=x, routing_key="nobody")
        assert [d.body for d in await drain(ch, q)] == [b"stray"]


async def test_deleting_an_exchange_removes_its_bindings(amqp: Amqp) -> None:
    """A queue survives its exchange's deletion; a new exchange of that name has no bindings."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q, x = amqp.queue_name(), amqp.exchange_name()
        await ch.exchange_declare(x, "fanout")
        await ch.queue_declare(q)
        await ch.queue_bind(q, x)
        await ch.exchange_delete(x)
        await ch.exchange_declare(x, "fanout")
        await ch.basic_publish(b"lost", exchange=x)
        assert await drain(ch, q) == []
