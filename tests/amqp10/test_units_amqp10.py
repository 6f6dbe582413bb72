"""The AMQP 1.0 pieces that need no peer: URLs, message encoding, the convention, the extra."""

from __future__ import annotations

import subprocess
import sys
import uuid

import anyio
import proton
import pytest

from hare_py import Connection, RPCClient
from hare_py.conventions import amqp10
from hare_py.conventions.amqp10 import Amqp10Server, is_rabbitmq3
from hare_py.errors import ConfigError, ConnectFailed, UnsendableMessage
from hare_py.transport import backend_for, check_url, parse_url, wire_protocol_of
from hare_py.transport.amqp10._message import decode, encode, reply_code
from hare_py.transport.base import (
    AMQP_1_0,
    ConnectOptions,
    Delivery,
    LinkProperties,
    Message,
    Properties,
)

from .peers import free_port


def test_url_selects_amqp10_without_default_credentials() -> None:
    """?protocol=1.0 picks AMQP 1.0, and without credentials the URL carries none (ANONYMOUS)."""
    url = parse_url("amqp://host/?protocol=1.0")
    assert wire_protocol_of(url) == AMQP_1_0
    assert (url.username, url.password) == ("", "")
    assert parse_url("amqp://host/").username == "guest"
    assert type(backend_for(url)).__name__ == "Amqp10Backend"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("amqp://h/?protocol=2.0", "protocol=1.0"),
        ("amqp://h/?protocol=1.0&backend=aiormq", "unknown URL parameter"),
        ("amqp://u:p@h/?protocol=1.0&listen=1", "ANONYMOUS"),
        ("amqp://h/?protocol=1.0&listen=yes", "listen=1"),
        ("amqp://h/?protocol=1.0&max_frame_size=100", "max_frame_size"),
        ("amqp://h/?protocol=1.0&heartbeat=x", "heartbeat"),
    ],
)
def test_bad_url_is_a_config_error(url: str, match: str) -> None:
    """A 1.0 URL that cannot work is a ConfigError at check time, before any connect."""
    with pytest.raises(ConfigError, match=match):
        check_url(parse_url(url), ConnectOptions())


def test_missing_extra_is_a_config_error_naming_it() -> None:
    """Without python-qpid-proton an AMQP 1.0 URL is a ConfigError saying what to install."""
    code = (
        "import sys; sys.modules['proton'] = None\n"
        "from hare_py.transport import backend_for, parse_url\n"
        "from hare_py.errors import ConfigError\n"
        "try:\n"
        "    backend_for(parse_url('amqp://h/?protocol=1.0'))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
        "import hare_py, hare_py.conventions\n"
        "print('proton' in sys.modules and sys.modules['proton'] is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'hare_py[amqp10]'" in out.stdout, out.stderr
    assert out.stdout.strip().endswith("False")


@pytest.mark.parametrize("cid", ["text", 7, 2**64 - 1, uuid.UUID(int=5), b"\x00\x01"], ids=repr)
def test_correlation_ids_keep_their_type(cid: object) -> None:
    """A correlation-id of each AMQP 1.0 type is encoded as that type and decodes unchanged."""
    message = Message("", "svc", b"body", LinkProperties(correlation=cid))  # type: ignore[arg-type]
    data = encode(message, 0, 0)
    delivery = decode(data, "svc", 1, "link", False)
    assert delivery.undecodable is None
    props = delivery.properties
    assert isinstance(props, LinkProperties)
    assert props.correlation == cid
    assert type(props.correlation) is type(cid)
    assert props.correlation_id == (cid if isinstance(cid, str) else None)


def test_integer_correlation_id_goes_as_ulong() -> None:
    """An int correlation-id goes on the wire as a ulong (AMQP 1.0's numeric message-id)."""
    data = encode(Message("", "svc", b"", LinkProperties(correlation=5)), 0, 0)
    raw = proton.Message()
    raw.decode(data)
    assert isinstance(raw.correlation_id, proton.ulong) or raw.correlation_id == 5
    assert b"\x53\x05" in data or b"\x80" in data  # smallulong 5, or ulong


def test_body_is_a_data_section_and_reads_back_as_bytes() -> None:
    """Bytes go as a data section (not an amqp-value) and come back as bytes, not a memoryview."""
    data = encode(Message("", "svc", b"\x00raw", Properties(content_type="a/b")), 0, 0)
    assert b"\x00\x53\x75" in data  # the data section's descriptor
    delivery = decode(data, "svc", 1, "link", False)
    assert type(delivery.body) is bytes
    assert delivery.body == b"\x00raw"
    assert delivery.properties.content_type == "a/b"


def test_absent_content_type_is_none() -> None:
    """A message without a content-type reads back None, not proton's symbol('None')."""
    delivery = decode(encode(Message("", "svc", b"x"), 0, 0), "svc", 1, "link", False)
    assert delivery.properties.content_type is None
    assert delivery.properties.reply_to is None


def test_headers_and_ttl_cross() -> None:
    """Headers become application-properties and expiration the ttl, both ways."""
    props = Properties(headers={"a": 1, "b": "two"}, expiration="1500", reply_to="r")
    delivery = decode(encode(Message("", "svc", b"", props), 0, 0), "svc", 1, "l", False)
    assert delivery.properties.headers == {"a": 1, "b": "two"}
    assert delivery.properties.expiration == "1500"
    assert delivery.properties.reply_to == "r"


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (Message("ex", "svc", b""), "no exchanges"),
        (Message("", "", b""), "needs an address"),
        (Message("", "svc", b"", Properties(type="t")), "type or app_id"),
        (Message("", "svc", b"", Properties(headers={"a": [1]})), "simple values"),
        (Message("", "svc", b"x" * 100), "max-message-size"),
    ],
)
def test_unsendable_messages_name_their_index(message: Message, match: str) -> None:
    """A message AMQP 1.0 cannot carry is UnsendableMessage with its index."""
    with pytest.raises(UnsendableMessage, match=match) as caught:
        encode(message, 3, 50)
    assert caught.value.index == 3


def test_garbage_decodes_as_undecodable() -> None:
    """Bytes that are no AMQP 1.0 message arrive undecodable; nothing raises."""
    delivery = decode(b"\xffnot an AMQP message", "svc", 1, "link", False)
    assert isinstance(delivery, Delivery)
    assert delivery.undecodable is not None


def test_conditions_map_onto_amqp091_codes() -> None:
    """Error conditions get the reply codes AMQP 0-9-1 names them by."""
    assert reply_code("amqp:not-found") == 404
    assert reply_code("amqp:unauthorized-access") == 403
    assert reply_code("amqp:resource-locked") == 405
    assert reply_code("amqp:precondition-failed") == 406
    assert reply_code("amqp:not-allowed") == 530
    assert reply_code("amqp:connection:forced") == 320
    assert reply_code("vendor:whatever") == 541


def test_rabbitmq3_is_recognised_by_its_open_frame() -> None:
    """RabbitMQ 3.x (no dynamic nodes) is told from its open frame; 4.x and others are not."""
    assert is_rabbitmq3({"product": "RabbitMQ", "version": "3.10.8"})
    assert not is_rabbitmq3({"product": "RabbitMQ", "version": "4.0.1"})
    assert not is_rabbitmq3({})


def test_server_answers_queue_reply_to_at_amq_queue_on_rabbitmq3() -> None:
    """A /queue/NAME reply-to is answered at /amq/queue/NAME on RabbitMQ 3.x only."""
    server = Amqp10Server("svc")
    assert server.reply_address("/queue/amq.gen-X") == "/queue/amq.gen-X"
    server._rabbitmq3 = True
    assert server.reply_address("/queue/amq.gen-X") == "/amq/queue/amq.gen-X"
    assert server.reply_address("elsewhere") == "elsewhere"


def test_convention_refuses_exchanges() -> None:
    """The amqp10 convention has no exchanges: naming one is a ConfigError."""
    with pytest.raises(ConfigError, match="no exchanges"):
        amqp10().client("rpc", "direct", False)


@pytest.mark.anyio
async def test_convention_on_a_091_connection_is_a_config_error() -> None:
    """An amqp10 client on an AMQP 0-9-1 connection is a ConfigError naming both protocols."""
    with anyio.fail_after(5), pytest.raises(ConfigError, match=r"amqp-1\.0"):
        async with RPCClient.start("sandbox://amqp10-mismatch", convention=amqp10()):
            pass


@pytest.mark.anyio
async def test_nobody_listening_is_connect_failed() -> None:
    """Dialling a port nobody listens on is ConnectFailed, and the supervised Connection retries."""
    url = parse_url(f"amqp://u:secret@127.0.0.1:{free_port()}/?protocol=1.0")
    with anyio.fail_after(10), pytest.raises(ConnectFailed) as caught:
        async with backend_for(url).connect(url, ConnectOptions(connect_timeout=5)):
            pass
    assert "secret" not in str(caught.value)
    assert Connection(str(url)).wire_protocol == AMQP_1_0


def _foreign(**fields: object) -> bytes:
    """A message encoded by proton's own Message class, as another peer would send it."""
    message = proton.Message(body=b"payload", inferred=True)
    for name, value in fields.items():
        setattr(message, name, value)
    return bytes(message.encode())


def _plain(value: object) -> object:
    """proton's reading of an id as hare_py gives it: binary as bytes, ulong as int."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, int):
        return int(value)
    return value


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {
            "id": "m-1",
            "correlation_id": proton.ulong(7),
            "reply_to": "/queue/r",
            "content_type": "application/json",
            "content_encoding": "gzip",
            "subject": "s",
            "user_id": b"guest",
            "ttl": 2.5,
            "durable": True,
            "priority": 9,
            "creation_time": 1_700_000_000.25,
            "properties": {"a": 1, "b": "two", "c": True},
        },
        {"id": uuid.UUID(int=5), "correlation_id": b"\x00\x01"},
    ],
    ids=["bare", "every property", "uuid and binary ids"],
)
def test_decoding_reads_what_protons_own_message_reads(fields: dict[str, object]) -> None:
    """The decoder reads sections through proton's C binding; each value is the one
    proton's Message class reads from the same bytes (None where it reads nothing)."""
    data = _foreign(**fields)
    theirs = proton.Message()
    theirs.decode(data)
    delivery = decode(data, "svc", 1, "link", False)
    assert delivery.undecodable is None and delivery.body == b"payload"
    props = delivery.properties
    assert isinstance(props, LinkProperties)
    cid = _plain(theirs.correlation_id)
    assert props.correlation == cid and type(props.correlation) is type(cid)
    assert props.message_id == (None if theirs.id is None else str(theirs.id))
    assert props.reply_to == theirs.reply_to
    assert props.content_type == (fields.get("content_type"))
    assert props.content_encoding == (fields.get("content_encoding"))
    assert props.subject == theirs.subject
    assert props.user_id == (bytes(theirs.user_id).decode() if theirs.user_id else None)
    assert props.expiration == (str(round(theirs.ttl * 1000)) if theirs.ttl else None)
    assert props.delivery_mode == (2 if theirs.durable else None)
    assert props.priority == (theirs.priority if theirs.priority != 4 else None)
    created = theirs.creation_time
    assert (props.timestamp.timestamp() if props.timestamp else 0) == created
    assert props.headers == (dict(theirs.properties) if theirs.properties else None)


def test_a_body_that_is_no_bytes_or_text_is_undecodable() -> None:
    """An amqp-value body of another type (a list here) arrives undecodable, saying so."""
    message = proton.Message(body=[1, 2])
    delivery = decode(bytes(message.encode()), "svc", 1, "link", False)
    assert delivery.undecodable is not None and "amqp-value body" in delivery.undecodable


def test_encoding_writes_what_protons_own_message_reads() -> None:
    """Every property encoded through proton's C binding reads back, with its type,
    through proton's own Message class, as another peer would read it."""
    from datetime import UTC, datetime

    props = LinkProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"a": 1, "b": "two", "c": True},
        delivery_mode=2,
        priority=9,
        reply_to="/queue/r",
        expiration="2500",
        message_id="m-1",
        timestamp=datetime.fromtimestamp(1_700_000_000.25, UTC),
        user_id="guest",
        subject="s",
        correlation=uuid.UUID(int=9),
    )
    theirs = proton.Message()
    theirs.decode(encode(Message("", "svc", b"\x00body", props), 0, 0))
    body = theirs.body
    assert isinstance(body, bytes | memoryview) and bytes(body) == b"\x00body" and theirs.inferred
    assert theirs.correlation_id == uuid.UUID(int=9)
    assert (theirs.content_type, theirs.content_encoding) == ("application/json", "gzip")
    assert theirs.properties == {"a": 1, "b": "two", "c": True}
    assert theirs.durable and theirs.priority == 9 and theirs.ttl == 2.5
    assert (theirs.reply_to, theirs.id, theirs.subject) == ("/queue/r", "m-1", "s")
    assert theirs.creation_time == 1_700_000_000.25
    assert bytes(theirs.user_id) == b"guest"
