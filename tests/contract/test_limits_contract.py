"""Contract: what cannot be sent, and what RabbitMQ refuses of what can, is refused alike.

A value the AMQP wire cannot carry is a ``ConfigError`` raised before anything
is sent: the channel stays open and nothing reaches a queue. A value the wire
carries but RabbitMQ refuses closes the channel (or, for a hard error, the
connection) with RabbitMQ's code and text.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from contract_helpers import Amqp, Inbox, assert_broker_closed, drain

from hare_py.errors import BrokerError, ConfigError, ConnectionLost, UnsendableMessage
from hare_py.transport import Channel, Properties
from hare_py.transport.base import Message

pytestmark = pytest.mark.anyio

FRAME_MAX = 131072  # RabbitMQ 3.10's default, which both backends take
MAX_MESSAGE_SIZE = 128 * 1024 * 1024  # RabbitMQ 3.10's default max_message_size


def nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for _ in range(depth - 1):
        table = {"n": table}
    return table


UNENCODABLE_HEADERS = {
    "object": {"x": object()},
    "set": {"x": {1, 2}},
    "int-over-64-bits": {"x": 2**70},
    "int-under-64-bits": {"x": -(2**63) - 1},
    "key-over-128-bytes": {"k" * 129: 1},
    "multibyte-key-over-128-bytes": {"é" * 65: 1},
    "non-str-key": {1: "v"},
    "lone-surrogate": {"x": "\ud800"},
    "timestamp-before-1970": {"x": datetime(1969, 12, 31, tzinfo=UTC)},
    "nested-too-deep": nested(65),
}

UNENCODABLE_PROPERTIES = {
    "delivery-mode-0": Properties(delivery_mode=0),
    "delivery-mode-3": Properties(delivery_mode=3),
    "priority-256": Properties(priority=256),
    "priority-negative": Properties(priority=-1),
    "content-type-over-255-bytes": Properties(content_type="c" * 256),
    "correlation-id-over-255-bytes": Properties(correlation_id="é" * 128),
    "reply-to-over-255-bytes": Properties(reply_to="r" * 256),
    "message-id-not-str": Properties(message_id=7),  # type: ignore[arg-type]
    "timestamp-not-datetime": Properties(timestamp="now"),  # type: ignore[arg-type]
}


async def assert_nothing_arrives(ch: Channel, queue: str) -> None:
    """``queue`` gets only a marker published after the refusals: nothing refused arrived."""
    await ch.basic_publish(b"marker", routing_key=queue)
    assert [d.body for d in await drain(ch, queue)] == [b"marker"]


async def fresh_queue(amqp: Amqp) -> tuple[Channel, str]:
    ch = await amqp.channel(publisher_confirms=True)
    q = amqp.queue_name()
    await ch.queue_declare(q)
    return ch, q


@pytest.mark.parametrize("headers", UNENCODABLE_HEADERS.values(), ids=UNENCODABLE_HEADERS)
async def test_unencodable_header_is_a_config_error(amqp: Amqp, headers: Any) -> None:
    """A header AMQP cannot carry is a ConfigError; the channel stays open, nothing arrives."""
    with anyio.fail_after(5):
        ch, q = await fresh_queue(amqp)
        with pytest.raises(ConfigError, match="headers"):
            await ch.basic_publish(b"bad", routing_key=q, properties=Properties(headers=headers))
        assert ch.is_open
        await assert_nothing_arrives(ch, q)


@pytest.mark.parametrize("props", UNENCODABLE_PROPERTIES.values(), ids=UNENCODABLE_PROPERTIES)
async def test_unencodable_property_is_a_config_error(amqp: Amqp, props: Properties) -> None:
    """An out-of-range or too long property is a ConfigError; the channel stays open."""
    with anyio.fail_after(5):
        ch, q = await fresh_queue(amqp)
        with pytest.raises(ConfigError):
            await ch.basic_publish(b"bad", routing_key=q, properties=props)
        assert ch.is_open
        await assert_nothing_arrives(ch, q)


async def test_content_header_must_fit_in_one_frame(amqp: Amqp) -> None:
    """A content header over frame_max is a ConfigError; one that just fits arrives intact."""
    with anyio.fail_after(5):
        ch, q = await fresh_queue(amqp)
        too_big = Properties(headers={"x": "v" * FRAME_MAX})
        with pytest.raises(ConfigError, match="frame_max"):
            await ch.basic_publish(b"bad", routing_key=q, properties=too_big)
        assert ch.is_open
        fits = {"x": "v" * (FRAME_MAX - 100)}
        await ch.basic_publish(b"big", routing_key=q, properties=Properties(headers=fits))
        [delivery] = await drain(ch, q)
        assert delivery.properties.headers == fits


async def test_headers_arrive_as_the_wire_decodes_them(amqp: Amqp) -> None:
    """A consumer gets headers as decoded from the wire: tuples as lists, floats as 32-bit."""
    with anyio.fail_after(5):
        ch, q = await fresh_queue(amqp)
        headers = {"t": (1, "a"), "n": {"k": (2,)}, "f": 0.1}
        await ch.basic_publish(b"x", routing_key=q, properties=Properties(headers=headers))
        [delivery] = await drain(ch, q)
        (single,) = struct.unpack(">f", struct.pack(">f", 0.1))
        assert delivery.properties.headers == {"t": [1, "a"], "n": {"k": [2]}, "f": single}


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [
        pytest.param("", "k" * 256, id="routing-key-over-255-bytes"),
        pytest.param("", "é" * 128, id="multibyte-routing-key-over-255-bytes"),
        pytest.param("x" * 128, "k", id="exchange-over-127-chars"),
        pytest.param("bad name!", "k", id="exchange-with-bad-characters"),
    ],
)
async def test_unsendable_publish_name_is_a_config_error(
    amqp: Amqp, exchange: str, routing_key: str
) -> None:
    """A publish to a name the wire cannot carry is a ConfigError; the channel stays open."""
    with anyio.fail_after(5):
        ch, q = await fresh_queue(amqp)
        with pytest.raises(ConfigError):
            await ch.basic_publish(b"bad", exchange=exchange, routing_key=routing_key)
        assert ch.is_open
        await assert_nothing_arrives(ch, q)


async def test_unsendable_method_names_are_config_errors(amqp: Amqp) -> None:
    """Names and numbers a method cannot carry are ConfigErrors; the longest that fit work."""
    with anyio.fail_after(10):
        ch, q = await fresh_queue(amqp)
        attempts: list[Callable[[], Awaitable[Any]]] = [
            lambda: ch.queue_declare("q" * 256),
            lambda: ch.queue_declare("é" * 128),
            lambda: ch.queue_declare("bad name!"),
            lambda: ch.queue_delete("q" * 256),
            lambda: ch.queue_purge("q" * 256),
            lambda: ch.exchange_declare("x" * 128),
            lambda: ch.exchange_delete("x" * 128),
            lambda: ch.queue_bind(q, "amq.direct", "k" * 256),
            lambda: ch.queue_unbind(q, "amq.direct", "k" * 256),
            lambda: ch.basic_consume(q, Inbox(), consumer_tag="t" * 256),
            lambda: ch.basic_cancel("t" * 256),
            lambda: ch.basic_qos(65536),
            lambda: ch.queue_declare(amqp.queue_name(), arguments={"x": object()}),
            lambda: ch.queue_declare(amqp.queue_name(), arguments={"x": 2**70}),
            lambda: ch.exchange_declare(amqp.exchange_name(), arguments={"x": object()}),
            lambda: ch.queue_bind(q, "amq.headers", "", {"x": object()}),
        ]
        for attempt in attempts:
            with pytest.raises(ConfigError):
                await attempt()
            assert ch.is_open
        assert (await ch.queue_declare(q, passive=True)).consumer_count == 0
        await publish_to_the_longest_names(amqp, ch)


async def publish_to_the_longest_names(amqp: Amqp, ch: Channel) -> None:
    """A 255-byte queue name and routing key and a 127-character exchange name work."""
    q = amqp.queue_name()
    q = q + "q" * (255 - len(q))
    x = amqp.exchange_name()
    x = x + "x" * (127 - len(x))
    try:
        await ch.queue_declare(q)
        await ch.exchange_declare(x)
        await ch.queue_bind(q, x, "k" * 255)
        await ch.basic_publish(b"long", exchange=x, routing_key="k" * 255)
        [delivery] = await drain(ch, q)
        assert (delivery.exchange, delivery.routing_key) == (x, "k" * 255)
    finally:
        await ch.queue_delete(q)
        await ch.exchange_delete(x)


@pytest.mark.parametrize("confirms", [False, True], ids=["no-confirms", "confirms"])
async def test_publish_many_refuses_the_whole_batch(amqp: Amqp, confirms: bool) -> None:
    """One unencodable message fails the whole batch (UnsendableMessage.index names it)."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=confirms)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        batch = [
            Message("", q, b"good"),
            Message("", q, b"also good", Properties(headers={"ok": 1})),
            Message("", q, b"bad", Properties(headers={"x": object()})),
            Message("", q, b"never", Properties(headers={"x": 2**70})),
        ]
        with pytest.raises(UnsendableMessage) as info:
            await ch.basic_publish_many(batch)
        assert info.value.index == 2
        assert isinstance(info.value, ConfigError)
        assert ch.is_open
        await assert_nothing_arrives(await amqp.channel(publisher_confirms=True), q)


async def test_message_over_max_message_size_is_406(amqp: Amqp) -> None:
    """A body over RabbitMQ's max_message_size (128 MiB) closes the channel with 406."""
    with anyio.fail_after(60):
        ch, q = await fresh_queue(amqp)
        with pytest.raises(BrokerError) as info:
            await ch.basic_publish(bytes(MAX_MESSAGE_SIZE + 1), routing_key=q)
        assert info.value.code == 406
        assert info.value.text == (
            f"PRECONDITION_FAILED - message size {MAX_MESSAGE_SIZE + 1} is larger than "
            f"configured max size {MAX_MESSAGE_SIZE}"
        )
        assert_broker_closed(await ch.wait_closed(), 406)
        assert (await (await amqp.channel()).queue_declare(q, passive=True)).message_count == 0


async def refused_declare(amqp: Amqp, code: int, **declare: Any) -> tuple[str, str]:
    """Declare a fresh queue, which must be refused with ``code``; (its name, the text)."""
    ch = await amqp.channel()
    q = amqp.queue_name()
    with pytest.raises(BrokerError) as info:
        await ch.queue_declare(q, **declare)
    assert info.value.code == code, info.value
    assert_broker_closed(await ch.wait_closed(), code)
    return q, info.value.text


QUEUE_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"x-message-ttl": -1}, "invalid arg 'x-message-ttl' for {q}: {{value_negative,-1}}"),
    (
        {"x-message-ttl": "100"},
        "invalid arg 'x-message-ttl' for {q}: \"expected integer, got longstr\"",
    ),
    (
        {"x-message-ttl": 315_360_000_001},
        "invalid arg 'x-message-ttl' for {q}: {{value_too_large,315360000001}}",
    ),
    ({"x-expires": 0}, "invalid arg 'x-expires' for {q}: {{value_zero,0}}"),
    (
        {"x-max-length": 1.5},
        "invalid arg 'x-max-length' for {q}: \"expected integer, got float\"",
    ),
    (
        {"x-max-priority": 256},
        "invalid arg 'x-max-priority' for {q}: {{max_value_exceeded,256}}",
    ),
    ({"x-overflow": "drop-tail"}, "invalid arg 'x-overflow' for {q}: invalid_overflow"),
    (
        {"x-queue-mode": "eager"},
        "invalid arg 'x-queue-mode' for {q}: \"unsupported queue mode 'eager'\"",
    ),
    (
        {"x-queue-type": "fast"},
        "invalid arg 'x-queue-type' for {q}: \"unsupported queue type 'fast'\"",
    ),
    (
        {"x-single-active-consumer": 1},
        "invalid arg 'x-single-active-consumer' for {q}: {{unacceptable_type,byte}}",
    ),
    (
        {"x-dead-letter-routing-key": "k"},
        "invalid arg 'x-dead-letter-routing-key' for {q}: routing_key_but_no_dlx_defined",
    ),
    (
        {"x-dead-letter-exchange": 5},
        "invalid type 'byte' for arg 'x-dead-letter-exchange' in {q}",
    ),
    (
        {"x-expires": -1, "x-message-ttl": -1},
        "invalid arg 'x-expires' for {q}: {{value_negative,-1}}",
    ),
    (
        {"x-max-age": "1D"},
        "invalid arg 'x-max-age' for {q} of queue type rabbit_classic_queue",
    ),
    (
        {"x-queue-type": "quorum"},
        "invalid property 'non-durable' for {q}",
    ),
]


@pytest.mark.parametrize(
    ("arguments", "text"), QUEUE_REFUSALS, ids=[str(a) for a, _ in QUEUE_REFUSALS]
)
async def test_queue_arguments_rabbitmq_refuses_are_406(
    amqp: Amqp, arguments: dict[str, Any], text: str
) -> None:
    """A new queue with an argument value RabbitMQ refuses is 406, with RabbitMQ's text."""
    with anyio.fail_after(5):
        q, got = await refused_declare(amqp, 406, arguments=arguments)
        assert got == "PRECONDITION_FAILED - " + text.format(q=f"queue '{q}' in vhost '/'")


async def test_quorum_queue_properties_rabbitmq_refuses_are_406(amqp: Amqp) -> None:
    """A quorum queue cannot be auto-delete, exclusive or server-named (406)."""
    with anyio.fail_after(5):
        quorum = {"x-queue-type": "quorum"}
        q, text = await refused_declare(amqp, 406, durable=True, auto_delete=True, arguments=quorum)
        assert (
            text
            == f"PRECONDITION_FAILED - invalid property 'auto-delete' for queue '{q}' in vhost '/'"
        )
        q, text = await refused_declare(amqp, 406, durable=True, exclusive=True, arguments=quorum)
        assert "invalid property 'exclusive-owner'" in text
        ch = await amqp.channel()
        with pytest.raises(BrokerError) as info:
            await ch.queue_declare("", durable=True, arguments=quorum)
        assert info.value.text == (
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
        )


async def test_redeclare_compares_argument_values_not_their_encoding(amqp: Amqp) -> None:
    """A redeclare with the same integer in another width is fine; another value is 406."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        q = amqp.queue_name()
        await ch.queue_declare(q, arguments={"x-message-ttl": 1000})
        await ch.queue_declare(q, arguments={"x-message-ttl": 1000})
        ch = await amqp.channel()
        with pytest.raises(BrokerError) as info:
            await ch.queue_declare(q, arguments={"x-message-ttl": 40000})
        assert info.value.text == (
            f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost "
            "'/': received '40000' but current is '1000'"
        )


@pytest.mark.parametrize(
    ("expiration", "why"),
    [
        (" 5", "no_integer"),
        ("+", "no_integer"),
        ("1.5", '{leftover_string,".5"}'),
        ("5 ", '{leftover_string," "}'),
        ("1_000", '{leftover_string,"_000"}'),
        ("-1", "{value_negative,-1}"),
        ("315360000001", "{value_too_large,315360000001}"),
    ],
)
async def test_expiration_rabbitmq_refuses_is_406(amqp: Amqp, expiration: str, why: str) -> None:
    """An expiration RabbitMQ cannot read as milliseconds closes the channel with 406."""
    with anyio.fail_after(5):
        ch, q = await fresh_queue(amqp)
        with pytest.raises(BrokerError) as info:
            await ch.basic_publish(
                b"x", routing_key=q, properties=Properties(expiration=expiration)
            )
        assert info.value.text == f"PRECONDITION_FAILED - invalid expiration '{expiration}': {why}"
        assert_broker_closed(await ch.wait_closed(), 406)


async def test_expiration_is_read_as_rabbitmq_reads_integers(amqp: Amqp) -> None:
    """An expiration may have a sign and leading zeros, but not digit separators (406)."""
    with anyio.fail_after(5):
        ch, q = await fresh_queue(amqp)
        for expiration in ("+60000", "060000", "315360000000"):
            props = Properties(expiration=expiration)
            await ch.basic_publish(b"x", routing_key=q, properties=props)
        assert (await ch.queue_declare(q, passive=True)).message_count == 3
        with pytest.raises(BrokerError) as info:
            await ch.basic_publish(b"x", routing_key=q, properties=Properties(expiration="6_0"))
        assert info.value.code == 406


async def test_expiration_zero_behind_other_messages_waits_for_the_head(amqp: Amqp) -> None:
    """Expiration 0 drops a message at the head of its queue only; behind others it waits."""
    with anyio.fail_after(5):
        ch, q = await fresh_queue(amqp)
        await ch.basic_publish(b"now", routing_key=q, properties=Properties(expiration="-0"))
        assert (await ch.queue_declare(q, passive=True)).message_count == 0
        await ch.basic_publish(b"first", routing_key=q)
        await ch.basic_publish(b"behind", routing_key=q, properties=Properties(expiration="0"))
        assert (await ch.queue_declare(q, passive=True)).message_count == 2


async def test_unknown_exchange_type_closes_the_connection(amqp: Amqp) -> None:
    """Declaring an exchange of an unknown type closes the connection: 503 COMMAND_INVALID."""
    with anyio.fail_after(5):
        conn = await amqp.connect()
        ch = await conn.open_channel()
        with pytest.raises(ConnectionLost) as info:
            await ch.exchange_declare(amqp.exchange_name(), "fanciful")  # type: ignore[arg-type]
        assert info.value.code == 503
        reason = await conn.wait_closed()
        assert (reason.code, reason.by) == (503, "broker")
        assert reason.text == "COMMAND_INVALID - unknown exchange type 'fanciful'"


async def test_alternate_exchange_must_be_a_string(amqp: Amqp) -> None:
    """A new exchange whose alternate-exchange is not a string is 406."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        x = amqp.exchange_name()
        with pytest.raises(BrokerError) as info:
            await ch.exchange_declare(x, arguments={"alternate-exchange": 5})
        assert info.value.text == (
            f"PRECONDITION_FAILED - invalid type 'byte' for arg 'alternate-exchange' in "
            f"exchange '{x}' in vhost '/'"
        )


@pytest.mark.parametrize(
    ("x_match", "text"),
    [
        (
            "most",
            'Invalid x-match field value <<"most">>; expected all, any, all-with-x, or any-with-x',
        ),
        (1, "Invalid x-match field type byte (value 1); expected longstr"),
    ],
)
async def test_headers_binding_with_bad_x_match_is_406(amqp: Amqp, x_match: Any, text: str) -> None:
    """A headers-exchange binding whose x-match is not all/any(-with-x) is 406."""
    with anyio.fail_after(5):
        ch, q = await fresh_queue(amqp)
        with pytest.raises(BrokerError) as info:
            await ch.queue_bind(q, "amq.headers", "", {"x-match": x_match, "a": 1})
        assert info.value.text == f"PRECONDITION_FAILED - {text}"
        assert_broker_closed(await ch.wait_closed(), 406)


async def test_channel_max(amqp: Amqp) -> None:
    """A connection holds at most 2047 channels at once (530, the connection goes on)."""
    with anyio.fail_after(60):
        conn = await amqp.connect()
        channels = [await conn.open_channel() for _ in range(2047)]
        with pytest.raises(BrokerError) as info:
            await conn.open_channel()
        assert info.value.code == 530
        assert conn.close_reason is None
        await channels[100].close()
        again = await conn.open_channel()
        assert again.is_open
        assert len({c.number for c in channels[:100] + channels[101:] + [again]}) == 2047
