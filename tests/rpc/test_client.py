"""RPCClient on the sandbox broker: every callback result, every default, every failure rule."""

from __future__ import annotations

import json
import math
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from hare_py import (
    JSON,
    Backoff,
    Caller,
    ClientCrashed,
    ClientStopped,
    ConfigError,
    ConnectedMeta,
    Connection,
    ConnectionLost,
    Forward,
    Ignore,
    NoReply,
    Reply,
    Request,
    RequestTimeout,
    Response,
    RestartIntensityExceeded,
    Returned,
    RPCClient,
    Stop,
    Unroutable,
)
from hare_py.testing import SandboxBroker
from hare_py.transport.base import Delivery, Properties

from .echo import echo_server

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.001, maximum=0.01)


class Recording(RPCClient[dict[str, Any]]):
    """Records callbacks; behaviour is steered by the request payload."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inits = 0
        self.metas: list[ConnectedMeta] = []
        self.terminated: list[Any] = []
        self.held: list[Caller] = []
        self.timeouts = 0
        self.returns: list[Returned] = []

    async def init(self, arg: Any) -> Any:
        self.inits += 1
        return {"cache": {b"cached": b"from cache"}, "seen": 0}

    async def handle_connected(self, meta: ConnectedMeta, state: Any) -> Any:
        self.metas.append(meta)
        return NoReply(state)

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        payload = request.payload
        state = {**state, "seen": state["seen"] + 1}
        if payload in state["cache"]:
            return Reply(state["cache"][payload], state)
        if payload == b"rewrite":
            return Forward(state, request.replace(routing_key="v2." + request.routing_key))
        if payload == b"hold":
            self.held.append(caller)
            return NoReply(state)
        if payload == b"stop":
            return Stop("normal", state, reply=b"stopped")
        if payload == b"stop-silently":
            return Stop("shutdown", state)
        if payload == b"crash":
            raise RuntimeError("handle_request crashed")
        return Forward(state)

    async def handle_response(self, response: Response, caller: Caller, state: Any) -> Any:
        if response.payload == b"wrap":
            return Reply(b"<" + response.payload + b">", state)
        return await super().handle_response(response, caller, state)

    async def handle_timeout(self, caller: Caller, state: Any) -> Any:
        self.timeouts += 1
        return await super().handle_timeout(caller, state)

    async def handle_return(self, returned: Returned, caller: Caller, state: Any) -> Any:
        self.returns.append(returned)
        return await super().handle_return(returned, caller, state)

    async def handle_info(self, message: Any, state: Any) -> Any:
        if message == "release":
            for caller in self.held:
                self.reply(caller, b"released")
            self.held.clear()
        return NoReply(state)

    async def handle_call(self, message: Any, caller: Caller, state: Any) -> Any:
        return Reply(state["seen"], state)

    async def terminate(self, reason: Any, state: Any) -> None:
        self.terminated.append(reason)


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.005)


def client_channel(broker: SandboxBroker, client: RPCClient[Any]) -> int:
    assert client.reply_queue is not None
    (consumer,) = broker.consumers(client.reply_queue)
    return consumer.channel


# -- callback results ---------------------------------------------------------------


async def test_forward_passes_the_request_through(broker: SandboxBroker) -> None:
    """Forward(state): the request is published unchanged and the reply returned."""
    async with echo_server(broker.url) as server, Recording.start(broker.url) as client:
        with anyio.fail_after(5):
            assert await client.request(b"hello", "echo", headers={"h": "1"}) == b"hello"
    (delivery,) = server.received
    assert delivery.properties.headers == {"h": "1"}
    assert delivery.properties.reply_to and delivery.properties.reply_to.startswith("amq.gen-")
    assert delivery.properties.correlation_id


async def test_forward_with_a_rewritten_request(broker: SandboxBroker) -> None:
    """Forward(state, request.replace(...)) publishes the rewritten request."""
    async with (
        echo_server(broker.url, exchange="rpc", routing_keys=("v2.key",)) as server,
        Recording.start(broker.url, exchange="rpc") as client,
    ):
        with anyio.fail_after(5):
            assert await client.request(b"rewrite", "key") == b"rewrite"
    assert [d.routing_key for d in server.received] == ["v2.key"]


async def test_local_reply_publishes_nothing(broker: SandboxBroker) -> None:
    """Reply(value, state) from handle_request answers locally; nothing reaches the broker."""
    async with Recording.start(broker.url) as client:
        with anyio.fail_after(5):
            await wait_for(lambda: client.connected)
            assert await client.request(b"cached", "echo") == b"from cache"
            assert await client.call("seen") == 1
    assert broker.ops("basic_publish") == []


async def test_stop_with_a_reply(broker: SandboxBroker) -> None:
    """Stop(normal, reply=...) answers the caller, ends the client for good, block exits."""
    async with Recording.start(broker.url) as client:
        with anyio.fail_after(5):
            assert await client.request(b"stop", "echo") == b"stopped"
            with pytest.raises(ClientStopped):
                await client.request(b"x", "echo")
    assert client.terminated == ["normal"]
    assert client.inits == 1


async def test_stop_without_a_reply(broker: SandboxBroker) -> None:
    """Stop(shutdown) without reply: that caller gets ClientStopped; no restart."""
    async with Recording.start(broker.url) as client:
        with anyio.fail_after(5):
            with pytest.raises(ClientStopped):
                await client.request(b"stop-silently", "echo")
            with pytest.raises(ClientStopped):
                await client.call("seen")
    assert client.terminated == ["shutdown"]
    assert client.inits == 1


async def test_no_reply_then_a_later_reply_through_the_caller(broker: SandboxBroker) -> None:
    """NoReply from handle_request holds the caller; reply(caller, v) answers it later."""
    async with Recording.start(broker.url) as client:
        results: list[Any] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def ask() -> None:
                    results.append(await client.request(b"hold", "echo"))

                tg.start_soon(ask)
                await wait_for(lambda: client.held)
                assert client.pending == 1
                client.send("release")
    assert results == [b"released"]
    assert client.pending == 0


async def test_handle_response_decides_what_the_caller_gets(broker: SandboxBroker) -> None:
    """handle_response's Reply value is what request() returns."""
    async with echo_server(broker.url), Recording.start(broker.url) as client:
        with anyio.fail_after(5):
            assert await client.request(b"wrap", "echo") == b"<wrap>"


# -- defaults ---------------------------------------------------------------------------


async def test_defaults_forward_and_return_the_payload(broker: SandboxBroker) -> None:
    """A client that overrides nothing forwards requests and returns reply payloads."""
    async with echo_server(broker.url), RPCClient.start(broker.url) as client:
        with anyio.fail_after(5):
            assert await client.request(b"plain", "echo") == b"plain"
            with pytest.raises(NotImplementedError):
                await client.call("anything")


async def test_default_timeout_raises_request_timeout(broker: SandboxBroker) -> None:
    """With no reply, handle_timeout runs at the deadline and the caller gets RequestTimeout."""

    async def silent(delivery: Delivery) -> bytes | None:
        return None

    async with (
        echo_server(broker.url, handler=silent),
        Recording.start(broker.url, timeout=0.2) as client,
    ):
        with anyio.fail_after(5):
            start = anyio.current_time()
            with pytest.raises(RequestTimeout, match="no reply"):
                await client.request(b"x", "echo")
            assert anyio.current_time() - start >= 0.2  # not before its deadline
            assert client.timeouts == 1  # answered by handle_timeout, not the grace backstop
            assert client.pending == 0


async def test_per_call_timeout_overrides_the_default(broker: SandboxBroker) -> None:
    """timeout= on request() overrides the client's default deadline."""

    async def slow(delivery: Delivery) -> bytes | None:
        await anyio.sleep(0.3)
        return delivery.body

    async with (
        echo_server(broker.url, handler=slow),
        Recording.start(broker.url, timeout=0.1) as client,
    ):
        with anyio.fail_after(5):
            with pytest.raises(RequestTimeout):
                await client.request(b"x", "echo")
            assert await client.request(b"y", "echo", timeout=2.0) == b"y"
            assert await client.request(b"z", "echo", timeout=math.inf) == b"z"


async def test_late_reply_is_dropped_and_logged(broker: SandboxBroker) -> None:
    """A reply arriving after its deadline reaches nobody and is logged, nothing crashes."""

    async def slow(delivery: Delivery) -> bytes | None:
        await anyio.sleep(0.3)
        return delivery.body

    with capture_logs() as logs:
        async with (
            echo_server(broker.url, handler=slow) as server,
            Recording.start(broker.url, timeout=0.1) as client,
        ):
            with anyio.fail_after(5):
                with pytest.raises(RequestTimeout):
                    await client.request(b"x", "echo")
                await wait_for(lambda: server.replied == 1)
                await wait_for(lambda: any(e["event"] == "rpc.reply_dropped" for e in logs))
                assert client.running and client.inits == 1


async def test_unknown_and_malformed_replies_are_dropped(broker: SandboxBroker) -> None:
    """Replies with unknown or missing correlation ids never reach a caller or crash."""
    async with echo_server(broker.url), Recording.start(broker.url) as client:
        with anyio.fail_after(5):
            await wait_for(lambda: client.connected)
            assert client.reply_queue is not None
            for props in (Properties(correlation_id="forged"), Properties()):
                broker.publish("", client.reply_queue, b"junk", props)
            assert await client.request(b"real", "echo") == b"real"
            assert client.inits == 1


async def test_unroutable_fails_fast(broker: SandboxBroker) -> None:
    """A mandatory request with no queue bound fails with Unroutable long before its deadline."""
    async with Recording.start(broker.url, exchange="rpc", timeout=30) as client:
        with anyio.fail_after(5):
            await wait_for(lambda: client.connected)
            with pytest.raises(Unroutable, match="nowhere"):
                await client.request(b"x", "nowhere")
    (returned,) = client.returns
    assert returned.reply_code == 312
    assert returned.request.routing_key == "nowhere"


# -- connection and channel failures ---------------------------------------------------


async def test_reconnect_redeclares_and_calls_handle_connected(broker: SandboxBroker) -> None:
    """After a connection loss: a fresh reply queue, exchange redeclared, handle_connected again."""
    async with (
        echo_server(broker.url, exchange="rpc", routing_keys=("k",)),
        Recording.start(broker.url, exchange="rpc") as client,
    ):
        with anyio.fail_after(5):
            assert await client.request(b"1", "k") == b"1"
            first = client.reply_queue
            (consumer,) = broker.consumers(first or "")
            broker.kill_connection(consumer.connection)
            await wait_for(lambda: len(client.metas) == 2)
            assert client.reply_queue != first
            assert first not in broker.queues  # exclusive: gone with its connection
            assert [m.reply_queue for m in client.metas] == [first, client.reply_queue]
            assert [m.connects for m in client.metas] == [1, 2]
            declares = [op for op in broker.ops("exchange_declare") if op["exchange"] == "rpc"]
            assert len(declares) >= 3  # echo server once, client twice
            assert await client.request(b"2", "k") == b"2"
    assert client.inits == 1  # a reconnect is not a restart


async def test_channel_kill_fails_in_flight_requests_at_once(broker: SandboxBroker) -> None:
    """Killing the channel fails in-flight requests with ConnectionLost, not at their deadline."""

    async def never(delivery: Delivery) -> bytes | None:
        await anyio.sleep_forever()
        return None

    async with (
        echo_server(broker.url, handler=never) as server,
        Recording.start(broker.url, timeout=30) as client,
    ):
        with anyio.fail_after(5):
            errors: list[ConnectionLost] = []
            async with anyio.create_task_group() as tg:

                async def ask() -> None:
                    try:
                        await client.request(b"x", "echo")
                    except ConnectionLost as exc:
                        errors.append(exc)

                for _ in range(3):
                    tg.start_soon(ask)
                await wait_for(lambda: len(server.received) == 3)
                broker.kill_channel(client_channel(broker, client), 320, "CONNECTION_FORCED - test")
            assert len(errors) == 3  # ConnectionLost at the kill, not at the 30 s deadline
            assert errors[0].code == 320
            await wait_for(lambda: len(client.metas) == 2)
            assert client.pending == 0


async def test_requests_wait_for_the_reconnect(broker: SandboxBroker) -> None:
    """Requests made while the broker is down are sent once it is back, within their deadline."""
    async with echo_server(broker.url) as server:
        async with Recording.start(broker.url, timeout=10, backoff=FAST) as client:
            with anyio.fail_after(8):
                await wait_for(lambda: client.connected)
                broker.down()
                await wait_for(lambda: not client.connected)
                results: list[bytes] = []
                async with anyio.create_task_group() as tg:
                    for i in range(5):
                        tg.start_soon(_collect, client, str(i).encode(), results)
                    await anyio.sleep(0.3)
                    assert results == []
                    broker.up()
                    # the echo server's queue died with the broker: bring it back
                    async with echo_server(broker.url):
                        await wait_for(lambda: len(results) == 5)
                assert sorted(results) == [b"0", b"1", b"2", b"3", b"4"]
        del server


async def _collect(client: RPCClient[Any], payload: bytes, into: list[bytes]) -> None:
    into.append(await client.request(payload, "echo"))


async def test_idempotent_request_is_republished_after_reconnect(broker: SandboxBroker) -> None:
    """An idempotent in-flight request survives a channel kill: republished, then answered."""
    seen: list[bytes] = []

    async def first_never(delivery: Delivery) -> bytes | None:
        seen.append(delivery.body)
        if len(seen) == 1:
            await anyio.sleep_forever()
        return delivery.body

    async with (
        echo_server(broker.url, handler=first_never),
        Recording.start(broker.url, timeout=5) as client,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                result: list[bytes] = []

                async def ask() -> None:
                    result.append(await client.request(b"idem", "echo", idempotent=True))

                tg.start_soon(ask)
                await wait_for(lambda: len(seen) == 1)
                broker.kill_channel(client_channel(broker, client))
            assert result == [b"idem"]
            assert seen == [b"idem", b"idem"]


async def test_broker_down_past_the_deadline_gives_a_typed_error(broker: SandboxBroker) -> None:
    """While no broker is reachable, a request fails at its deadline with RequestTimeout."""
    broker.down()
    async with Recording.start(broker.url, timeout=0.3) as client:
        with anyio.fail_after(5), pytest.raises(RequestTimeout, match="waiting for a channel"):
            await client.request(b"x", "echo")


async def test_client_started_before_its_broker_connects_later() -> None:
    """start() returns without a broker; the client connects once the broker exists."""
    name = "late-broker"
    async with Recording.start(f"sandbox://{name}", timeout=5) as client:
        assert not client.connected
        await anyio.sleep(0.1)
        with SandboxBroker(name) as broker:
            async with echo_server(broker.url):
                with anyio.fail_after(5):
                    assert await client.request(b"x", "echo") == b"x"


async def test_reply_consumer_cancel_reopens_with_a_fresh_queue(broker: SandboxBroker) -> None:
    """Deleting the reply queue (consumer cancel) yields a new channel and reply queue."""
    async with echo_server(broker.url), Recording.start(broker.url) as client:
        with anyio.fail_after(5):
            await wait_for(lambda: client.connected)
            first = client.reply_queue
            assert first is not None
            broker.delete_queue(first)
            await wait_for(lambda: len(client.metas) == 2)
            assert client.reply_queue != first
            assert await client.request(b"after", "echo") == b"after"


async def test_shared_connection_serves_several_clients(broker: SandboxBroker) -> None:
    """Clients on one Connection each get their own channel and reply queue."""
    async with echo_server(broker.url), Connection(broker.url) as conn:
        async with Recording.start(conn) as a, Recording.start(conn) as b:
            with anyio.fail_after(5):
                assert await a.request(b"a", "echo") == b"a"
                assert await b.request(b"b", "echo") == b"b"
                assert a.reply_queue != b.reply_queue
        assert len(broker.connections) == 2  # echo server + the shared one


# -- crashes and supervision -------------------------------------------------------------


async def test_crash_restarts_with_init_and_fails_waiting_callers(broker: SandboxBroker) -> None:
    """A raising callback crashes the actor: waiting callers fail at once; init runs again."""

    async def never(delivery: Delivery) -> bytes | None:
        await anyio.sleep_forever()
        return None

    async with (
        echo_server(broker.url, handler=never),
        Recording.start(broker.url, timeout=30, restart_backoff=FAST) as client,
    ):
        with anyio.fail_after(5):
            errors: list[BaseException] = []
            async with anyio.create_task_group() as tg:

                async def waiting() -> None:
                    with pytest.raises(ClientCrashed) as info:
                        await client.request(b"in flight", "echo")
                    errors.append(info.value)

                tg.start_soon(waiting)
                await wait_for(lambda: client.pending == 1)
                with pytest.raises(ClientCrashed):
                    await client.request(b"crash", "echo")
            assert len(errors) == 1
            await wait_for(lambda: client.inits == 2 and client.connected)
            assert isinstance(client.terminated[0], RuntimeError)
            assert await client.request(b"cached", "echo") == b"from cache"


async def test_intensity_exceeded_is_one_clear_error(broker: SandboxBroker) -> None:
    """Crashing more than max_restarts times raises RestartIntensityExceeded out of the block."""
    with anyio.fail_after(5), pytest.raises(RestartIntensityExceeded) as info:
        async with Recording.start(
            broker.url, max_restarts=2, within=10, restart_backoff=FAST
        ) as client:
            for _ in range(3):
                with pytest.raises(ClientCrashed):
                    await client.request(b"crash", "echo")
            await anyio.sleep_forever()
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ClientStopped):
        await client.request(b"x", "echo")


async def test_init_ignore_gives_a_stopped_client(broker: SandboxBroker) -> None:
    """init returning Ignore(): the block runs, requests raise ClientStopped, no channel opens."""

    class Ignored(RPCClient[None]):
        async def init(self, arg: Any) -> Any:
            return Ignore()

    async with Ignored.start(broker.url) as client:
        with pytest.raises(ClientStopped):
            await client.request(b"x", "echo")
    assert broker.ops("open_channel") == []


# -- callers -------------------------------------------------------------------------------


class Stuck(Recording):
    """Stuck in a slow callback when told to be."""

    async def handle_info(self, message: Any, state: Any) -> Any:
        if message == "stuck":
            await anyio.sleep(3)
            return NoReply(state)
        return await super().handle_info(message, state)


async def test_a_stuck_actor_keeps_no_caller_past_its_deadline_plus_the_grace(
    broker: SandboxBroker,
) -> None:
    """The actor cannot run handle_timeout while stuck: the caller gives up on its own."""

    async def silent(delivery: Delivery) -> bytes | None:
        return None

    async with (
        echo_server(broker.url, handler=silent),
        Stuck.start(broker.url, timeout=0.2) as client,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                ended: list[float] = []

                async def one() -> None:
                    with pytest.raises(RequestTimeout):
                        await client.request(b"x", "echo")
                    ended.append(anyio.current_time())

                start = anyio.current_time()
                for _ in range(3):
                    tg.start_soon(one)
                await wait_for(lambda: client.pending == 3)
                client.send("stuck")
            assert len(ended) == 3
            for end in ended:  # deadline 0.2 s, grace 0.1 s; the actor is stuck for 3 s
                assert 0.2 <= end - start < 0.2 + client.deadline_grace + 0.5
            assert client.timeouts == 0  # not handle_timeout: the actor never got to it
            assert client.pending == 0


async def test_cancelled_request_leaves_no_pending_entry(broker: SandboxBroker) -> None:
    """Cancelling request() removes its entry; its late reply is dropped."""

    async def slow(delivery: Delivery) -> bytes | None:
        await anyio.sleep(0.2)
        return delivery.body

    async with (
        echo_server(broker.url, handler=slow) as server,
        Recording.start(broker.url) as client,
    ):
        with anyio.fail_after(5):
            with anyio.move_on_after(0.05):
                await client.request(b"x", "echo")
            assert client.pending == 0
            await wait_for(lambda: server.replied == 1)
            assert await client.request(b"y", "echo") == b"y"
            assert client.pending == 0


async def test_replies_reach_only_their_own_caller(broker: SandboxBroker) -> None:
    """Concurrent callers each get the reply to their own payload."""

    async def jitter(delivery: Delivery) -> bytes | None:
        await anyio.sleep((hash(delivery.body) % 10) / 1000)
        return delivery.body

    async with echo_server(broker.url, handler=jitter), Recording.start(broker.url) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(200):

                    async def ask(i: int = i) -> None:
                        payload = f"caller-{i}".encode()
                        assert await client.request(payload, "echo") == payload

                    tg.start_soon(ask)


async def test_ten_thousand_concurrent_requests(broker: SandboxBroker) -> None:
    """10,000 concurrent requests through the sandbox: every one answered, nothing left over."""
    answered = 0
    async with echo_server(broker.url), RPCClient.start(broker.url, timeout=60) as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(10_000):

                    async def ask(i: int = i) -> None:
                        nonlocal answered
                        payload = i.to_bytes(4, "big")
                        assert await client.request(payload, "echo") == payload
                        answered += 1

                    tg.start_soon(ask)
            assert client.pending == 0
    assert answered == 10_000


async def test_max_in_flight_bounds_concurrency(broker: SandboxBroker) -> None:
    """Beyond max_in_flight, request() waits for a slot (within its deadline)."""
    active = 0
    peak = 0

    async def count(delivery: Delivery) -> bytes | None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.01)
        active -= 1
        return delivery.body

    async with (
        echo_server(broker.url, handler=count),
        RPCClient.start(broker.url, max_in_flight=3) as client,
    ):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(client.request, str(i).encode(), "echo")
    assert peak == 3


async def test_json_codec_round_trip(broker: SandboxBroker) -> None:
    """With codec=JSON, payloads are JSON values on both sides."""
    async with echo_server(broker.url) as server, RPCClient.start(broker.url, codec=JSON) as client:
        with anyio.fail_after(5):
            assert await client.request({"a": [1, 2]}, "echo") == {"a": [1, 2]}
    assert server.received[0].properties.content_type == "application/json"


# -- configuration ----------------------------------------------------------------------------


async def test_bad_configuration_raises_config_error(broker: SandboxBroker) -> None:
    """Unknown scheme, bad exchange type, bad timeout and non-bytes payloads name the value."""
    with pytest.raises(ConfigError, match="'http://'"):
        RPCClient.start("http://localhost/")
    with pytest.raises(ConfigError, match="'fanciful'"):
        RPCClient.start(broker.url, exchange="x", exchange_type="fanciful")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="-1"):
        RPCClient.start(broker.url, timeout=-1)
    async with RPCClient.start(broker.url) as client:
        with pytest.raises(ConfigError, match="str"):
            await client.request("text", "echo")
        with pytest.raises(ConfigError, match=r"-0\.5"):
            await client.request(b"x", "echo", timeout=-0.5)
        with pytest.raises(ConfigError, match="255 bytes"):
            await client.request(b"x", "é" * 128)


async def test_password_never_appears_in_logs_or_reprs() -> None:
    """A URL's password is hidden in reprs, logs and errors."""
    secret = "s3cr3t-pw"
    url = f"sandbox://nobody-{secret}"  # sandbox names carry no password; check amqp URLs:
    conn = Connection(f"amqp://user:{secret}@127.0.0.1:1/")
    assert secret not in repr(conn)
    assert secret not in str(conn.urls)
    with capture_logs() as logs:
        with pytest.raises(ConfigError) as info:
            RPCClient.start(f"nope://user:{secret}@host/")
    assert secret not in str(info.value)
    assert secret not in repr(logs)
    del url


async def test_one_canonical_log_event_per_request(broker: SandboxBroker) -> None:
    """Each request logs one rpc.request event with outcome, duration, key and id."""

    async def silent(delivery: Delivery) -> bytes | None:
        return None if delivery.body == b"quiet" else delivery.body

    with capture_logs() as logs:
        async with (
            echo_server(broker.url, handler=silent),
            RPCClient.start(broker.url, timeout=0.2) as client,
        ):
            with anyio.fail_after(5):
                assert await client.request(b"x", "echo") == b"x"
                with pytest.raises(RequestTimeout):
                    await client.request(b"quiet", "echo")
                with pytest.raises(Unroutable):
                    await client.request(b"x", "nowhere")
    events = [e for e in logs if e["event"] == "rpc.request"]
    assert [e["outcome"] for e in events] == ["ok", "RequestTimeout", "Unroutable"]
    assert [e["routing_key"] for e in events] == ["echo", "echo", "nowhere"]
    assert all(e["duration_ms"] >= 0 and len(e["correlation_id"]) >= 20 for e in events)


async def test_waiting_for_an_in_flight_slot_is_bounded_and_leaks_nothing(
    broker: SandboxBroker,
) -> None:
    """A request that times out waiting for a max_in_flight slot frees no slot it never had."""

    async def slow_first(delivery: Delivery) -> bytes | None:
        if delivery.body == b"slow":
            await anyio.sleep(0.5)
        return delivery.body

    async with (
        echo_server(broker.url, handler=slow_first),
        RPCClient.start(broker.url, max_in_flight=1, timeout=5) as client,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.request, b"slow", "echo")
                await anyio.sleep(0.05)
                with pytest.raises(RequestTimeout, match="slots"):
                    await client.request(b"waits", "echo", timeout=0.1)
            for payload in (b"a", b"b"):  # the one slot is free again, exactly once
                assert await client.request(payload, "echo") == payload
            assert client._slots.value == 1


# -- a JSON payload is encoded once, unless a callback may have changed it ---------------


class _Mutating(RPCClient[None]):
    """Changes the payload in place, then forwards the same Request."""

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        request.payload["seen"] = True
        return Forward(state)


class _Replacing(RPCClient[None]):
    """Forwards a new Request with another payload."""

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        return Forward(state, request.replace(payload={"replaced": 1}))


@pytest.mark.parametrize(
    ("client_class", "sent"),
    [
        (RPCClient, {"n": 1}),
        (_Mutating, {"n": 1, "seen": True}),
        (_Replacing, {"replaced": 1}),
    ],
    ids=["default", "changed in place", "replaced"],
)
async def test_json_payload_sent_is_what_handle_request_left(
    broker: SandboxBroker, client_class: type[RPCClient[None]], sent: dict[str, Any]
) -> None:
    """The body encoded when the call checked its payload is the one sent only while
    no callback could have changed it: an own handle_request's in-place change and a
    replaced Request both reach the server."""
    async with (
        echo_server(broker.url) as server,
        client_class.start(broker.url, codec=JSON) as client,
    ):
        with anyio.fail_after(5):
            assert await client.request({"n": 1}, "echo") == sent
    (delivery,) = server.received
    assert json.loads(delivery.body) == sent
