"""RPCClient: Hare.RPC.Client as an anyio actor.

Every time a channel opens (first start and every reconnect) the client
declares its request exchange (unless it is the default exchange ``""``) and a
fresh exclusive, server-named reply queue, consumes it without acks and calls
``handle_connected``. Requests go through ``handle_request`` (pass, rewrite,
answer locally or stop), replies through ``handle_response``, deadlines
through ``handle_timeout`` and broker returns through ``handle_return``.

Failure rules: a request in flight when its channel dies fails at once with
``ConnectionLost`` (an ``idempotent`` one is republished on the next channel
within its deadline); a request made while disconnected waits for the next
channel within its deadline; no caller waits past its deadline (plus
``deadline_grace`` if the actor is busy in a slow callback). A channel moved
off a draining server (NATS lame duck mode) loses nothing: requests go
through its successor from its ``ChannelUp`` on, and the old one keeps its
reply subscription until every request sent before has its reply or has
expired (``_Settle``): a reply routed to the old server is delivered there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from functools import partial
from threading import get_ident
from types import MappingProxyType
from typing import Any, Generic, Self, TypedDict, Unpack

import anyio
from anyio.abc import TaskGroup
from typing_extensions import TypeVar  # TypeVar(default=...) before Python 3.13

from .._clock import now
from .._log import debug_enabled
from ..actor.actor import Actor, check_timeout
from ..actor.backoff import Backoff
from ..actor.backstop import Backstop
from ..actor.caller import Caller
from ..actor.connection import Connection
from ..actor.results import CallResult, NoReply, NoticeResult, Reply
from ..actor.runner import ActorRunner, ConnectionLike, supervised
from ..codecs import BYTES, BytesCodec, Codec, JSONCodec
from ..conventions import Convention, hare
from ..conventions.base import UNDECODED
from ..errors import (
    ConfigError,
    ConnectionLost,
    HareError,
    RemoteError,
    RequestTimeout,
    Unroutable,
    UnsendableMessage,
)
from ..transport.base import (
    Delivery,
    ExchangeType,
    Message,
    OnCancel,
    ReturnedMessage,
    Session,
)
from .calls import Call, CallTable, correlation_ids
from .channel import (
    ChannelDown,
    ChannelUp,
    check_exchange,
    check_protocol,
    close_quietly,
    keep_channel,
)
from .drops import DropLog
from .messages import (
    ConnectedMeta,
    Forward,
    Request,
    Response,
    Returned,
)
from .telemetry import TelemetryOption, client_instrumentation

__all__ = ["RPCClient"]

#: Requests published in one write at most (and flushed at least this often).
_BATCH = 32
#: The headers of a request made without any: one shared, read-only mapping.
_NO_HEADERS: Mapping[str, Any] = MappingProxyType({})
#: RabbitMQ's largest per-message TTL, in milliseconds (2**32 - 1).
_MAX_TTL_MS = 4_294_967_295

# A bare RPCClient (no state type given) has Any: its default init
# returns the start() arg as the state.
S = TypeVar("S", default=Any)


class ClientOptions(TypedDict, total=False):
    """The options of ``RPCClient(...)`` that ``RPCClient.start(...)`` passes on."""

    exchange: str
    exchange_type: ExchangeType
    exchange_durable: bool
    timeout: float
    max_in_flight: int
    mandatory: bool
    request_ttl: bool
    codec: Codec | None
    backoff: Backoff | None
    convention: Convention | None
    telemetry: TelemetryOption
    name: str | None


class _Request:
    __slots__ = ("body", "caller")

    def __init__(self, caller: Caller, body: bytes | None) -> None:
        self.caller = caller
        self.body = body  # the payload, encoded at the call (None: encode when sending)


class _Settle:
    """From the session keeper: set ``done`` once no call sent so far is waiting."""

    __slots__ = ("done",)

    def __init__(self, done: anyio.Event) -> None:
        self.done = done


class RPCClient(Actor[S], Generic[S]):
    """Subclass it, override the callbacks you need, and ``start()`` it.

    Callbacks, on top of ``Actor``'s ``init``/``handle_call``/``handle_cast``/
    ``handle_info``/``terminate``:

    - ``handle_connected(meta, state)`` -> ``NoReply`` or ``Stop``; runs on every
      channel open, after the reply queue is consumed.
    - ``handle_request(request, caller, state)`` -> ``Forward(state)`` to send it,
      ``Forward(state, request.replace(...))`` to send a rewritten one,
      ``Reply(value, state)`` to answer locally, ``NoReply(state)`` to answer
      later with ``reply(caller, value)``, ``Stop(reason, state, reply=...)``.
    - ``handle_response(response, caller, state)`` -> ``Reply``, ``NoReply`` or
      ``Stop``. Default: the caller gets ``response.payload``.
    - ``handle_timeout(caller, state)``: default, the caller gets ``RequestTimeout``.
    - ``handle_return(returned, caller, state)``: default, ``Unroutable``.
    """

    #: Extra time a caller waits past its deadline for the actor to run
    #: ``handle_timeout``, in case the actor is busy in a slow callback (read
    #: when the client is built: set it on the class).
    deadline_grace: float = 0.1
    _backstop: Backstop

    def __init__(
        self,
        connection: Connection,
        *,
        exchange: str = "",
        exchange_type: ExchangeType = "direct",
        exchange_durable: bool = False,
        timeout: float = 5.0,
        max_in_flight: int = 10_000,
        mandatory: bool = True,
        request_ttl: bool = True,
        codec: Codec | None = None,
        backoff: Backoff | None = None,
        convention: Convention | None = None,
        telemetry: TelemetryOption = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        check_exchange(exchange, exchange_type)
        if convention is not None and not isinstance(convention, Convention):
            raise ConfigError(f"convention must be a hare_py Convention, got {convention!r}")
        if (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise ConfigError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
        if codec is not None and not isinstance(codec, Codec):
            raise ConfigError(f"codec {codec!r} lacks check/encode/decode/content_type")
        self.connection = connection
        self.convention = (convention or hare()).client(exchange, exchange_type, exchange_durable)
        check_protocol(self.convention, connection)
        self.exchange = self.convention.exchange
        # Tracing and metrics (hare_py.rpc.telemetry): None when off, the hot path's one check.
        self._otel = client_instrumentation(telemetry, self.convention.wire_protocol, self.exchange)
        self.timeout = check_timeout(timeout)
        self.max_in_flight = max_in_flight
        self.mandatory = mandatory
        self.request_ttl = request_ttl
        self.codec: Codec = codec or BYTES
        # An own handle_request may change a payload in place: encode it when sending.
        self._rewrites = type(self).handle_request is not RPCClient.handle_request
        self._default_response = type(self).handle_response is RPCClient.handle_response
        self.backoff = backoff or Backoff(initial=0.05, maximum=5.0)
        self._slots = anyio.Semaphore(max_in_flight)
        self._backstop = Backstop(self.deadline_grace)
        grace = self.convention.late_reply_grace
        self._calls = CallTable(
            serial=self.convention.serial_per_routing_key,
            # Without a TTL the broker never drops a request: only its reply frees its key.
            late_reply_grace=(self.timeout if grace is None else grace)
            if request_ttl
            else float("inf"),
        )
        self._correlation_ids = correlation_ids()
        self._unflushed = 0  # requests queued since the last flush
        self._channel: Session | None = None
        self._last_channel: Session | None = None
        self._reply_queue: str | None = None
        # Correlation ids each _Settle still waits for, and its event.
        self._settling: list[tuple[set[str], anyio.Event]] = []
        self.last_error: BaseException | None = None
        self._handlers.update(
            {
                _Request: self._on_request,
                _Settle: self._on_settle,
                Delivery: self._on_delivery,
                ReturnedMessage: self._on_returned,
                ChannelUp: self._on_channel_up,
                ChannelDown: self._on_channel_down,
            }
        )
        self._log = self._log.bind(exchange=self.exchange)
        self._drops = DropLog(self._log, "rpc.reply_dropped")
        # The caller whose answer handle_response/_return/_timeout is deciding: out of
        # the call table by then, so a crash in that callback must answer it here.
        self._deciding: Caller | None = None

    @classmethod
    def start(
        cls,
        conn: ConnectionLike,
        *,
        arg: Any = None,
        max_restarts: int = 3,
        within: float = 5.0,
        restart_backoff: Backoff | None = None,
        **options: Unpack[ClientOptions],
    ) -> ActorRunner[Self]:
        """Run a client under its own supervisor: ``async with Cls.start(conn) as client``.

        ``conn`` is a ``Connection`` (shared, left open) or broker URL(s) (a
        connection is opened and closed with the block). The block is entered
        once ``init(arg)`` has run; the broker may still be unreachable.
        ``max_restarts`` crashes within ``within`` seconds are restarted (with
        ``restart_backoff``); one more raises ``RestartIntensityExceeded`` out
        of the block. The other ``options`` are the constructor's
        (``ClientOptions``): ``timeout`` is the default request deadline in
        seconds (``math.inf`` for none), ``backoff`` paces session re-opening
        after failures, ``convention`` (default ``hare()``) decides wire names,
        reply addresses and envelopes, ``telemetry`` (default: on when the
        process set an OpenTelemetry tracer or meter provider) traces requests.
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

    async def handle_connected(self, meta: ConnectedMeta, state: S) -> NoticeResult[S]:
        """The channel is open and the reply queue consumed. Default: go on."""
        return NoReply(state)

    async def handle_request(
        self, request: Request, caller: Caller, state: S
    ) -> Forward[S] | CallResult[S]:
        """Decide what to do with a request. Default: send it unchanged."""
        return Forward(state)

    async def handle_response(self, response: Response, caller: Caller, state: S) -> CallResult[S]:
        """Decide what the caller gets for a reply. Default: its payload, or
        ``RemoteError`` for an error reply."""
        return Reply(response.error if response.error is not None else response.payload, state)

    async def handle_timeout(self, caller: Caller, state: S) -> CallResult[S]:
        """The caller's deadline passed. Default: it gets ``RequestTimeout``."""
        return Reply(self._timeout_error(caller), state)

    async def handle_return(self, returned: Returned, caller: Caller, state: S) -> CallResult[S]:
        """The broker returned the request as unroutable. Default: ``Unroutable``."""
        return Reply(
            Unroutable(
                returned.exchange, returned.routing_key, returned.reply_code, returned.reply_text
            ),
            state,
        )

    # -- API -----------------------------------------------------------------------

    @property
    def reply_queue(self) -> str | None:
        """The reply queue in use now (``None`` while no channel is open)."""
        return self._reply_queue

    @property
    def connected(self) -> bool:
        """True while a channel with a consumed reply queue is open."""
        return self._channel is not None

    @property
    def pending(self) -> int:
        """Requests this client is answering now (queued, in flight or held)."""
        return len(self._calls)

    async def request(
        self,
        payload: Any,
        routing_key: str = "",
        *,
        timeout: float | None = None,
        headers: Mapping[str, Any] | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Send ``payload`` and wait for the reply (decoded by the codec).

        Raises ``RequestTimeout`` when ``timeout`` (default: the client's)
        passes, ``Unroutable`` when no queue is bound for ``routing_key``,
        ``ConnectionLost`` when the channel dies while the request is in
        flight (unless ``idempotent=True``: then it is sent again after the
        reconnect), ``ClientStopped``/``ClientCrashed`` when the client ends,
        and any exception a callback chose as the reply.
        """
        # The checks and objects are built in _new_call: this frame waits for the
        # reply, and every local of it is kept per request in flight.
        caller, body = self._new_call(payload, routing_key, timeout, headers, idempotent)
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._wait_for_slot(caller)
        try:
            self._submit(caller, body)
            body = None  # the actor has it now: not kept while this call waits
            # The actor answers at the deadline; the backstop gives up on the
            # caller at the deadline plus the grace if the actor is stuck.
            self._backstop.add(caller)
            try:
                if not caller.done:
                    await caller.waiter(self._event_loop)  # _submit checked it is running
            finally:
                if not caller.done or caller.gave_up:  # cancelled, or the backstop's
                    caller.give_up()
                    self._forget(caller)
                self._backstop.leave(caller)
        finally:
            self._slots.release()
            if debug_enabled(self._log):  # the canonical event is debug: built only if shown
                self._log_request(caller)
            if caller.trace is not None:
                caller.trace.finish(caller)
        if caller.gave_up:
            raise self._timeout_error(caller)
        if isinstance(caller.value, BaseException):
            raise caller.value
        return caller.value

    def _new_call(
        self,
        payload: Any,
        routing_key: str,
        timeout: float | None,
        headers: Mapping[str, Any] | None,
        idempotent: bool,
    ) -> tuple[Caller, bytes | None]:
        """Check a request and build its caller, with the body when checking it
        encoded it already."""
        codec = self.codec
        body = None
        if type(codec) is JSONCodec:  # checking is encoding: keep the body for sending
            body = codec.encode(payload)
        elif type(payload) is bytes and type(codec) is BytesCodec:
            body = payload  # what it sends
        else:
            codec.check(payload)
        if not isinstance(routing_key, str):
            raise ConfigError(f"routing_key must be a string, got {type(routing_key).__name__}")
        if not routing_key.isascii() or len(routing_key) > 255:  # else valid: no encoding
            try:
                size = len(routing_key.encode())
            except UnicodeEncodeError:  # a lone surrogate
                raise ConfigError(f"routing_key {routing_key[:40]!r} is not valid UTF-8") from None
            if size > 255:
                raise ConfigError(f"routing_key {routing_key[:40]!r}... is longer than 255 bytes")
        if headers is not None:
            if not isinstance(headers, Mapping):
                raise ConfigError(f"headers must be a mapping, got {type(headers).__name__}")
            if headers:  # before the actor sees them: a bad header fails this call alone
                self.convention.check_headers(headers)
        seconds = self.timeout if timeout is None else check_timeout(timeout)
        # The actor's loop clock, unless this is another thread (which _post refuses).
        started = self._now() if get_ident() == self._thread else now()
        deadline = started + seconds
        correlation_id = next(self._correlation_ids)
        request = Request(
            payload,
            routing_key,
            headers if headers is not None else _NO_HEADERS,
            correlation_id,
            deadline,
            idempotent,
        )
        caller = Caller(deadline, request, started)
        otel = self._otel
        if otel is not None:  # the span starts here, in the caller's task (its parent)
            caller.trace = otel.start(routing_key, correlation_id)
        return caller, body

    def _submit(self, caller: Caller, body: bytes | None) -> None:
        """Hand a request to the actor; its span ends if the actor refuses it."""
        try:
            self._post(_Request(caller, body))
        except BaseException as exc:  # the client has stopped, or a wrong thread
            if caller.trace is not None:
                caller.trace, trace = None, caller.trace
                trace.finish(None, exc)
            raise

    # -- runtime -------------------------------------------------------------------

    async def _wait_for_slot(self, caller: Caller) -> None:
        """Wait for one of ``max_in_flight`` slots, within the request's deadline."""
        try:
            with anyio.CancelScope(deadline=caller.deadline) as waiting:
                await self._slots.acquire()
            if waiting.cancelled_caught:  # not acquired: nothing to release
                raise RequestTimeout(
                    f"request to {caller.request.routing_key!r} waited "
                    f"{caller.deadline - caller.started:g} s for one "
                    f"of max_in_flight={self.max_in_flight} slots"
                ) from None
        except BaseException as exc:
            if caller.trace is not None:
                caller.trace.finish(None, exc)
            raise

    def _log_request(self, caller: Caller) -> None:
        ended = now()
        if not caller.done:
            outcome = "not sent"  # refused before it reached the actor
        elif caller.gave_up:
            outcome = "timeout" if ended >= caller.deadline else "cancelled"
        elif isinstance(caller.value, BaseException):
            outcome = type(caller.value).__name__
        else:
            outcome = "ok"
        request = caller.request
        self._log.debug(
            "rpc.request",
            outcome=outcome,
            duration_ms=round((ended - caller.started) * 1000, 3),
            routing_key=request.routing_key,
            correlation_id=request.correlation_id,
        )

    def _timeout_error(self, caller: Caller) -> RequestTimeout:
        request = caller.request
        where = f"request to {request.routing_key!r}" if request is not None else "call"
        if self._channel is None:
            last = f" (last error: {self.last_error})" if self.last_error else ""
            return RequestTimeout(f"{where} timed out waiting for a channel to the broker{last}")
        return RequestTimeout(f"{where} got no reply before its deadline")

    def _forget(self, caller: Caller) -> None:
        super()._forget(caller)
        self._calls.remove(caller)

    def _hold(self, caller: Caller) -> None:
        if caller.request is not None and caller.deadline > now():
            self._calls.hold(caller)
        else:
            super()._hold(caller)

    def _fail_held(self, error: Any) -> None:
        deciding, self._deciding = self._deciding, None
        if deciding is not None and not deciding.done:
            deciding.resolve(error())
        super()._fail_held(error)
        for call in self._calls.clear():
            call.caller.resolve(error())

    def _next_deadline(self) -> float:
        return min(self._calls.next_deadline(), self._drops.due)

    async def _on_timers(self, now: float) -> None:
        self._drops.flush(now)
        for call in self._calls.expire(now):
            if not call.caller.done:
                self._deciding = call.caller
                result = await self.handle_timeout(call.caller, self._state)
                self._apply(result, "handle_timeout", call.caller)
                self._deciding = None
        if self._settling:
            self._check_settled()

    async def _on_start(self, tg: TaskGroup) -> None:
        self._helpers = tg
        if self._otel is not None:
            self._otel.started()
        self._calls = self._calls.renew()  # late calls keep their keys across a restart
        self._unflushed = 0
        self._channel = self._last_channel = None
        self._reply_queue = None
        self._settling = []
        tg.start_soon(
            partial(
                keep_channel,
                connection=self.connection,
                setup=self._setup_channel,
                post=self._enqueue,
                backoff=self.backoff,
                log=self._log,
                on_return=self._enqueue,
                on_error=self._note_error,
                settled=self._settled,
            )
        )

    def _on_request(self, message: _Request) -> Awaitable[None] | None:
        caller = message.caller
        if caller.done:
            return None
        if self._rewrites:
            return self._rewrite_request(caller)
        # The default handle_request sends it unchanged: not called.
        self._calls.add(caller, caller.request).body = message.body
        return self._queued()

    async def _rewrite_request(self, caller: Caller) -> None:
        request = caller.request
        result = await self.handle_request(request, caller, self._state)
        if type(result) is not Forward:
            self._apply(result, "handle_request", caller)
            return
        self._state = result.state
        if result.request is not None:
            if not isinstance(result.request, Request):
                raise TypeError(
                    f"{type(self).__name__}.handle_request returned Forward with "
                    f"{result.request!r}; expected a Request"
                )
            caller.request = result.request
        self._calls.add(caller, caller.request)  # encoded again: it may have changed
        pending = self._queued()
        if pending is not None:
            await pending

    def _queued(self) -> Awaitable[None] | None:
        """One more request queued: the flush to await once a batch is full."""
        self._unflushed += 1
        if self._unflushed >= _BATCH:
            return self._flush()  # a busy mailbox must not hold requests back
        return None

    async def _on_idle(self) -> bool:
        if self._settling:
            self._check_settled()
        if (self._unflushed or self._calls.ready) and self._channel is not None:
            await self._flush()
            return True
        return False

    async def _flush(self) -> None:
        """Publish queued calls, oldest first, in batches, while a channel is open.

        Requests are queued as they arrive and published when the mailbox runs
        dry (or every ``_BATCH`` requests), so that a burst leaves in one write.
        """
        self._unflushed = 0
        while self._channel is not None:
            channel = self._channel
            batch: list[Call] = []
            messages: list[Message] = []
            while len(batch) < _BATCH and (call := self._calls.next_queued()) is not None:
                message = self._prepare(call)
                if message is not None:
                    batch.append(call)
                    messages.append(message)
            if not batch:
                return
            try:
                await channel.send(messages, mandatory=self.mandatory)
            except UnsendableMessage as exc:
                # Refused before anything was written: fail that one, send the rest.
                if not 0 <= exc.index < len(batch):  # names no message of ours
                    self._fail_batch(batch, exc)
                    continue
                culprit = batch[exc.index]
                for call in reversed(batch):
                    if call is not culprit:
                        self._calls.unsend(call)
                        if call.caller.trace is not None:
                            call.caller.trace.unsent()
                self._fail_batch([culprit], exc)
            except ConnectionLost as exc:
                # Any of the batch may have reached the broker: as for a request in
                # flight, only idempotent ones are sent again, on the next channel.
                for call in reversed(batch):
                    if call.request.idempotent:
                        self._calls.unsend(call)
                self._fail_batch([c for c in batch if not c.request.idempotent], exc)
                if self._channel is channel:
                    self._channel = None
                self.last_error = exc
                if channel.is_open:  # a failed write with the channel still up: replace it
                    self._helpers.start_soon(close_quietly, channel)
                return
            except HareError as exc:
                # Refused after writing began (a nack, say): any of them may have
                # left, so none is sent again.
                self._fail_batch(batch, exc)

    def _fail_batch(self, batch: list[Call], error: HareError) -> None:
        for call in batch:
            self._forget(call.caller)
            call.caller.resolve(error)

    def _prepare(self, call: Call) -> Message | None:
        """Mark ``call`` sent and build its message; None if it was answered instead."""
        request: Request = call.request
        caller: Caller = call.caller
        body, call.body = call.body, None  # kept no longer than needed: a resend encodes
        if body is None:
            try:
                body = self.codec.encode(request.payload)
            except Exception as exc:
                self._forget(caller)
                caller.resolve(exc)
                return None
        if not self._calls.sent(call):
            self._forget(caller)
            caller.resolve(
                ConfigError(f"correlation id {request.correlation_id!r} is already in flight")
            )
            return None
        expiration = None
        if self.request_ttl:
            ms = (request.deadline - self._now()) * 1000
            if ms < _MAX_TTL_MS:  # a longer TTL is refused by RabbitMQ (406): send none
                expiration = str(max(1, int(ms)))
        trace = caller.trace
        headers = request.headers if trace is None else {**request.headers, **trace.carrier}
        try:
            message = self.convention.wrap(
                request.routing_key,
                body,
                self.codec.content_type,
                headers,
                request.correlation_id,
                expiration,
                self._reply_queue or "",
            )
        except ConfigError as exc:  # a request the convention cannot express (cloud keys)
            self._forget(caller)
            caller.resolve(exc)
            return None
        if trace is not None:
            trace.sent(message)
        return message

    def _on_delivery(self, delivery: Delivery) -> Awaitable[None] | None:
        if delivery.undecodable is not None:
            self._drops.drop("undecodable", error=delivery.undecodable[:200])
            return None
        try:
            reply = self.convention.unwrap(delivery)
        except ValueError as exc:
            self._drops.drop("malformed", error=str(exc)[:200])
            return None
        cid = reply.correlation_id
        if cid:
            call = self._calls.pop_reply(cid)
        elif self.convention.correlates_by_routing_key:
            call = self._calls.pop_oldest(reply.routing_key)  # goamqp: best guess, FIFO
        else:
            call = None
        if call is None:
            reason = "unknown or late correlation id" if cid else "no correlation id"
            self._drops.drop(reason, correlation_id=cid[:100] if cid else cid)
            return None
        caller = call.caller  # out of the call table now, and never held
        if caller.done:
            return None
        if reply.error is not None:
            payload: Any = reply.body
        elif reply.value is not UNDECODED and type(self.codec) is JSONCodec:
            payload = reply.value  # the convention parsed it already
        else:
            try:
                payload = self.codec.decode(reply.body, reply.content_type)
            except Exception as exc:
                self._log.warning("rpc.reply_undecodable", correlation_id=cid, error=repr(exc))
                caller.resolve(
                    exc
                    if isinstance(exc, HareError)
                    else RemoteError("UndecodableReply", f"{self.codec!r} could not decode: {exc}")
                )
                return None
        if self._default_response:  # what the default handle_response does, without a call
            caller.resolve(reply.error if reply.error is not None else payload)
            return None
        response = Response(
            payload, reply.headers, call.request.correlation_id, reply.content_type, reply.error
        )
        return self._respond(response, caller)

    async def _respond(self, response: Response, caller: Caller) -> None:
        self._deciding = caller
        result = await self.handle_response(response, caller, self._state)
        self._apply(result, "handle_response", caller)
        self._deciding = None

    async def _on_returned(self, returned: ReturnedMessage) -> None:
        cid = self.convention.returned_correlation(returned)
        call = self._calls.pop_reply(cid) if cid else None
        if call is None or call.caller.done:
            self._drops.drop("returned, caller gone", correlation_id=cid[:100] if cid else cid)
            return
        exchange, routing_key = self.convention.returned_address(returned, call.request.routing_key)
        info = Returned(
            call.request, exchange, routing_key, returned.reply_code, returned.reply_text
        )
        self._deciding = call.caller
        result = await self.handle_return(info, call.caller, self._state)
        self._apply(result, "handle_return", call.caller)
        self._deciding = None

    async def _on_channel_up(self, message: ChannelUp) -> None:
        if not message.channel.is_open:
            # Closed already: a crashed incarnation's channel whose ChannelUp outlived it
            # in the mailbox, or one that closed meanwhile (its keeper opens the next).
            return
        self._channel = self._last_channel = message.channel
        self._reply_queue = message.meta.reply_queue
        if self._otel is not None:
            self._otel.connected(message.meta.connects)
        result = await self.handle_connected(message.meta, self._state)
        self._apply(result, "handle_connected")
        await self._flush()

    async def _on_channel_down(self, message: ChannelDown) -> None:
        if message.channel is not self._last_channel:
            return
        self._channel = self._last_channel = None
        self._reply_queue = None
        reason = message.reason
        # With a lasting reply queue the replies in flight still arrive.
        lost = [] if self.convention.lasting else self._calls.lose_channel()
        for call in lost:
            call.caller.resolve(
                ConnectionLost(
                    f"channel closed while the request was in flight: {reason}", code=reason.code
                )
            )
        self._log.warning(
            "rpc.channel_lost", reason=str(reason), failed=len(lost), waiting=len(self._calls)
        )

    # -- what the channel keeper runs on every new channel ----------------------------

    def _note_error(self, error: BaseException | None) -> None:
        self.last_error = error

    async def _settled(self, session: Session) -> None:
        """The keeper's wait before it retires a session moved off: its successor's
        ChannelUp is in the mailbox already, so nothing is sent there after this."""
        done = anyio.Event()
        self._enqueue(_Settle(done))
        await done.wait()

    async def _on_settle(self, message: _Settle) -> None:
        self._settling.append((self._calls.sent_ids(), message.done))
        self._check_settled()

    def _check_settled(self) -> None:
        """Set the event of each _Settle whose calls have all left the table."""
        calls = self._calls
        still: list[tuple[set[str], anyio.Event]] = []
        for waiting, done in self._settling:
            waiting = {cid for cid in waiting if calls.is_sent(cid)}
            if waiting:
                still.append((waiting, done))
            else:
                done.set()
        self._settling = still

    async def _setup_channel(
        self, channel: Session, on_cancel: OnCancel, connects: int
    ) -> ConnectedMeta:
        queue = await self.convention.setup(channel, self._enqueue, on_cancel)
        return ConnectedMeta(queue, self.exchange, connects)
