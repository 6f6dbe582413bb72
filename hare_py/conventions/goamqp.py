"""The goamqp convention: wire-compatible with sparetimecoders/goamqp request/response.

For a service ``svc`` called by a service ``caller`` (goamqp's names, from its
naming.go; every exchange and queue durable, every queue with ``x-expires`` of
five days, as goamqp declares them)::

    <svc>.direct.exchange.request                    direct exchange: requests
    <svc>.direct.exchange.request.queue              the server's queue, bound with each key
    <svc>.headers.exchange.response                  headers exchange: responses
    <svc>.headers.exchange.response.queue.<caller>   the caller's queue, bound with the routing
                                                     key and the arguments {"service": caller}

Messages are JSON (``content_type: application/json``, ``delivery_mode: 2``)
with the header ``service``: on a request, the caller's name; on a response,
the name of the caller it is for (the headers binding delivers it to that
caller's queue). A response goes to the response exchange with the request's
routing key. goamqp binds without ``x-match``, so RabbitMQ's default (``all``)
applies; so do we.

goamqp uses neither ``reply_to`` nor ``correlation_id``. hare_py clients put a
``correlation_id`` (and the same value as ``message_id``, the request id a
hare_py server dedupes on) on their requests anyway, which goamqp ignores, and
hare_py servers copy the ``correlation_id`` into the response. A response
without one (from a goamqp server) is matched by its routing key, so a client
keeps one request per routing key out at a time: the others wait in line
within their deadlines. A key whose request timed out stays taken until that
request's late response arrives (and is dropped) or ``late_reply_grace`` past
its deadline, when its broker TTL has ended. goamqp v0.3.1 answers out of order
as soon as a handler fails (it requeues the failed request and answers the
next), so the FIFO guess of ``pipelined=True`` can hand a caller another
caller's answer (see docs/conventions.md).

Errors: goamqp sends no error responses (a failing handler's request is
nacked and requeued). A hare_py server answers a failing handler with an error
response (the hare ``x-error-type``/``x-error-message`` headers; the client
raises ``RemoteError``) when the caller is hare_py, recognised by its
``correlation_id``; a goamqp caller gets no response (the request is acked,
not requeued forever) and waits as it would for a goamqp server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError
from ..transport.base import Channel, Delivery, OnCancel, OnDelivery, Properties
from .base import (
    ClientConvention,
    Convention,
    Incoming,
    IncomingReply,
    Outgoing,
    ServerConvention,
    ServerOptions,
)
from .hare import error_headers, error_of

__all__ = [
    "CONTENT_TYPE",
    "QUEUE_EXPIRES_MS",
    "SERVICE_HEADER",
    "GoamqpClient",
    "GoamqpServer",
    "goamqp",
    "request_exchange",
    "request_queue",
    "response_exchange",
    "response_queue",
]

SERVICE_HEADER = "service"
CONTENT_TYPE = "application/json"
#: goamqp's ``deleteQueueAfter``: 5 days, as the queues' ``x-expires`` (ms).
QUEUE_EXPIRES_MS = 5 * 24 * 3600 * 1000
_QUEUE_ARGUMENTS = {"x-expires": QUEUE_EXPIRES_MS}
_PERSISTENT = 2


def request_exchange(service: str) -> str:
    """``<service>.direct.exchange.request``: where callers send requests."""
    return f"{service}.direct.exchange.request"


def request_queue(service: str) -> str:
    """``<service>.direct.exchange.request.queue``: what the service's servers consume."""
    return f"{request_exchange(service)}.queue"


def response_exchange(service: str) -> str:
    """``<service>.headers.exchange.response``: where the service publishes responses."""
    return f"{service}.headers.exchange.response"


def response_queue(service: str, caller: str) -> str:
    """``<service>.headers.exchange.response.queue.<caller>``: the caller's responses."""
    return f"{response_exchange(service)}.queue.{caller}"


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"goamqp needs a non-empty {what} name, got {value!r}")
    return value


def _keys(routing_keys: Iterable[str] | None) -> tuple[str, ...]:
    if routing_keys is None:
        return ()
    if isinstance(routing_keys, str):  # a lone key is not an iterable of keys
        raise ConfigError(f"routing_keys must be a sequence of keys, got {routing_keys!r}")
    keys = tuple(routing_keys)
    for key in keys:
        if not isinstance(key, str):
            raise ConfigError(f"routing keys must be strings, got {key!r}")
    return keys


async def _declare(channel: Channel, exchange: str, kind: str, queue: str) -> None:
    """An exchange and a queue as goamqp declares them (durable; x-expires on the queue)."""
    await channel.exchange_declare(exchange, kind, durable=True)  # type: ignore[arg-type]
    await channel.queue_declare(queue, durable=True, arguments=_QUEUE_ARGUMENTS)


def _check_pipelined(pipelined: object) -> bool:
    if not isinstance(pipelined, bool):
        raise ConfigError(f"pipelined must be True or False, got {pipelined!r}")
    return pipelined


def _check_grace(grace: object) -> float | None:
    if grace is None:
        return None
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
        raise ConfigError(f"late_reply_grace must be None or seconds >= 0, got {grace!r}")
    return float(grace)


class GoamqpClient(ClientConvention[Channel]):
    """Calls ``service`` as ``caller``; see the module docstring and ``goamqp()``."""

    # The response queue is durable and named: replies survive a channel loss.
    lasting = True
    correlates_by_routing_key = True

    def __init__(
        self,
        service: str,
        caller: str,
        routing_keys: Iterable[str] = (),
        *,
        pipelined: bool = False,
        late_reply_grace: float | None = None,
    ) -> None:
        self.service = _check_name("service", service)
        self.caller = _check_name("caller", caller)
        self.routing_keys = _keys(routing_keys)
        self.exchange = request_exchange(service)
        self.queue = response_queue(service, caller)
        self.pipelined = _check_pipelined(pipelined)
        self.serial_per_routing_key = not pipelined
        self.late_reply_grace = _check_grace(late_reply_grace)

    def __repr__(self) -> str:
        return f"<goamqp convention service={self.service!r} caller={self.caller!r}>"

    async def setup(self, channel: Channel, on_reply: OnDelivery, on_cancel: OnCancel) -> str:
        await channel.exchange_declare(self.exchange, "direct", durable=True)
        await _declare(channel, response_exchange(self.service), "headers", self.queue)
        # A headers exchange ignores routing keys: one binding matches every response
        # for this caller. goamqp binds once per routing key; so do we when told them.
        arguments = {SERVICE_HEADER: self.caller}
        for key in self.routing_keys or ("",):
            await channel.queue_bind(self.queue, response_exchange(self.service), key, arguments)
        await channel.basic_consume(self.queue, on_reply, no_ack=True, on_cancel=on_cancel)
        return self.queue

    def wrap(
        self, routing_key: str, body: bytes, content_type: str | None, headers: Mapping[str, Any],
        correlation_id: str, expiration: str | None, reply_queue: str,
    ) -> Outgoing:  # fmt: skip
        return Outgoing(
            self.exchange,
            routing_key,
            body,
            Properties(
                content_type=content_type or CONTENT_TYPE,
                delivery_mode=_PERSISTENT,
                headers={**headers, SERVICE_HEADER: self.caller},  # goamqp reserves the key
                correlation_id=correlation_id,
                message_id=correlation_id,  # the request id: a republish is not handled twice
                expiration=expiration,
            ),
        )

    def unwrap(self, delivery: Delivery) -> IncomingReply:
        props = delivery.properties
        headers = props.headers or {}
        return IncomingReply(
            props.correlation_id or None,
            delivery.body,
            props.content_type,
            headers,
            error_of(headers),
            delivery.routing_key,
        )


class GoamqpServer(ServerConvention[Channel]):
    """Serves ``service`` on ``routing_keys``; see the module docstring."""

    def __init__(self, service: str, routing_keys: Iterable[str]) -> None:
        self.service = _check_name("service", service)
        self.routing_keys = _keys(routing_keys)
        if not self.routing_keys:
            raise ConfigError(
                "a goamqp server needs routing keys to bind: "
                "RPCServer.start(routing_keys=[...]) or goamqp(service, routing_keys=[...])"
            )
        self.exchange = request_exchange(service)
        self.queue = request_queue(service)

    def __repr__(self) -> str:
        return f"<goamqp convention service={self.service!r} routing_keys={self.routing_keys!r}>"

    async def setup(self, channel: Channel, on_request: OnDelivery, on_cancel: OnCancel) -> None:
        await channel.exchange_declare(response_exchange(self.service), "headers", durable=True)
        await _declare(channel, self.exchange, "direct", self.queue)
        for key in self.routing_keys:
            await channel.queue_bind(self.queue, self.exchange, key)
        await channel.basic_consume(self.queue, on_request, on_cancel=on_cancel)

    def unwrap(self, delivery: Delivery) -> Incoming:
        props = delivery.properties
        headers = dict(props.headers or {})
        caller = headers.get(SERVICE_HEADER)
        if isinstance(caller, bytes | bytearray):
            caller = bytes(caller).decode(errors="replace")
        return Incoming(
            delivery.body,
            props.content_type,
            delivery.routing_key,
            headers,
            props.correlation_id or None,
            caller if isinstance(caller, str) and caller else None,
            props.message_id or None,
        )

    def wrap(
        self, incoming: Incoming, body: bytes, content_type: str | None, error: BaseException | None
    ) -> Outgoing | None:
        if not incoming.reply:
            return None  # no service header: goamqp could not answer either
        headers: dict[str, Any] = {SERVICE_HEADER: incoming.reply}
        if error is not None:
            if incoming.correlation_id is None:
                return None  # a goamqp caller: its protocol has no error responses
            headers.update(error_headers(error))
            body = str(error).encode()
        return Outgoing(
            response_exchange(self.service),
            incoming.routing_key,
            body,
            Properties(
                content_type=CONTENT_TYPE if error is None else None,
                delivery_mode=_PERSISTENT,
                headers=headers,
                correlation_id=incoming.correlation_id,
            ),
        )


class _Goamqp(Convention):
    name = "goamqp"

    def __init__(
        self,
        service: str,
        caller: str | None,
        routing_keys: tuple[str, ...],
        pipelined: bool,
        late_reply_grace: float | None,
    ) -> None:
        self.service = _check_name("service", service)
        if caller is not None:
            _check_name("caller", caller)
        self.caller = caller
        self.routing_keys = routing_keys
        self.pipelined = _check_pipelined(pipelined)
        self.late_reply_grace = _check_grace(late_reply_grace)

    def __repr__(self) -> str:
        return f"<goamqp convention service={self.service!r} caller={self.caller!r}>"

    def client(self, exchange: str, exchange_type: str, durable: bool) -> GoamqpClient:
        if exchange:
            raise ConfigError(
                f"the goamqp convention names the exchange ({request_exchange(self.service)!r}); "
                f"do not pass exchange={exchange!r}"
            )
        if self.caller is None:
            raise ConfigError(
                "a goamqp client needs its own service name: goamqp(service, caller='...')"
            )
        return GoamqpClient(
            self.service,
            self.caller,
            self.routing_keys,
            pipelined=self.pipelined,
            late_reply_grace=self.late_reply_grace,
        )

    def server(self, options: ServerOptions) -> GoamqpServer:
        queue = request_queue(self.service)
        if options.queue not in (None, queue):
            raise ConfigError(
                f"the goamqp convention names the queue ({queue!r}); do not pass "
                f"queue={options.queue!r}"
            )
        if options.exchange:
            raise ConfigError(
                f"the goamqp convention names the exchange ({request_exchange(self.service)!r}); "
                f"do not pass exchange={options.exchange!r}"
            )
        keys = options.routing_keys if options.routing_keys is not None else self.routing_keys
        return GoamqpServer(self.service, keys)


def goamqp(
    service: str,
    caller: str | None = None,
    *,
    routing_keys: Iterable[str] | None = None,
    pipelined: bool = False,
    late_reply_grace: float | None = None,
) -> Convention:
    """sparetimecoders/goamqp's request/response, for the service named ``service``.

    A client calls ``service`` as ``caller`` (its own service name, required:
    responses are addressed to it); ``client.request(payload, "routing.key")``.
    A server serves ``service`` on the routing keys given to
    ``RPCServer.start(routing_keys=...)`` (or here). ``routing_keys`` given
    here are also what a client binds its response queue with, one binding
    each as goamqp does (a headers exchange ignores them: without any, the
    client binds once with ``""``).

    goamqp's responses carry no correlation id, so a client sends one request
    per routing key at a time and queues the others (within their deadlines):
    a response on that key can only be that request's. When a request times
    out, its key stays taken until its late response arrives (it is dropped)
    or ``late_reply_grace`` seconds after its deadline (default: the client's
    ``timeout``; ``math.inf``: until the response comes). With
    ``request_ttl=False`` only the late response frees the key.

    ``pipelined=True`` sends every request at once and gives each response
    without a correlation id to the oldest request in flight on its key.
    **Risk:** a caller can then silently get another caller's answer. A
    goamqp server answers out of order as soon as a handler fails (it requeues
    the failed request and answers the next one), and a response that arrives
    after its caller's deadline goes to the next caller. Choose it only for
    servers that echo the correlation id (hare_py servers do: their responses
    are always matched exactly) or handlers that never fail and never outlast
    a deadline.

    Use the JSON codec (``codec=JSON``): goamqp speaks JSON.
    """
    return _Goamqp(service, caller, _keys(routing_keys), pipelined, late_reply_grace)
