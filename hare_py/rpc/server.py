"""RPCServer: the serving side, in the same callback style as RPCClient.

Every time a channel opens the server declares its exchange (unless it is the
default exchange), its queue and bindings, sets the prefetch (the concurrency
limit) and consumes with acks, then calls ``handle_connected``.

``handle_request(request, caller, state)`` returns ``Reply(value, state)``,
``NoReply(state)`` (answer later with ``server.reply(caller, value)``, e.g.
from a task doing the work) or ``Stop``. A request is acked only after its
reply is published, so a request whose server dies first is redelivered to
another instance. A handler that raises sends an error reply (the client
raises ``RemoteError``) and the server goes on; a request without
``reply_to`` is processed and not answered; a request the codec cannot decode
gets an error reply (``RemoteError("UndecodableRequest", ...)`` in a hare_py
client) and is rejected, not requeued (so a dead-letter exchange keeps it),
with a log line; one the convention cannot unwrap is rejected the same way,
unanswered.

Where the convention counts per endpoint (``Incoming.stats``), every answer
records the time from delivery to reply and whether it was an error. Where
the protocol redelivers nothing (a convention that ``drains``: NATS),
stopping drains: the session keeper hands the session over instead of
closing it, and before ``terminate`` the server unsubscribes, answers the
requests in hand (those delivered, and those held with ``NoReply`` as their
``reply`` comes) within ``shutdown_timeout``, flushes, then closes; a request
it cannot finish gets a ``ServerStopping`` error reply, so that its caller
fails at once instead of at its deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from functools import partial
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeAlias, TypedDict, Unpack

import anyio
from anyio.abc import TaskGroup
from typing_extensions import TypeVar  # TypeVar(default=...) before Python 3.13

from .._clock import now
from ..actor.actor import Actor, _StopSignal
from ..actor.backoff import Backoff
from ..actor.caller import Caller
from ..actor.connection import Connection
from ..actor.results import NOTHING, NoReply, Reply, Stop
from ..actor.runner import ActorRunner, ConnectionLike, supervised
from ..codecs import BYTES, Codec, JSONCodec
from ..conventions import (
    Convention,
    Incoming,
    LocalAnswer,
    NotForThisServer,
    ServerOptions,
    ServerStopping,
    UndecodableRequest,
    hare,
)
from ..conventions.base import UNDECODED
from ..errors import BrokerError, ConfigError, ConnectionLost
from ..transport.base import Delivery, ExchangeType, Message, OnCancel, Session
from .answers import Answer, AnswerCache
from .channel import (
    ChannelDown,
    ChannelUp,
    check_exchange,
    check_protocol,
    close_quietly,
    keep_channel,
)
from .drops import DropLog
from .messages import ConnectedMeta, Request
from .telemetry import TelemetryOption, server_instrumentation

if TYPE_CHECKING:
    from ._otel import HandlingTrace

__all__ = ["RPCServer", "ServerStopping", "UndecodableRequest"]

# A bare RPCServer (no state type given) has Any: its default init
# returns the start() arg as the state.
S = TypeVar("S", default=Any)


def check_queue_type(queue_type: object, delivery_limit: object, auto_delete: bool) -> str:
    """``queue_type`` checked with what RabbitMQ refuses of it, before anything is declared."""
    if queue_type not in ("classic", "quorum"):
        raise ConfigError(f"queue_type must be 'classic' or 'quorum', got {queue_type!r}")
    if delivery_limit is not None:
        if queue_type != "quorum":
            raise ConfigError("delivery_limit needs queue_type='quorum' (x-delivery-limit)")
        if isinstance(delivery_limit, bool) or not isinstance(delivery_limit, int):
            raise ConfigError(f"delivery_limit must be an integer >= 1, got {delivery_limit!r}")
        if delivery_limit < 1:
            raise ConfigError(f"delivery_limit must be an integer >= 1, got {delivery_limit!r}")
    if queue_type == "quorum" and auto_delete:
        raise ConfigError("a quorum queue cannot be auto_delete (RabbitMQ refuses it: 406)")
    return queue_type


def _redelivery_key(incoming: Incoming) -> tuple[str, str] | None:
    """What identifies a request the broker redelivers: its correlation id and reply address."""
    reply = incoming.reply
    if incoming.correlation_id and isinstance(reply, str):
        return (incoming.correlation_id, reply)
    return None


def _ttl(delivery: Delivery) -> float | None:
    """Seconds the broker may still deliver the request: its expiration, if it has one."""
    expiration = delivery.properties.expiration
    if expiration and expiration.isdigit():
        return int(expiration) / 1000
    return None


class _Pending:
    """A request being answered: where it came from, to reply to it and ack it."""

    __slots__ = ("channel", "delivery", "incoming", "started", "trace")

    def __init__(self, channel: Session, delivery: Delivery, incoming: Incoming) -> None:
        self.channel = channel
        self.delivery = delivery
        self.incoming = incoming
        self.started = perf_counter_ns() if incoming.stats is not None else 0
        self.trace: HandlingTrace | None = None  # its server span, when tracing is on


class _Delivered:
    __slots__ = ("channel", "delivery")

    def __init__(self, channel: Session, delivery: Delivery) -> None:
        self.channel = channel
        self.delivery = delivery


class _LateReply:
    __slots__ = ("caller", "value")

    def __init__(self, caller: Caller, value: Any) -> None:
        self.caller = caller
        self.value = value


#: The request queue's type: RabbitMQ's classic queue, or a replicated quorum queue.
QueueType: TypeAlias = Literal["classic", "quorum"]


class ServerOptionsDict(TypedDict, total=False):
    """The options of ``RPCServer(...)`` that ``RPCServer.start(...)`` passes on."""

    queue: str | None
    exchange: str
    exchange_type: ExchangeType
    routing_keys: Sequence[str] | None
    durable: bool
    auto_delete: bool
    prefetch: int
    codec: Codec | None
    backoff: Backoff | None
    convention: Convention | None
    dedupe: int
    queue_type: QueueType
    delivery_limit: int | None
    telemetry: TelemetryOption
    name: str | None


class RPCServer(Actor[S], Generic[S]):
    """Subclass it, override ``handle_request`` (and others), and ``start()`` it.

    Callbacks, on top of ``Actor``'s: ``handle_connected(meta, state)`` ->
    ``NoReply``/``Stop``; ``handle_request(request, caller, state)`` ->
    ``Reply``/``NoReply``/``Stop``. ``meta.reply_queue`` is the queue served.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        queue: str | None = None,
        exchange: str = "",
        exchange_type: ExchangeType = "direct",
        routing_keys: Sequence[str] | None = None,
        durable: bool = False,
        auto_delete: bool = False,
        prefetch: int = 32,
        codec: Codec | None = None,
        backoff: Backoff | None = None,
        convention: Convention | None = None,
        dedupe: int = 1024,
        queue_type: QueueType = "classic",
        delivery_limit: int | None = None,
        telemetry: TelemetryOption = None,
        name: str | None = None,
    ) -> None:
        check_exchange(exchange, exchange_type)
        if convention is not None and not isinstance(convention, Convention):
            raise ConfigError(f"convention must be a hare_py Convention, got {convention!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError(f"prefetch must be an integer >= 0, got {prefetch!r}")
        if isinstance(dedupe, bool) or not isinstance(dedupe, int) or dedupe < 0:
            raise ConfigError(f"dedupe must be an integer >= 0, got {dedupe!r}")
        options = ServerOptions(
            queue,
            exchange,
            exchange_type,
            tuple(routing_keys) if routing_keys is not None else None,
            durable,
            auto_delete,
            check_queue_type(queue_type, delivery_limit, auto_delete),
            delivery_limit,
        )
        self.convention = (convention or hare()).server(options)
        check_protocol(self.convention, connection)
        if queue_type not in self.convention.queue_types:
            raise ConfigError(
                f"queue_type={queue_type!r}: the {self.convention!r} server does not declare "
                f"a queue of that type (it takes {sorted(self.convention.queue_types)})"
            )
        self.queue = self.convention.queue
        self.exchange = self.convention.exchange
        super().__init__(name=name or f"{type(self).__name__}:{self.queue}")
        # Tracing and metrics (hare_py.rpc.telemetry): None when off.
        self._otel = server_instrumentation(
            telemetry, self.convention.wire_protocol, self.exchange, self.queue
        )
        self.connection = connection
        self.prefetch = prefetch
        self.dedupe = dedupe
        # Answers to requests that may come again (hare_py.rpc.answers).
        self._answered = AnswerCache(dedupe)
        self.codec: Codec = codec or BYTES
        self.backoff = backoff or Backoff(initial=0.05, maximum=5.0)
        self._channel: Session | None = None
        self._incoming: dict[Caller, _Pending] = {}
        # For a drain: the sessions the keeper handed over (the current one last, after
        # any a lame duck move was leaving), the request whose
        # handler the stop interrupted, and replies whose send it interrupted.
        self._handed: list[Session] = []
        self._handling: Caller | None = None
        self._in_doubt: list[Message] = []
        self.handled = 0
        self._handlers.update(
            {
                _Delivered: self._on_delivered,
                ChannelUp: self._on_channel_up,
                ChannelDown: self._on_channel_down,
                _LateReply: self._on_late_reply,
            }
        )
        self._log = self._log.bind(queue=self.queue)
        self._rejects = DropLog(self._log, "rpc.request_rejected", level="warning")

    @classmethod
    def start(
        cls,
        conn: ConnectionLike,
        *,
        arg: Any = None,
        max_restarts: int = 3,
        within: float = 5.0,
        restart_backoff: Backoff | None = None,
        **options: Unpack[ServerOptionsDict],
    ) -> ActorRunner[Self]:
        """Serve ``queue`` under a supervisor: ``async with Cls.start(conn, queue=...)``.

        With a named ``exchange`` the queue is bound with each of
        ``routing_keys`` (default: the queue name); ``durable`` and
        ``auto_delete`` apply to the queue (and ``durable`` to the exchange).
        ``convention`` (default ``hare()``) may derive the queue, exchange and
        bindings itself. ``queue_type="quorum"`` declares the queue as a
        durable, replicated quorum queue (RabbitMQ 3.8+), ``delivery_limit``
        its ``x-delivery-limit`` (a request delivered that many times without
        an ack is dropped, or dead-lettered where the queue has a
        dead-letter exchange); conventions that declare no queue of their own
        refuse it. ``dedupe`` bounds the cache of answers (``dedupe``
        entries, 16 MiB, each for its request's time to live) to requests
        that come again: a repeated request id, or a request the broker
        redelivers after its reply was sent but its ack was lost; such a
        request is answered from it, not handled again. ``prefetch`` bounds
        the requests being handled at once (0: unbounded). ``conn``, ``arg``,
        ``telemetry`` and the supervision options are those of
        ``RPCClient.start``.
        """
        return supervised(
            lambda connection: cls(connection, **options),
            conn,
            arg,
            max_restarts=max_restarts,
            within=within,
            restart_backoff=restart_backoff,
        )

    # -- callbacks ---------------------------------------------------------------

    async def handle_connected(self, meta: ConnectedMeta, state: S) -> Any:
        """The queue is declared, bound and consumed. Default: go on."""
        return NoReply(state)

    async def handle_request(self, request: Request, caller: Caller, state: S) -> Any:
        """Answer a request. Default: echo its payload."""
        return Reply(request.payload, state)

    # -- API -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the queue is being consumed."""
        return self._channel is not None

    @property
    def pending(self) -> int:
        """Requests received and not answered yet."""
        return len(self._incoming)

    def reply(self, caller: Caller, value: Any) -> None:
        """Answer a request held with ``NoReply`` (an exception becomes an error reply)."""
        if caller in self._incoming:
            self._enqueue(_LateReply(caller, value))
        else:
            super().reply(caller, value)

    # -- runtime -------------------------------------------------------------------

    async def _on_start(self, tg: TaskGroup) -> None:
        if self._otel is not None:
            self._otel.started()
        self._channel = None
        self._incoming = {}
        self._handed, self._handling, self._in_doubt = [], None, []
        tg.start_soon(
            partial(
                keep_channel,
                connection=self.connection,
                setup=self._setup_channel,
                post=self._enqueue,
                backoff=self.backoff,
                log=self._log,
                hand_over=self._hand_over if self.convention.drains else None,
            )
        )

    def _hand_over(self, session: Session) -> None:
        self._handed.append(session)

    def _fail_held(self, error: Any) -> None:
        # Unanswered requests are not acked: the broker redelivers them.
        super()._fail_held(error)
        for pending in self._incoming.values():
            self._abandon(pending, error())
        self._incoming.clear()

    async def _on_delivered(self, message: _Delivered) -> None:
        delivery = message.delivery
        if delivery.undecodable is not None:
            # A poison message: redelivering it cannot help, a dead-letter exchange keeps it.
            self._reject_log("undecodable", ValueError(delivery.undecodable), None)
            await self._settle(message.channel, delivery, reject=True)
            return
        try:
            incoming = self.convention.unwrap(delivery)
        except NotForThisServer:
            await self._settle(message.channel, delivery)
            return
        except LocalAnswer as answer:  # the convention's own (a NATS service API PING)
            if answer.message is not None:
                await self._send_local(self._channel or message.channel, answer.message)
            return
        except Exception as exc:  # no envelope: nobody to answer
            self._reject_log("malformed", exc, delivery.properties.correlation_id)
            await self._settle(message.channel, delivery, reject=True)
            return
        pending = _Pending(message.channel, delivery, incoming)
        if self._otel is not None:
            pending.trace = self._otel.start(delivery, incoming)
        try:
            payload = incoming.value
            if payload is UNDECODED or type(self.codec) is not JSONCodec:
                payload = self.codec.decode(incoming.body, incoming.content_type)
        except Exception as exc:
            # The caller is told at once rather than left to its timeout.
            self._reject_log("undecodable", exc, incoming.correlation_id)
            error = UndecodableRequest(f"{type(exc).__name__}: {exc}"[:500])
            await self._send_reply(pending, b"", None, error, reject=True)
            return
        cached = self._cached(delivery, incoming)
        if cached is not None:
            self._log.info(
                "rpc.request_repeated",
                request_id=incoming.request_id,
                correlation_id=incoming.correlation_id,
                redelivered=delivery.redelivered,
            )
            if pending.trace is not None:
                pending.trace.repeated()
            await self._send_reply(pending, *cached)
            return
        request = Request(
            payload,
            incoming.routing_key,
            incoming.headers,
            incoming.correlation_id or "",
            trace_id=incoming.trace_id,
        )
        caller = Caller(request=request)
        self._incoming[caller] = pending
        self._handling = caller
        trace = pending.trace
        if trace is not None:
            trace.enter()
        try:
            result = await self.handle_request(request, caller, self._state)
        except Exception as exc:
            self._handling = None
            if trace is not None:
                trace.leave()
                trace.crashed(exc)
            self._log.error(
                "rpc.handler_failed",
                error=repr(exc),
                routing_key=request.routing_key,
                correlation_id=request.correlation_id,
                exc_info=exc,
            )
            await self._answer(caller, exc)
            return
        finally:
            if trace is not None:
                trace.leave()
        self._handling = None
        kind = type(result)
        if kind is Reply:
            self._state = result.state
            await self._answer(caller, result.value)
        elif kind is NoReply:
            self._state = result.state
        elif kind is Stop:
            if result.reply is not NOTHING:
                await self._answer(caller, result.reply)
            self._apply(result, "handle_request")
        else:
            raise TypeError(
                f"{type(self).__name__}.handle_request returned {result!r}; "
                "expected Reply, NoReply or Stop"
            )

    async def _on_late_reply(self, message: _LateReply) -> None:
        await self._answer(message.caller, message.value)

    async def _answer(self, caller: Caller, value: Any) -> None:
        """Encode the answer, remember it for repeats, publish it, then ack."""
        pending = self._incoming.pop(caller, None)
        if pending is None:
            return
        self.handled += 1
        body, content_type, error = b"", None, None
        if isinstance(value, BaseException):
            error = value
        else:
            try:
                body, content_type = self.codec.encode(value), self.codec.content_type
            except Exception as exc:
                self._log.error("rpc.reply_unencodable", error=repr(exc))
                error = exc
        if self.dedupe:
            self._remember(pending, Answer(body, content_type, error))
        await self._send_reply(pending, body, content_type, error)

    def _cached(self, delivery: Delivery, incoming: Incoming) -> Answer | None:
        """The answer already sent for this request: it repeats a request id, or the
        broker redelivers a request answered before its ack got through."""
        answered = self._answered
        if not len(answered):
            return None
        if incoming.request_id:
            found = answered.get(incoming.request_id, now())
            if found is not None:
                return found
        if delivery.redelivered:
            key = _redelivery_key(incoming)
            if key is not None:
                return answered.get(key, now())
        return None

    def _remember(self, pending: _Pending, answer: Answer) -> None:
        incoming = pending.incoming
        keys: list[str | tuple[str, str]] = [incoming.request_id] if incoming.request_id else []
        if not self.convention.drains:  # the protocol redelivers (AMQP)
            key = _redelivery_key(incoming)
            if key is not None:
                keys.append(key)
        if keys:
            at, ttl = now(), _ttl(pending.delivery)
            for each in keys:
                self._answered.put(each, answer, at, ttl)

    def _reject_log(self, reason: str, exc: Exception, correlation_id: str | None) -> None:
        cid = correlation_id[:100] if correlation_id else correlation_id
        self._rejects.drop(reason, error=repr(exc)[:300], correlation_id=cid)

    def _next_deadline(self) -> float:
        return self._rejects.due

    async def _on_timers(self, now: float) -> None:
        self._rejects.flush(now)

    async def _send_reply(
        self,
        pending: _Pending,
        body: bytes,
        content_type: str | None,
        error: BaseException | None,
        *,
        reject: bool = False,
    ) -> None:
        try:
            out = self.convention.wrap(pending.incoming, body, content_type, error)
        except ConfigError as exc:  # the answer does not fit the envelope
            self._log.error("rpc.reply_unsendable", error=str(exc)[:300])
            if error is not None:
                self._count(pending, error)
                await self._settle(pending.channel, pending.delivery, reject=True)
                return
            out = self.convention.wrap(pending.incoming, b"", None, exc)
        if out is not None:
            channel = self._channel or pending.channel
            try:
                await channel.send([out])
            except ConfigError as exc:
                # The reply cannot go on the wire (too large, say): the caller
                # gets an error reply instead; if even that fails, it times out.
                self._log.error(
                    "rpc.reply_unsendable",
                    error=str(exc),
                    correlation_id=pending.incoming.correlation_id,
                )
                if error is None or not isinstance(error, ConfigError):
                    await self._send_reply(pending, b"", None, exc, reject=reject)
                    return
                reject = True
            except (ConnectionLost, BrokerError) as exc:
                # Not acked either: the broker will redeliver the request.
                self._log.warning("rpc.reply_failed", error=str(exc))
                self._count(pending, exc)
                return
            except BaseException:
                # A stop cancelled the send: the reply may not have left, and
                # nothing will be redelivered, so the drain sends it (again).
                if self.convention.drains:
                    self._in_doubt.append(out)
                    self._count(pending, error)
                raise
        self._count(pending, error)
        if pending.channel.acks:
            await self._settle(pending.channel, pending.delivery, reject=reject)

    def _count(self, pending: _Pending, error: BaseException | None) -> None:
        """The request is answered (``error``: its error reply, or why none left)."""
        stats = pending.incoming.stats
        if stats is not None:
            stats.record(perf_counter_ns() - pending.started, error)
        trace = pending.trace
        if trace is not None:
            pending.trace = None
            trace.finish(error)

    def _abandon(self, pending: _Pending, error: BaseException) -> None:
        """The request leaves unanswered (the broker redelivers it): end its span."""
        trace = pending.trace
        if trace is not None:
            pending.trace = None
            trace.finish(error)

    async def _send_local(self, session: Session, message: Message) -> None:
        try:
            await session.send([message])
        except (ConfigError, ConnectionLost, BrokerError) as exc:
            self._log.warning("rpc.local_answer_failed", error=str(exc)[:300])

    async def _settle(self, session: Session, delivery: Delivery, *, reject: bool = False) -> None:
        if not session.is_open:
            return  # its session is gone: the broker redelivers the request elsewhere
        try:
            await session.settle(delivery, "reject" if reject else "accept")
        except (ConnectionLost, BrokerError) as exc:
            self._log.warning("rpc.ack_failed", error=str(exc))

    async def _on_channel_up(self, message: ChannelUp) -> None:
        if not message.channel.is_open:
            # Closed already: a crashed incarnation's session whose ChannelUp outlived it
            # in the mailbox, or one that closed meanwhile (its keeper opens the next).
            return
        self._channel = message.channel
        if self._otel is not None:
            self._otel.connected(message.meta.connects)
        self._apply(await self.handle_connected(message.meta, self._state), "handle_connected")

    async def _on_channel_down(self, message: ChannelDown) -> None:
        if message.channel is self._channel:
            self._channel = None
        current = self._channel
        for caller, pending in list(self._incoming.items()):
            if pending.channel is not message.channel:
                continue
            if self.convention.drains and current is not None:
                # Nothing is redelivered here (NATS): answer it through the session
                # that replaced this one (a lame duck move).
                pending.channel = current
            else:  # the broker redelivers it
                del self._incoming[caller]
                self._abandon(pending, ConnectionLost(f"session closed: {message.reason}"))
        self._log.warning("rpc.channel_lost", reason=str(message.reason))

    # -- draining ------------------------------------------------------------------

    async def _end(self, reason: Any, crash: BaseException | None) -> None:
        sessions, self._handed = self._handed, []
        if sessions:
            try:
                if crash is None:
                    await self._drain(sessions)
            finally:
                for session in sessions:
                    await close_quietly(session)
                    if self._channel is session:
                        self._channel = None
        self._handling, self._in_doubt = None, []
        await super()._end(reason, crash)

    async def _drain(self, sessions: list[Session]) -> None:
        """Unsubscribe, answer what is in hand, flush: within ``shutdown_timeout``.

        Every session unsubscribes first, then what any of them delivered is answered;
        the last (the current one) sends what needs a session of its own."""
        timeout = self.shutdown_timeout
        deferred: list[Any] = []  # other mailbox messages, kept in order for later
        self._log.info("rpc.draining", pending=len(self._incoming), sessions=len(sessions))
        sessions = [s for s in sessions if s.is_open]
        if not sessions:
            return  # a restart answers the mailbox's requests through its own session
        session = sessions[-1]
        with anyio.move_on_after(timeout) as scope:
            try:
                in_doubt, self._in_doubt = self._in_doubt, []
                if in_doubt:
                    await session.send(in_doubt)
                interrupted, self._handling = self._handling, None
                if interrupted is not None:
                    stopped = ServerStopping("the server stopped while handling the request")
                    await self._answer(interrupted, stopped)
                for each in sessions:
                    await self.convention.quiesce(each, timeout)
                await self._finish_in_hand(deferred)
                for each in sessions:
                    await self.convention.flush(each, timeout)
            except (ConfigError, ConnectionLost, BrokerError) as exc:
                self._log.warning("rpc.drain_failed", error=str(exc)[:300])
            except Exception as exc:  # a callback misbehaved while draining
                self._log.error("rpc.drain_failed", error=repr(exc)[:300], exc_info=exc)
        if scope.cancelled_caught:
            self._log.warning("rpc.drain_timeout", seconds=timeout, pending=len(self._incoming))
        await self._refuse_the_rest(session, deferred)
        for message in deferred:
            self._send.send_nowait(message)

    async def _finish_in_hand(self, deferred: list[Any]) -> None:
        """Handle the requests in the mailbox, and wait for the held ones' replies."""
        recv, handlers = self._recv, self._handlers
        while True:
            try:
                message = recv.receive_nowait()
            except anyio.WouldBlock:
                if not self._incoming:
                    return
                message = await recv.receive()  # a reply() for a request held with NoReply
            kind = type(message)
            if kind is _Delivered or kind is _LateReply:
                with suppress(_StopSignal):  # a handler's Stop: the server is stopping already
                    await handlers[kind](message)
            elif kind is not ChannelUp and kind is not ChannelDown:  # those are of this session
                deferred.append(message)

    async def _refuse_the_rest(self, session: Session, deferred: list[Any]) -> None:
        """Tell the callers of what could not be finished at once, not at their deadlines."""
        while True:  # the mailbox, in order, behind what was deferred already
            try:
                deferred.append(self._recv.receive_nowait())
            except anyio.WouldBlock:
                break
        if not session.is_open:
            return  # nothing can be sent here; a restart answers the mailbox's requests
        mine = [m for m in deferred if type(m) is _Delivered or type(m) is _LateReply]
        if not (mine or self._incoming):
            return
        deferred[:] = [
            m for m in deferred if type(m) is not _Delivered and type(m) is not _LateReply
        ]
        stopped = ServerStopping("the server stopped before it answered")
        with anyio.move_on_after(min(self.shutdown_timeout, 1.0)):
            for message in mine:
                if type(message) is _LateReply:  # answered after all
                    await self._on_late_reply(message)
            for caller in list(self._incoming):
                await self._answer(caller, stopped)
            for message in mine:
                if type(message) is not _Delivered:
                    continue
                try:
                    incoming = self.convention.unwrap(message.delivery)
                except Exception:
                    continue  # malformed, or not a request: nobody to tell
                pending = _Pending(message.channel, message.delivery, incoming)
                await self._send_reply(pending, b"", None, stopped)

    async def _setup_channel(
        self, channel: Session, on_cancel: OnCancel, connects: int
    ) -> ConnectedMeta:
        def on_delivery(delivery: Delivery) -> None:
            self._enqueue(_Delivered(channel, delivery))

        await self.convention.limit(channel, self.prefetch)
        await self.convention.setup(channel, on_delivery, on_cancel)
        return ConnectedMeta(self.queue, self.exchange, connects)
