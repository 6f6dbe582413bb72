"""Contract: subjects with '*' and '>' wildcards."""

from __future__ import annotations

import anyio
import pytest
from nats_contract_helpers import Inbox, Nats, message

from hare_py.errors import ConfigError
from hare_py.transport.base import NatsSession

pytestmark = pytest.mark.anyio


async def _received(nats: Nats, pattern: str, subjects: list[str]) -> tuple[list[str], NatsSession]:
    """The subjects a subscription to ``pattern`` got, of ``subjects`` published in turn."""
    subscriber = await nats.session()
    inbox, done = Inbox(), Inbox()
    await subscriber.subscribe(pattern, inbox)
    sentinel = nats.subject("sentinel")
    await subscriber.subscribe(sentinel, done)
    publisher = await nats.session()
    await publisher.send([message(s) for s in subjects] + [message(sentinel)])
    await done.get()  # per-publisher order: everything before it has arrived
    return [d.routing_key for d in inbox.pending()], subscriber


async def test_star_matches_exactly_one_token(nats: Nats) -> None:
    """'*' takes one whole token: not zero, not two."""
    p = nats.subject("star")
    with anyio.fail_after(10):
        got, _ = await _received(
            nats, f"{p}.*.end", [f"{p}.a.end", f"{p}.end", f"{p}.a.b.end", f"{p}.a.other"]
        )
    assert got == [f"{p}.a.end"]


async def test_gt_matches_one_or_more_trailing_tokens(nats: Nats) -> None:
    """'>' takes every remaining token, at least one; the prefix must match exactly."""
    p = nats.subject("gt")
    with anyio.fail_after(10):
        got, _ = await _received(
            nats, f"{p}.>", [p, f"{p}.a", f"{p}.a.b.c", f"{p}x.a", nats.subject("other.a")]
        )
    assert got == [f"{p}.a", f"{p}.a.b.c"]


async def test_star_and_gt_combine(nats: Nats) -> None:
    """'*.x.>' needs any first token, then x, then at least one more."""
    p = nats.subject("mix")
    with anyio.fail_after(10):
        got, _ = await _received(
            nats, f"{p}.*.x.>", [f"{p}.a.x.b", f"{p}.a.x", f"{p}.a.y.b", f"{p}.z.x.b.c"]
        )
    assert got == [f"{p}.a.x.b", f"{p}.z.x.b.c"]


@pytest.mark.parametrize("pattern", ["{p}.>.x", "{p}.a>", "{p}.*b", "{p}.>>", "{p}.**"])
async def test_wildcards_only_as_whole_tokens_and_gt_only_last(nats: Nats, pattern: str) -> None:
    """A partial or non-final wildcard is refused; the session stays usable."""
    p = nats.subject("bad")
    with anyio.fail_after(10):
        got, subscriber = await _received(nats, f"{p}.ok", [f"{p}.ok"])
        with pytest.raises(ConfigError):
            await subscriber.subscribe(pattern.format(p=p), Inbox())
        assert subscriber.is_open and got == [f"{p}.ok"]
        inbox = Inbox()
        await subscriber.subscribe(f"{p}.*", inbox)
        await subscriber.send([message(f"{p}.again")])
        assert (await inbox.get()).routing_key == f"{p}.again"


async def test_overlapping_subscriptions_each_get_a_copy(nats: Nats) -> None:
    """A message matching three subscriptions of one session arrives three times, once per sid."""
    p = nats.subject("overlap")
    with anyio.fail_after(10):
        session = await nats.session()
        inbox = Inbox()
        sids = {
            await session.subscribe(f"{p}.a", inbox),
            await session.subscribe(f"{p}.*", inbox),
            await session.subscribe(f"{p}.>", inbox),
        }
        await session.send([message(f"{p}.a", b"x")])
        copies = await inbox.take(3)
    assert {d.consumer_tag for d in copies} == sids
    assert all(d.body == b"x" for d in copies)
