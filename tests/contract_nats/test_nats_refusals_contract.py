"""Contract: what cannot go on the wire is refused before anything of the batch is sent."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from nats_contract_helpers import Inbox, Nats, message

from hare_py.errors import ConfigError, UnsendableMessage
from hare_py.transport.base import Message, NatsSession, Properties

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


async def _refused(nats: Nats, batch: list[Message], index: int) -> str:
    """Send ``batch`` on a session subscribed to everything under the test's prefix:
    UnsendableMessage names ``index``, and nothing of the batch arrives."""
    session = await nats.session()
    seen, done = Inbox(), Inbox()
    await session.subscribe(nats.subject(">"), seen)
    sentinel = nats.inbox()
    await session.subscribe(sentinel, done)
    with pytest.raises(UnsendableMessage) as refused:
        await session.send(batch)
    assert refused.value.index == index
    await session.send([message(sentinel)])
    await done.get()
    assert seen.pending() == [] and session.is_open
    return refused.value.reason


async def _works(session: NatsSession, subject: str, msg: Message) -> None:
    inbox = Inbox()
    await session.subscribe(subject, inbox)
    await session.send([msg])
    assert (await inbox.get()).body == msg.body


async def test_max_payload_is_the_servers(nats: Nats) -> None:
    """A session reports the server's max_payload: nats-server's default of 1 MiB."""
    with anyio.fail_after(10):
        session = await nats.session()
    assert session.max_payload == MIB


async def test_a_message_over_max_payload_is_refused_with_its_index(nats: Nats) -> None:
    """One body over max_payload refuses the whole batch, naming its index."""
    ok = nats.subject("ok")
    with anyio.fail_after(10):
        batch = [message(ok), message(nats.subject("big"), b"x" * (MIB + 1)), message(ok)]
        reason = await _refused(nats, batch, 1)
    assert "max_payload" in reason


async def test_headers_count_toward_max_payload(nats: Nats) -> None:
    """Headers and body together must fit: a body that fits alone is refused with big headers."""
    subject = nats.subject("h")
    with anyio.fail_after(10):
        body = b"x" * (MIB - 1000)
        headers = {"X-Big": "y" * 2000}
        await _refused(nats, [message(subject, body, headers=headers)], 0)
        session = await nats.session()
        await _works(session, subject, message(subject, body, headers={"X-Small": "y"}))


BAD_HEADER_VALUES: list[Any] = [1, 1.5, b"bytes", None, ["a", 2], {"n": "x"}, True]


@pytest.mark.parametrize("value", BAD_HEADER_VALUES, ids=repr)
async def test_header_values_must_be_strings(nats: Nats, value: Any) -> None:
    """A header value that is not a string, or a list of strings, is refused."""
    subject = nats.subject("types")
    with anyio.fail_after(10):
        batch = [message(subject), message(subject, headers={"X-Bad": value})]
        await _refused(nats, batch, 1)


@pytest.mark.parametrize(
    "headers",
    [{"bad key": "v"}, {"bad:key": "v"}, {"": "v"}, {"é": "v"}, {"K": "a\r\nb"}, {"K": " lead"}],
    ids=repr,
)
async def test_header_syntax_is_checked(nats: Nats, headers: dict[str, str]) -> None:
    """Keys are printable ASCII without ':' or spaces; values have no CR/LF nor a leading space."""
    with anyio.fail_after(10):
        await _refused(nats, [message(nats.subject("syntax"), headers=headers)], 0)


async def test_a_header_key_must_be_a_string(nats: Nats) -> None:
    """A non-string header key is refused."""
    with anyio.fail_after(10):
        # A key the type does not allow: the session must refuse it at run time too.
        bad = message(nats.subject("key"), headers={1: "v"})  # type: ignore[dict-item]
        await _refused(nats, [bad], 0)


@pytest.mark.parametrize("subject", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", ">", "a\r\nb"])
async def test_invalid_publish_subjects_are_refused(nats: Nats, subject: str) -> None:
    """Empty tokens, whitespace and wildcards make a subject unsendable."""
    with anyio.fail_after(10):
        await _refused(nats, [message(nats.subject("fine")), Message("", subject, b"")], 1)


@pytest.mark.parametrize("reply", ["_INBOX.*", "_INBOX.>", "a..b", "a b", ""])
async def test_invalid_reply_subjects_are_refused(nats: Nats, reply: str) -> None:
    """A reply subject follows the publish rules."""
    with anyio.fail_after(10):
        await _refused(nats, [message(nats.subject("r"), reply=reply)], 0)


@pytest.mark.parametrize("subject", ["", "a..b", ".a", "a.", "a b", "a.>.b", "a\tb"])
async def test_invalid_subscribe_subjects_are_refused(nats: Nats, subject: str) -> None:
    """subscribe raises ConfigError for a subject nats-server would refuse; the session lives."""
    with anyio.fail_after(10):
        session = await nats.session()
        with pytest.raises(ConfigError):
            await session.subscribe(subject, Inbox())
        with pytest.raises(ConfigError):
            await session.subscribe(nats.subject("q"), Inbox(), queue="two words")
        await _works(session, nats.subject("after"), message(nats.subject("after"), b"ok"))


@pytest.mark.parametrize(
    "msg",
    [
        Message("amq.direct", "k", b""),
        Message("", "k", b"", Properties(correlation_id="c")),
        Message("", "k", b"", Properties(content_type="application/json")),
        Message("", "k", b"", Properties(expiration="1000")),
    ],
    ids=["exchange", "correlation_id", "content_type", "expiration"],
)
async def test_what_nats_cannot_carry_is_refused(nats: Nats, msg: Message) -> None:
    """An exchange or an AMQP property other than headers and reply_to is unsendable."""
    with anyio.fail_after(10):
        await _refused(nats, [msg._replace(routing_key=nats.subject("p"))], 0)
