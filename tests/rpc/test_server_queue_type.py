"""RPCServer's queue_type and delivery_limit: what RabbitMQ refuses is a ConfigError first."""

from __future__ import annotations

from typing import Any

import pytest

from hare_py import ConfigError, Connection, RPCServer
from hare_py.conventions import goamqp, nats
from hare_py.rpc.answers import Answer, AnswerCache
from hare_py.testing import SandboxBroker, SandboxNatsBroker

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_type": "stream"}, "queue_type must be 'classic' or 'quorum'"),
        ({"delivery_limit": 3}, "delivery_limit needs queue_type='quorum'"),
        ({"queue_type": "quorum", "delivery_limit": 0}, "delivery_limit must be an integer >= 1"),
        ({"queue_type": "quorum", "delivery_limit": True}, "delivery_limit must be an integer"),
        ({"queue_type": "quorum", "auto_delete": True}, "cannot be auto_delete"),
    ],
)
async def test_bad_queue_type_options_are_config_errors(
    options: dict[str, Any], message: str
) -> None:
    """Options RabbitMQ would refuse (406) fail at construction, naming the problem."""
    with SandboxBroker() as broker:
        async with Connection(broker.url) as conn:
            with pytest.raises(ConfigError, match=message):
                RPCServer(conn, queue="q", **options)


async def test_quorum_on_a_convention_without_its_own_queue_is_a_config_error() -> None:
    """A convention whose server declares no queue of that type refuses queue_type="quorum"."""
    with SandboxBroker() as broker:
        async with Connection(broker.url) as conn:
            with pytest.raises(ConfigError, match="queue_type='quorum'"):
                RPCServer(conn, convention=goamqp("svc"), routing_keys=["k"], queue_type="quorum")
    with SandboxNatsBroker() as nats_broker:
        async with Connection(nats_broker.url) as conn:
            with pytest.raises(ConfigError, match="queue_type='quorum'"):
                RPCServer(conn, queue="svc.x", convention=nats("svc"), queue_type="quorum")


def test_answer_cache_is_bounded_by_count_bytes_and_time() -> None:
    """The answer cache drops the oldest past its count or bytes, and expired entries."""
    cache = AnswerCache(2, max_bytes=10, ttl=5.0)
    cache.put("a", Answer(b"1234", None, None), now=0.0)
    cache.put("b", Answer(b"1234", None, None), now=0.0)
    cache.put("c", Answer(b"1", None, None), now=0.0)
    assert cache.get("a", 0.0) is None and len(cache) == 2  # count
    cache.put("d", Answer(b"123456", None, None), now=0.0)
    assert cache.get("b", 0.0) is None and cache.get("d", 0.0) is not None  # bytes
    assert cache.get("d", 5.0) is None  # time
    cache.put("e", Answer(b"", None, None), now=1.0, ttl=0.5)  # a request's own TTL
    assert cache.get("e", 1.4) is not None and cache.get("e", 1.5) is None
    cache.put("big", Answer(b"x" * 11, None, None), now=2.0)
    assert cache.get("big", 2.0) is None  # larger than the whole bound: not kept
    assert AnswerCache(0).get("x", 0.0) is None
