"""The contenders: for each, an echo server and a client, as their users would write them.

Every client is an async context manager with ``call(queue, payload)``; every
server is a coroutine that serves ``queue`` until cancelled and calls
``ready()`` once it consumes. The AMQP contenders (``CONTENDERS``) run on
asyncio (aio-pika and FastStream only run there), on the default event loop,
and all servers use the same prefetch. The NATS contenders
(``NATS_CONTENDERS``) run on the event loop each names (``loop``), on anyio.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Protocol

import aiormq
import structlog
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

if TYPE_CHECKING:
    import hare_py

__all__ = [
    "BASELINE",
    "CONTENDERS",
    "NATS_BASELINE",
    "NATS_CONTENDERS",
    "Client",
    "Contender",
    "quiet_logs",
]

PREFETCH = 128  # the same for every server; the echo handlers never block
TIMEOUT = 120.0  # per call; long enough that the 10,000 held requests never time out

Ready = Callable[[], None]


def quiet_logs() -> None:
    """What a production user does: hare_py's per-request debug events filtered out
    (warnings and errors still go to stderr; stdout is the worker's protocol)."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    logging.basicConfig(level=logging.WARNING)


class Client(Protocol):
    async def call(self, queue: str, payload: Any) -> Any: ...


class Contender(Protocol):
    name: str
    label: str
    queue: str
    #: False when the library cannot have more than one request in flight.
    concurrent: bool
    #: (optional, default True) False when its calls do not pass the run's broker.

    def payload(self, size: int) -> Any: ...
    def echoed(self, payload: Any) -> Any: ...  # what raw_echo's reply decodes to
    def client(self, url: str) -> Any: ...  # an async context manager yielding a Client
    async def serve(self, url: str, queue: str, ready: Ready) -> None: ...


# --- raw aiormq: the baseline ---------------------------------------------------------


class RawClient:
    """The thinnest client: one reply queue, a dict of futures, counter correlation ids."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.futures: dict[str, asyncio.Future[bytes]] = {}
        self.ids = itertools.count()
        self.reply_to = ""

    async def __aenter__(self) -> RawClient:
        self.connection = await aiormq.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=False)
        declared = await self.channel.queue_declare("", exclusive=True, auto_delete=True)
        self.reply_to = declared.queue or ""
        await self.channel.basic_consume(self.reply_to, self._on_reply, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    async def _on_reply(self, message: DeliveredMessage) -> None:
        future = self.futures.pop(message.header.properties.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    async def call(self, queue: str, payload: Any) -> Any:
        cid = str(next(self.ids))
        future = asyncio.get_running_loop().create_future()
        self.futures[cid] = future
        try:
            await self.channel.basic_publish(
                payload,
                routing_key=queue,
                properties=Basic.Properties(correlation_id=cid, reply_to=self.reply_to),
            )
            return await future
        finally:
            self.futures.pop(cid, None)


async def raw_echo(
    channel: aiormq.abc.AbstractChannel, queue: str, *, ack: bool
) -> Basic.ConsumeOk:
    """Consume ``queue`` and answer every message with its own body (also the release
    consumer of the in-flight test, which is why it copies ``content_type``/``type``)."""

    async def on_message(message: DeliveredMessage) -> None:
        props = message.header.properties
        await channel.basic_publish(
            message.body,
            routing_key=props.reply_to or "",
            properties=Basic.Properties(
                correlation_id=props.correlation_id,
                content_type=props.content_type,
                message_type="result",  # what aio-pika's patterns.RPC expects of a reply
            ),
        )
        if ack and message.delivery_tag is not None:
            await channel.basic_ack(message.delivery_tag)

    return await channel.basic_consume(queue, on_message, no_ack=not ack)


class Raw:
    name, label, queue, concurrent = "aiormq", "raw aiormq", "bench.aiormq", True

    def payload(self, size: int) -> Any:
        return b"x" * size

    def echoed(self, payload: Any) -> Any:
        return payload

    def client(self, url: str) -> Any:
        return RawClient(url)

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        connection = await aiormq.connect(url)
        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.basic_qos(prefetch_count=PREFETCH)
            await channel.queue_declare(queue, auto_delete=True)
            await raw_echo(channel, queue, ack=True)
            ready()
            await asyncio.Event().wait()
        finally:
            await connection.close()


# --- hare_py ----------------------------------------------------------------------------


class HareClient:
    """An ``RPCClient`` started with ``start`` (its convention, codec), on any loop;
    ``call`` takes the routing key."""

    def __init__(self, url: str, **start: Any) -> None:
        self.url, self.start = url, start
        self.stack = AsyncExitStack()

    async def __aenter__(self) -> HareClient:
        import anyio

        import hare_py  # imported only where used: the peak RSS is each library's own

        runner: Any = hare_py.RPCClient.start(
            self.url, timeout=TIMEOUT, max_in_flight=20_000, **self.start
        )
        self.rpc: hare_py.RPCClient[Any] = await self.stack.enter_async_context(runner)
        while not self.rpc.connected:
            await anyio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    def call(self, queue: str, payload: Any) -> Awaitable[Any]:
        return self.rpc.request(payload, routing_key=queue)


async def serve_echo(url: str, ready: Ready, **start: Any) -> None:
    """An ``RPCServer`` started with ``start`` that answers each request with its payload;
    ``ready()`` once it is connected, then it serves until cancelled (on any loop)."""
    import anyio

    import hare_py

    class Echo(hare_py.RPCServer[None]):
        async def handle_request(
            self, request: hare_py.Request, caller: hare_py.Caller, state: None
        ) -> Any:
            return hare_py.Reply(request.payload, state)

    async with Echo.start(url, **start) as server:
        while not server.connected:
            await anyio.sleep(0.01)
        ready()
        await anyio.sleep_forever()


class Hare(Raw):
    """hare_py on the aiormq backend (``?backend=aiormq``), client and server."""

    name, label, queue, concurrent = "hare", "hare_py aiormq backend", "bench.hare", True

    def client(self, url: str) -> Any:
        return HareClient(_backend(url, "aiormq"), convention=None)

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        await self._serve(_backend(url, "aiormq"), queue, ready)

    async def _serve(self, url: str, queue: str, ready: Ready) -> None:
        await serve_echo(url, ready, queue=queue, prefetch=PREFETCH, auto_delete=True)


class HareDirect(Hare):
    """The same server; the client uses RabbitMQ's direct reply-to pseudo-queue."""

    name, label, queue = "hare_drt", "hare_py direct_reply_to", "bench.hare_drt"

    def client(self, url: str) -> Any:
        from hare_py.conventions import direct_reply_to

        return HareClient(_backend(url, "aiormq"), convention=direct_reply_to())


class HareAnyio(Hare):
    """hare_py on its anyio-native AMQP backend (``?backend=anyio``), client and server."""

    name, label, queue = "hare_anyio", "hare_py anyio backend", "bench.hare_anyio"

    def client(self, url: str) -> Any:
        return HareClient(_backend(url, "anyio"), convention=None)

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        await self._serve(_backend(url, "anyio"), queue, ready)


class HareAnyioTraced(HareAnyio):
    """The same client and server with tracing and metrics on: OpenTelemetry's SDK, spans
    batched to an exporter that drops them (what an application's OTLP exporter costs on
    top is its own), metrics aggregated for a reader."""

    name, label, queue = "hare_anyio_traced", "hare_py anyio backend, traced", "bench.traced"

    def client(self, url: str) -> Any:
        return HareClient(_backend(url, "anyio"), convention=None, telemetry=_telemetry())

    async def _serve(self, url: str, queue: str, ready: Ready) -> None:
        await serve_echo(
            url, ready, queue=queue, prefetch=PREFETCH, auto_delete=True, telemetry=_telemetry()
        )


def _telemetry() -> Any:
    """SDK tracer and meter providers, as an application would set them up."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    import hare_py

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Dropped()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return hare_py.Telemetry(tracer_provider, meter_provider)


class HareAmqp10(Hare):
    """hare_py over AMQP 1.0 through the same RabbitMQ node (its rabbitmq_amqp1_0 plugin,
    same port): the ``amqp10("/queue/")`` convention, a fixed reply queue per client (RabbitMQ
    3.x has no dynamic nodes). Not in the in-flight test, whose holder answers in 0-9-1."""

    name, label, queue = "hare_amqp10", "hare_py AMQP 1.0 via RabbitMQ", "bench.hare_amqp10"
    holds = False

    def client(self, url: str) -> Any:
        from hare_py.conventions import amqp10

        return HareClient(_query(url, "protocol=1.0"), convention=amqp10("/queue/"))

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        from hare_py.conventions import amqp10

        await serve_echo(
            _query(url, "protocol=1.0"), ready, queue=queue, prefetch=PREFETCH,
            convention=amqp10("/queue/"),
        )  # fmt: skip


class HareAmqp10P2P(HareAmqp10):
    """hare_py over AMQP 1.0 peer to peer: the echo server listens (``listen=1``) on
    ``HARE_BENCH_P2P_PORT`` (a free port the run picks) and clients dial it; no broker."""

    name, label, queue = "hare_amqp10_p2p", "hare_py AMQP 1.0 peer to peer", "bench.p2p"
    brokered = False  # the run's broker is idle meanwhile: no broker CPU per call

    def client(self, url: str) -> Any:
        from hare_py.conventions import amqp10

        return HareClient(_p2p_url(), convention=amqp10())

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        from hare_py.conventions import amqp10

        await serve_echo(
            f"{_p2p_url()}&listen=1", ready, queue=queue, prefetch=PREFETCH, convention=amqp10()
        )


class ProtonReactor(HareAmqp10):
    """A client on python-qpid-proton's own reactor API (``bench/proton_client.py``),
    calling the same hare_py AMQP 1.0 echo server through RabbitMQ: what hare_py's AMQP
    1.0 client is measured against. Its load job runs proton's reactor, not asyncio."""

    name, label, queue = "proton", "proton reactor client via RabbitMQ", "bench.proton"

    def client(self, url: str) -> Any:
        raise NotImplementedError("the proton client runs its own reactor: see run_load")

    def run_load(self, job: dict[str, Any], callers: Any, payload: bytes) -> None:
        from . import proton_client

        proton_client.load(job, callers, payload)


def _p2p_url() -> str:
    return f"amqp://127.0.0.1:{os.environ['HARE_BENCH_P2P_PORT']}/?protocol=1.0"


def _query(url: str, param: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{param}"


def _backend(url: str, backend: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}backend={backend}"


# --- aio-pika patterns.RPC --------------------------------------------------------------


async def _echo_kw(*, payload: Any) -> Any:
    return payload


class AioPikaClient:
    """``patterns.JsonRPC``: JSON, not the default pickle; the payload is a str kwarg."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> AioPikaClient:
        import aio_pika
        from aio_pika.patterns import JsonRPC

        self.connection = await aio_pika.connect(self.url)
        self.rpc = await JsonRPC.create(await self.connection.channel())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    def call(self, queue: str, payload: Any) -> Awaitable[Any]:
        return self.rpc.call(queue, kwargs={"payload": payload})


class AioPika:
    name, label, queue, concurrent = "aiopika", "aio-pika patterns.RPC", "bench.aiopika", True

    def payload(self, size: int) -> Any:
        return "x" * size  # JSON has no bytes; ASCII keeps the body the same size

    def echoed(self, payload: Any) -> Any:
        return {"payload": payload}  # raw_echo returns the call's kwargs

    def client(self, url: str) -> Any:
        return AioPikaClient(url)

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        import aio_pika
        from aio_pika.patterns import JsonRPC

        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            rpc = await JsonRPC.create(channel)
            await rpc.register(queue, _echo_kw, auto_delete=True)
            ready()
            await asyncio.Event().wait()
        finally:
            await connection.close()


# --- FastStream -------------------------------------------------------------------------


class FastStreamClient:
    def __init__(self, url: str) -> None:
        from faststream.rabbit import RabbitBroker

        self.broker = RabbitBroker(url, logger=None)

    async def __aenter__(self) -> FastStreamClient:
        await self.broker.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.stop()

    async def call(self, queue: str, payload: Any) -> Any:
        response = await self.broker.request(payload, queue, timeout=TIMEOUT)
        return response.body


class FastStream(Raw):
    name, label, queue = "faststream", "FastStream request/reply", "bench.faststream"
    # RabbitBroker.request holds a per-broker lock from publish to reply (it
    # consumes the direct reply-to pseudo-queue anew for each request).
    concurrent = False

    def client(self, url: str) -> Any:
        return FastStreamClient(url)

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

        broker = RabbitBroker(url, logger=None, graceful_timeout=None)

        @broker.subscriber(
            RabbitQueue(queue, auto_delete=True), channel=Channel(prefetch_count=PREFETCH)
        )
        async def echo(body: bytes) -> bytes:
            return body

        await broker.start()
        try:
            ready()
            await asyncio.Event().wait()
        finally:
            await broker.stop()


BASELINE = "aiormq"
CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Raw(),
        Hare(),
        HareAnyio(),
        HareAnyioTraced(),
        HareDirect(),
        HareAmqp10(),
        HareAmqp10P2P(),
        ProtonReactor(),
        AioPika(),
        FastStream(),
    )
}


# --- NATS: nats-py request/respond, the baseline, and hare_py on the loom convention ----
#
# These run on one nats-server (bench/nats.py starts it). Each has ``loop``, the event
# loop its client and server run on, and, for the in-flight test, ``hold_subject``
# (where a holder that answers nothing until told to collects the requests) and
# ``hold_target``, what its client calls to reach it), and ``hold_reply`` (the
# holder's answer to one request, in the contender's envelope).

SERVICE = "bench"  # the loom service type


class NatsPyClient:
    """``nc.request()``: nats-py's muxed inbox, one future per request."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> NatsPyClient:
        import nats

        self.nc = await nats.connect(self.url, max_reconnect_attempts=0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def call(self, subject: str, payload: Any) -> Any:
        return (await self.nc.request(subject, payload, timeout=TIMEOUT)).data


class NatsPy:
    name, label, queue, concurrent = "natspy", "nats-py request()", "bench.natspy", True
    loop = "asyncio"
    hold_subject = hold_target = "bench.hold.natspy"

    def payload(self, size: int) -> Any:
        return b"x" * size

    def echoed(self, payload: Any) -> Any:
        return payload

    def hold_reply(self, request: bytes) -> bytes:
        return request

    def client(self, url: str) -> Any:
        return NatsPyClient(url)

    def answer(self, data: bytes) -> bytes:
        """The reply to a request's bytes: the bytes themselves."""
        return data

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        """A nats-py responder: ``msg.respond(self.answer(msg.data))``."""
        import nats

        nc = await nats.connect(url, max_reconnect_attempts=0)
        try:
            answer = self.answer

            async def respond(msg: Any) -> None:
                await msg.respond(answer(msg.data))

            await nc.subscribe(queue, cb=respond)
            await nc.flush()
            ready()
            await asyncio.Event().wait()
        finally:
            await nc.close()


class NatsPyLoomClient(NatsPyClient):
    """``nc.request()`` in Loom's envelopes, as a nats-py user would write a Loom caller
    (an empty ``trace_id``, as Loom's own Go caller sends)."""

    async def call(self, subject: str, payload: Any) -> Any:
        method = subject.split(".", 4)[4]  # loom.rpc.{svc}.{instance}.{method}
        envelope = {"method": method, "caller_id": "natspy", "payload": payload, "trace_id": ""}
        sent = json.dumps(envelope, separators=(",", ":")).encode()
        reply = json.loads((await self.nc.request(subject, sent, timeout=TIMEOUT)).data)
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply["payload"]


class NatsPyLoom(NatsPy):
    """nats-py speaking Loom's envelopes both ways: the like-for-like baseline of
    hare_py's loom convention (the plain ``natspy`` echo does no JSON at all)."""

    name, label = "natspy_loom", "nats-py request(), Loom envelopes"
    queue = f"loom.rpc.{SERVICE}.natspy.echo"
    hold_subject = hold_target = f"loom.rpc.{SERVICE}.hold-natspy_loom.echo"

    def payload(self, size: int) -> Any:
        return "x" * (size - 2)  # a JSON string of ``size`` bytes, as HareNats sends

    def hold_reply(self, request: bytes) -> bytes:
        return HareNats.hold_reply(HareNats(), request)

    def client(self, url: str) -> Any:
        return NatsPyLoomClient(url)

    def answer(self, data: bytes) -> bytes:
        """A Loom reply: the request envelope parsed, its payload echoed."""
        request = json.loads(data)
        reply = {"ok": True, "payload": request["payload"], "error": ""}
        return json.dumps(reply, separators=(",", ":")).encode()


class HareNats:
    """hare_py's NATS transport: an ``RPCServer`` on the loom convention echoes."""

    name, label, queue, concurrent = "hare_nats", "hare_py on NATS, asyncio", "b1.echo", True
    loop = "asyncio"

    @functools.cached_property  # read per call: a property would build it each time
    def hold_target(self) -> str:
        return f"hold-{self.name}.echo"  # the loom routing key: instance and method

    @functools.cached_property
    def hold_subject(self) -> str:
        return f"loom.rpc.{SERVICE}.{self.hold_target}"

    def payload(self, size: int) -> Any:
        return "x" * (size - 2)  # a JSON string of ``size`` bytes

    def echoed(self, payload: Any) -> Any:
        return payload

    def hold_reply(self, request: bytes) -> bytes:
        payload = json.loads(request)["payload"]
        return json.dumps({"ok": True, "payload": payload, "error": ""}).encode()

    def client(self, url: str) -> Any:
        import hare_py
        from hare_py.conventions import loom

        return HareClient(url, codec=hare_py.JSON, convention=loom(SERVICE))

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        import hare_py
        from hare_py.conventions import loom

        await serve_echo(
            url,
            ready,
            codec=hare_py.JSON,
            # Each loom contender's server is its own instance: two servers of one
            # instance would both answer every request.
            convention=loom(SERVICE, instance_id=queue.partition(".")[0]),
            routing_keys=[queue.partition(".")[2]],
            prefetch=PREFETCH,
        )


class HareNatsTrio(HareNats):
    """The same client and server, on trio."""

    name, label, queue = "hare_nats_trio", "hare_py on NATS, trio", "b2.echo"
    loop = "trio"


class HareNatsPlain(NatsPy):
    """hare_py on NATS without Loom's envelopes: what the envelopes cost, apart."""

    name, label = "hare_nats_plain", "hare_py on NATS, nats() convention, asyncio"
    queue = "bench.plain"
    hold_subject = hold_target = "bench.hold.hare_nats_plain"

    def client(self, url: str) -> Any:
        from hare_py.conventions import nats

        return HareClient(url, convention=nats())

    async def serve(self, url: str, queue: str, ready: Ready) -> None:
        from hare_py.conventions import nats

        await serve_echo(url, ready, convention=nats(SERVICE), queue=queue, prefetch=PREFETCH)


class HareNatsPlainTrio(HareNatsPlain):
    """The same, on trio."""

    name, label = "hare_nats_plain_trio", "hare_py on NATS, nats() convention, trio"
    queue = "bench.plain_trio"
    hold_subject = hold_target = "bench.hold.hare_nats_plain_trio"
    loop = "trio"


NATS_BASELINE = "natspy"
NATS_CONTENDERS: dict[str, Any] = {
    c.name: c
    for c in (
        NatsPy(),
        NatsPyLoom(),
        HareNats(),
        HareNatsTrio(),
        HareNatsPlain(),
        HareNatsPlainTrio(),
    )
}
