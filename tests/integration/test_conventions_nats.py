"""The nats() convention, the NATS service API and draining, on the sandbox and nats-server.

Every test runs on ``SandboxNatsBroker`` and on the session's private
nats-server, each on asyncio and trio. Service names are the test's own, so
that tests never meet on the shared server.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest
from inbox import Inbox
from micro_schema import check
from nats_kinds import NatsKind

from hare_py import (
    JSON,
    Caller,
    ConfigError,
    ConnectionLost,
    NoReply,
    RemoteError,
    Reply,
    Request,
    RequestTimeout,
    RPCClient,
    RPCServer,
    Unroutable,
)
from hare_py.conventions import Convention, ServerOptions, loom, nats
from hare_py.conventions.base import ServerConvention
from hare_py.conventions.nats import NatsServiceServer
from hare_py.testing import SandboxBroker, SandboxNatsBroker
from hare_py.transport import ConnectOptions, backend_for, parse_url
from hare_py.transport.base import Delivery, Message, NatsSession, Properties

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(nats_kind: NatsKind) -> str:
    return nats_kind.anyio_backend


@pytest.fixture
def url(nats_url: str) -> str:
    return nats_url


@pytest.fixture
def svc() -> str:
    return f"svc-{secrets.token_hex(4)}"


class Echo(RPCServer[list[Request]]):
    """Echoes; b'boom' raises, b'404' raises a RemoteError with a code, b'slow' never ends."""

    async def init(self, arg: Any) -> list[Request]:
        return []

    async def handle_request(self, request: Request, caller: Caller, seen: Any) -> Any:
        seen.append(request)
        word = request.payload.decode() if isinstance(request.payload, bytes) else request.payload
        if word == "boom":
            raise ValueError("it failed")
        if word == "404":
            raise RemoteError("404", "no such key")
        if word == "slow":
            await anyio.Event().wait()
        return Reply(request.payload, seen)


class Mirror(RPCServer[None]):
    """Answers with what it was sent: subject, headers and payload (JSON)."""

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        return Reply(
            {
                "subject": request.routing_key,
                "headers": dict(request.headers),
                "got": request.payload,
            },
            state,
        )


class Held(RPCServer[list[Caller]]):
    """Holds every request with NoReply (the test answers them); b'probe' is answered."""

    async def init(self, arg: Any) -> list[Caller]:
        return []

    async def handle_request(self, request: Request, caller: Caller, held: Any) -> Any:
        if request.payload == b"probe":
            return Reply(b"here", held)
        held.append(caller)
        return NoReply(held)


class JustCloses(Convention):
    """``inner``, except that its servers close on stop instead of draining."""

    name = "just-closes"

    def __init__(self, inner: Convention) -> None:
        self.inner = inner

    def client(self, exchange: str, exchange_type: str, durable: bool) -> Any:
        return self.inner.client(exchange, exchange_type, durable)

    def server(self, options: ServerOptions) -> ServerConvention[Any]:
        half = self.inner.server(options)
        half.drains = False
        return half


async def wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await anyio.sleep(0.005)


@asynccontextmanager
async def serving(
    url: str, n: int, cls: type[RPCServer[Any]] = Echo, **kw: Any
) -> AsyncIterator[list[Any]]:
    async with AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(cls.start(url, name=f"s{i}", **kw)) for i in range(n)
        ]
        with anyio.fail_after(5):
            await wait_until(lambda: all(s.connected for s in started))
        yield started


@asynccontextmanager
async def calling(url: str, **kw: Any) -> AsyncIterator[RPCClient[Any]]:
    async with RPCClient.start(url, convention=nats(), **kw) as client:
        with anyio.fail_after(5):
            await wait_until(lambda: client.connected)
        yield client


class Wire:
    """A raw NATS session, for what a hare_py client would hide: headers, many answers."""

    def __init__(self, session: NatsSession) -> None:
        self.session = session

    async def gather(
        self, subject: str, until: Callable[[list[Delivery]], bool], body: bytes = b""
    ) -> list[Delivery]:
        """Request ``subject`` and collect the answers until ``until`` holds."""
        inbox = f"_INBOX.{secrets.token_hex(12)}"
        answers = Inbox()
        sid = await self.session.subscribe(inbox, answers)
        await self.session.flush(5)
        await self.session.send([Message("", subject, body, Properties(reply_to=inbox))])
        got: list[Delivery] = []
        while not until(got):
            got.append(await answers.get())
        await self.session.unsubscribe(sid)
        return got

    async def request(self, subject: str, body: bytes = b"") -> Delivery:
        return (await self.gather(subject, lambda got: bool(got), body))[0]

    async def ask(self, subject: str) -> Any:
        return json.loads((await self.request(subject)).body)


@asynccontextmanager
async def wire(url: str) -> AsyncIterator[Wire]:
    parsed = parse_url(url)
    async with backend_for(parsed).connect(parsed, ConnectOptions(name="probe")) as conn:
        session = await conn.open_session()
        assert isinstance(session, NatsSession)
        yield Wire(session)


# -- request and reply -------------------------------------------------------------


async def test_a_request_reaches_its_subject_with_its_headers_and_content_type(
    url: str, svc: str
) -> None:
    """The routing key is the subject; headers and the codec's Content-Type arrive as sent."""
    async with (
        serving(url, 1, Mirror, codec=JSON, convention=nats(svc), routing_keys=[f"{svc}.echo"]),
        calling(url, codec=JSON) as client,
    ):
        with anyio.fail_after(5):
            reply = await client.request({"a": 1}, f"{svc}.echo", headers={"X-Trace": "t1"})
    assert reply["subject"] == f"{svc}.echo"
    assert reply["got"] == {"a": 1}
    assert reply["headers"]["X-Trace"] == "t1"
    assert reply["headers"]["Content-Type"] == "application/json"


async def test_queue_names_the_one_subject_served(url: str, svc: str) -> None:
    """queue= serves that one subject, as routing_keys=[subject] would."""
    async with serving(url, 1, convention=nats(svc), queue=f"{svc}.one"), calling(url) as c:
        with anyio.fail_after(5):
            assert await c.request(b"hi", f"{svc}.one") == b"hi"


async def test_three_instances_share_the_queue_group_and_handle_each_request_once(
    url: str, svc: str
) -> None:
    """60 calls over 3 instances in queue group 'q': each handled once, none idle."""
    async with (
        serving(url, 3, convention=nats(svc), routing_keys=[f"{svc}.echo"]) as servers,
        calling(url) as client,
    ):
        replies: list[bytes] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(60):

                    async def one(i: int = i) -> None:
                        replies.append(await client.request(b"%d" % i, f"{svc}.echo"))

                    tg.start_soon(one)
    handled = [r.payload for s in servers for r in s._state]
    assert sorted(handled) == sorted(b"%d" % i for i in range(60))
    assert sorted(replies) == sorted(handled)
    assert all(s._state for s in servers)


async def test_a_subject_nobody_serves_is_unroutable_at_once(url: str, svc: str) -> None:
    """No responders: Unroutable naming the subject, well before the deadline."""
    async with calling(url) as client:
        with anyio.fail_after(5), pytest.raises(Unroutable, match=f"{svc}.nobody"):
            await client.request(b"x", f"{svc}.nobody", timeout=60)


async def test_handler_errors_travel_in_the_service_error_headers(url: str, svc: str) -> None:
    """Errors are empty replies with Nats-Service-Error(-Code): 500, a RemoteError's code, 400."""
    async with (
        serving(url, 1, codec=JSON, convention=nats(svc), routing_keys=[f"{svc}.x"]),
        calling(url) as client,
        wire(url) as raw,
    ):
        with anyio.fail_after(5):
            answer = await raw.request(f"{svc}.x", b'"boom"')
            headers = answer.properties.headers or {}
            assert answer.body == b""
            assert headers["Nats-Service-Error-Code"] == "500"
            assert headers["Nats-Service-Error"] == "ValueError: it failed"
            with pytest.raises(RemoteError) as failed:
                await client.request(b'"boom"', f"{svc}.x")
            assert (failed.value.type, failed.value.message) == ("500", "ValueError: it failed")
            with pytest.raises(RemoteError) as missing:
                await client.request(b'"404"', f"{svc}.x")
            assert (missing.value.type, missing.value.message) == ("404", "no such key")
            with pytest.raises(RemoteError) as undecodable:
                await client.request(b"{not json", f"{svc}.x")
            assert undecodable.value.type == "400"
            assert await client.request(b'"fine"', f"{svc}.x") == b'"fine"'


class Big(RPCServer[None]):
    """Answers b'big' with a reply over the server's max_payload, anything else with itself."""

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        if request.payload == b"big":
            return Reply(b"x" * (1024 * 1024 + 1), state)
        return Reply(request.payload, state)


async def test_a_reply_over_max_payload_becomes_an_error_reply_and_serving_goes_on(
    url: str, svc: str
) -> None:
    """The reply cannot go on the wire: the caller gets an error reply at once, naming
    max_payload, and the next requests are answered as before."""
    async with (
        serving(url, 1, Big, convention=nats(svc), routing_keys=[f"{svc}.x"]),
        calling(url) as client,
    ):
        with anyio.fail_after(5):
            assert await client.request(b"before", f"{svc}.x", timeout=60) == b"before"
            with pytest.raises(RemoteError, match="max_payload"):
                await client.request(b"big", f"{svc}.x", timeout=60)
            answers = [await client.request(str(i).encode(), f"{svc}.x") for i in range(20)]
    assert answers == [str(i).encode() for i in range(20)]


# -- the service API ---------------------------------------------------------------


async def test_the_service_api_answers_ping_info_and_stats_on_all_three_subjects(
    url: str, svc: str
) -> None:
    """PING/INFO/STATS answer on $SRV.V, .name and .name.id with micro's JSON, no handler run."""
    convention = nats(svc, version="1.2.3", description="echoes", metadata={"team": "x"})
    subjects = [f"{svc}.echo", f"{svc}.other"]
    async with (
        serving(url, 1, convention=convention, routing_keys=subjects) as (server,),
        calling(url) as client,
        wire(url) as raw,
    ):
        with anyio.fail_after(10):
            for payload in (b"a", b"b", b"c"):
                await client.request(payload, f"{svc}.echo")
            with pytest.raises(RemoteError):
                await client.request(b"boom", f"{svc}.echo")
            sid = server.convention.service_id
            answers: dict[str, list[Any]] = {}
            for verb in ("PING", "INFO", "STATS"):
                ours = await raw.gather(
                    f"$SRV.{verb}", lambda got: any(sid.encode() in d.body for d in got)
                )
                answers[verb] = [
                    next(json.loads(d.body) for d in ours if sid.encode() in d.body),
                    await raw.ask(f"$SRV.{verb}.{svc}"),
                    await raw.ask(f"$SRV.{verb}.{svc}.{sid}"),
                ]
    assert len(server._state) == 4  # the handler saw the calls only
    assert len(sid) == 22 and sid.isalnum()
    for verb, docs in answers.items():
        for doc in docs:
            check(verb, doc)
            assert (doc["name"], doc["id"], doc["version"]) == (svc, sid, "1.2.3")
            assert doc["metadata"] == {"team": "x"}
    info = answers["INFO"][0]
    assert info["description"] == "echoes"
    assert info["endpoints"] == [
        {"name": "echo", "subject": f"{svc}.echo", "queue_group": "q", "metadata": None},
        {"name": "other", "subject": f"{svc}.other", "queue_group": "q", "metadata": None},
    ]
    echo, other = answers["STATS"][2]["endpoints"]
    assert (echo["num_requests"], echo["num_errors"]) == (4, 1)
    assert echo["last_error"] == "500:ValueError: it failed"
    assert echo["processing_time"] > 0
    assert (other["num_requests"], other["processing_time"], other["last_error"]) == (0, 0, "")


async def test_every_instance_answers_ping_with_an_id_of_its_own(url: str, svc: str) -> None:
    """$SRV.PING.<name> is answered by all 3 instances (no queue group), with distinct ids."""
    async with (
        serving(url, 3, convention=nats(svc), routing_keys=[f"{svc}.echo"]) as servers,
        wire(url) as raw,
    ):
        with anyio.fail_after(5):
            got = await raw.gather(f"$SRV.PING.{svc}", lambda got: len(got) == 3)
    ids = {json.loads(d.body)["id"] for d in got}
    assert ids == {s.convention.service_id for s in servers}
    assert len(ids) == 3


async def test_a_loom_server_is_a_nats_service_with_its_subjects_as_endpoints(
    url: str, svc: str
) -> None:
    """A loom server answers INFO/STATS as service <svc>: its instance and 'any' subjects."""
    async with (
        serving(
            url,
            1,
            codec=JSON,
            convention=loom(svc, instance_id="inst1"),
            routing_keys=["task.assign"],
        ) as (server,),
        RPCClient.start(url, codec=JSON, convention=loom(svc)) as client,
        wire(url) as raw,
    ):
        with anyio.fail_after(10):
            await wait_until(lambda: client.connected)
            await client.request(1, "inst1.task.assign")
            await client.request(2, "any.task.assign")
            await client.request(3, "any.task.assign")
            ping = await raw.ask(f"$SRV.PING.{svc}")
            info = await raw.ask(f"$SRV.INFO.{svc}")
            stats = await raw.ask(f"$SRV.STATS.{svc}.{server.convention.service_id}")
    for verb, doc in (("PING", ping), ("INFO", info), ("STATS", stats)):
        check(verb, doc)
        assert doc["name"] == svc
        assert doc["metadata"] == {"instance_id": "inst1"}
    assert [(e["name"], e["subject"], e["queue_group"]) for e in info["endpoints"]] == [
        ("task.assign", f"loom.rpc.{svc}.inst1.task.assign", ""),
        ("task.assign", f"loom.rpc.{svc}.any.task.assign", svc),
    ]
    assert [e["num_requests"] for e in stats["endpoints"]] == [1, 2]


# -- stopping ----------------------------------------------------------------------


@pytest.mark.parametrize(("drains", "outcome"), [(True, "ok"), (False, "RequestTimeout")])
async def test_stopping_answers_the_held_requests_after_unsubscribing(
    url: str, svc: str, drains: bool, outcome: str
) -> None:
    """Held requests are answered while a server drains; one that just closes lets them time out."""
    subject = f"{svc}.held"
    convention = nats(svc) if drains else JustCloses(nats(svc))
    outcomes: Counter[str] = Counter()
    async with calling(url, timeout=2.0) as client, anyio.create_task_group() as tg:

        async def call(i: int) -> None:
            try:
                await client.request(b"%d" % i, subject)
                outcomes["ok"] += 1
            except Exception as exc:
                outcomes[type(exc).__name__] += 1

        async def release_once_unsubscribed(server: Held) -> None:
            # Unroutable proves the subscription is gone; the held requests then still
            # get answers on a draining server.
            while True:
                try:
                    await client.request(b"probe", subject, timeout=0.5)
                except Unroutable:
                    break
                except RequestTimeout:
                    pass  # a probe a closing server dropped
                await anyio.sleep(0.005)
            for caller in server._state:
                server.reply(caller, b"late")

        with anyio.fail_after(20):
            async with serving(url, 1, Held, convention=convention, routing_keys=[subject]) as (
                server,
            ):
                for i in range(10):
                    tg.start_soon(call, i)
                await wait_until(lambda: server.pending == 10)
                tg.start_soon(release_once_unsubscribed, server)
    assert outcomes == {outcome: 10}


async def test_a_stop_that_interrupts_a_handler_answers_503_at_once(url: str, svc: str) -> None:
    """A request whose handler the stop cancels gets a 503 error reply, not a timeout."""
    async with calling(url) as client, anyio.create_task_group() as tg:
        failed: list[RemoteError] = []

        async def call() -> None:
            with pytest.raises(RemoteError) as info:
                await client.request(b"slow", f"{svc}.x", timeout=60)
            failed.append(info.value)

        with anyio.fail_after(10):
            async with serving(url, 1, convention=nats(svc), routing_keys=[f"{svc}.x"]) as (s,):
                tg.start_soon(call)
                await wait_until(lambda: s.pending == 1)
            await wait_until(lambda: bool(failed))
    assert failed[0].type == "503"


async def stop_six_times_under_load(url: str, svc: str, convention: Convention) -> Counter[str]:
    """16 callers call while a server is started and stopped 6 times; their outcomes."""
    subject = f"{svc}.x"
    outcomes: Counter[str] = Counter()
    done = anyio.Event()
    async with calling(url, timeout=1.5) as client:

        async def caller() -> None:
            while not done.is_set():
                try:
                    await client.request(b"x", subject)
                    outcomes["ok"] += 1
                except Unroutable:
                    outcomes["unroutable"] += 1
                    await anyio.sleep(0.002)  # nobody serves: do not spin
                except RequestTimeout:
                    outcomes["timeout"] += 1
                except RemoteError as exc:
                    outcomes[f"error {exc.type}"] += 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(caller)
                for _ in range(6):
                    async with serving(url, 1, convention=convention, routing_keys=[subject]):
                        await wait_until(
                            partial(lambda n: outcomes["ok"] >= n, outcomes["ok"] + 200)
                        )
                done.set()  # the callers finish their calls in flight, each within its timeout
    return outcomes


async def test_six_stops_under_load_leave_no_call_to_time_out(url: str, svc: str) -> None:
    """Six stops under 16 callers: every call is answered or fails fast as Unroutable."""
    outcomes = await stop_six_times_under_load(url, svc, nats(svc))
    assert outcomes["timeout"] == 0, outcomes
    assert outcomes["ok"] >= 1200 and outcomes["unroutable"] > 0


async def test_six_stops_of_a_server_that_just_closes_leave_calls_to_time_out(
    url: str, svc: str
) -> None:
    """The same load against a server that closes without draining loses calls to timeouts."""
    outcomes = await stop_six_times_under_load(url, svc, JustCloses(nats(svc)))
    assert outcomes["timeout"] > 0, outcomes


# -- configuration -----------------------------------------------------------------


def test_bad_nats_configurations_are_config_errors() -> None:
    """Bad names, versions, metadata, queue groups and subjects are refused when built."""
    options = ServerOptions(None, "", "direct", ("svc.echo",), False, False)
    for bad in (
        lambda: nats("a.b"),
        lambda: nats("a b"),
        lambda: nats("svc", version="1.0"),
        lambda: nats("svc", metadata={"a": 1}),  # type: ignore[dict-item]
        lambda: nats("svc", queue_group="a b"),
        lambda: nats().server(options),
        lambda: nats("svc").client("rpc", "direct", False),
        lambda: nats("svc").server(ServerOptions("q", "", "direct", ("svc.x",), False, False)),
        lambda: nats("svc").server(ServerOptions(None, "", "direct", None, False, False)),
        lambda: nats("svc").server(ServerOptions(None, "ex", "direct", ("svc.x",), False, False)),
        lambda: nats("svc").server(ServerOptions(None, "", "direct", ("a b",), False, False)),
    ):
        with pytest.raises(ConfigError):
            bad()
    server = nats("svc", queue_group="").server(options)
    assert isinstance(server, NatsServiceServer)
    assert server.endpoints[0].queue_group == ""


async def test_nats_on_an_amqp_connection_is_a_config_error(nats_kind: NatsKind) -> None:
    """The nats convention on an AMQP 0-9-1 URL fails at start, naming both protocols."""
    with SandboxBroker() as amqp:
        with pytest.raises(ConfigError, match=r"runs on nats.*speaks amqp-0-9-1"):
            async with RPCClient.start(amqp.url, convention=nats()):
                pass


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_service_api_keeps_its_id_and_counts_across_a_reconnect(
    anyio_backend: str,
) -> None:
    """After the broker drops every connection, $SRV.<V>.<name>.<id> answers again, counts kept."""
    svc = f"svc-{secrets.token_hex(4)}"
    with SandboxNatsBroker() as broker:
        async with (
            serving(broker.url, 1, convention=nats(svc), routing_keys=[f"{svc}.echo"]) as (s,),
            calling(broker.url) as client,
        ):
            with anyio.fail_after(10):
                await client.request(b"a", f"{svc}.echo")
                broker.kill_all_connections(by="network")
                while True:  # until the server has subscribed again
                    try:
                        assert await client.request(b"b", f"{svc}.echo") == b"b"
                        break
                    except (Unroutable, ConnectionLost):
                        await anyio.sleep(0.005)
                async with wire(broker.url) as raw:
                    stats = await raw.ask(f"$SRV.STATS.{svc}.{s.convention.service_id}")
    check("STATS", stats)
    assert stats["endpoints"][0]["num_requests"] == 2
