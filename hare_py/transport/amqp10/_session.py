"""``LinkSession``s: one actor's links, on a dialled connection or on a listener.

Rules this module keeps:

- A batch is encoded whole before any of it is sent (``UnsendableMessage``
  with the index of the first that cannot go), then handed to the senders in
  order; senders are opened on first use and cached per address (bounded:
  the least recently used idle one is closed past ``MAX_SENDERS``).
- A dialled session keeps its receivers on one AMQP session and its senders
  on another, so that a peer that ends the AMQP session to refuse a target
  (RabbitMQ 3.x does) costs the senders only: they are opened again on the
  next send, and the receivers stay.
- The close reason is settled once: ours, the peer's (a receiver detached,
  the receivers' AMQP session ended, a sender's transfers left in doubt),
  or the connection's end. Closing detaches every link it opened.
- Every settle of a delivery gives its receiver's credit back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import proton

from ..._log import get_logger
from ...errors import BrokerError, ConfigError, ConnectionLost
from ..base import (
    CloseReason,
    Delivery,
    LinkSession,
    Message,
    OnDelivery,
    OnReturn,
    Outcome,
    ReturnedMessage,
    SettleMode,
)
from ._engine import EndpointOwner, Engine, condition_reason, new_session
from ._links import Receiver, Sender
from ._message import encode

__all__ = ["MAX_SENDERS", "BaseLinkSession", "DialledSession"]

log = get_logger("hare_py.transport.amqp10")

MAX_SENDERS = 256
_CLOSED_BY_CLIENT = CloseReason(0, "closed by the client", "client")
_DISPOSITIONS = {
    "accept": proton.Delivery.ACCEPTED,
    "reject": proton.Delivery.REJECTED,
    "release": proton.Delivery.RELEASED,
}


def check_credit(credit: object, mode: object) -> int:
    if isinstance(credit, bool) or not isinstance(credit, int) or not 1 <= credit <= 100_000:
        raise ConfigError(f"credit must be an integer from 1 to 100000, got {credit!r}")
    if mode not in ("at-most-once", "at-least-once"):
        raise ConfigError(f"mode must be 'at-most-once' or 'at-least-once', got {mode!r}")
    return credit


class BaseLinkSession(LinkSession, EndpointOwner):
    """What both kinds of session share: returns, tracked deliveries, closing."""

    def __init__(self, on_return: OnReturn | None, max_body_size: int) -> None:
        self._on_return = on_return
        self.max_body_size = max_body_size
        self._close_reason: CloseReason | None = None
        self._closed = anyio.Event()
        self._tracked: dict[int, tuple[proton.Delivery, Receiver]] = {}
        self._tag = 0
        self._receivers: list[Receiver] = []

    @property
    def close_reason(self) -> CloseReason | None:
        return self._close_reason

    def track(self, delivery: proton.Delivery, receiver: Receiver) -> int:
        """A tag for an unsettled delivery, for ``settle``."""
        self._tag += 1
        self._tracked[self._tag] = (delivery, receiver)
        return self._tag

    def returned(self, message: ReturnedMessage) -> None:
        if self._on_return is None or self._close_reason is not None:
            return
        try:
            self._on_return(message)
        except Exception:
            log.exception("amqp10.callback_failed", callback="on_return")

    def link_lost(self, owner: EndpointOwner, reason: CloseReason, *, in_doubt: bool) -> None:
        """A link of ours is gone; an attached receiver or a sender with transfers
        in doubt closes the session."""
        if isinstance(owner, Receiver) and owner in self._receivers:
            self._receivers.remove(owner)
            if in_doubt:
                self.closed_by(reason)
        elif in_doubt:
            self.closed_by(reason)

    def _check_open(self) -> None:
        reason = self._close_reason
        if reason is not None:
            raise ConnectionLost(f"the AMQP 1.0 session is closed: {reason}", code=reason.code)

    def closed_by(self, reason: CloseReason) -> None:
        """Settle the close reason once, detach what is left and wake every waiter."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
        log.debug("amqp10.session_closed", reason=str(reason))
        for receiver in self._receivers:
            if not receiver.attached:
                receiver.failure = reason
                receiver.done.set()
        self._release()
        self._tracked.clear()
        self._closed.set()

    def _release(self) -> None:
        """Close this session's endpoints (the subclass knows them)."""

    async def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        entry = self._tracked.pop(delivery.delivery_tag, None)
        if entry is None or self._close_reason is not None:
            return  # settled already, presettled, or its link is gone
        state = _DISPOSITIONS.get(outcome)
        if state is None:
            raise ConfigError(f"outcome must be accept, reject or release, got {outcome!r}")
        handle, receiver = entry
        if receiver.engine.close_reason is not None or not receiver.link.state & (
            proton.Endpoint.LOCAL_ACTIVE
        ):
            return
        handle.update(state)
        handle.settle()
        receiver.settled()
        receiver.engine.wake()

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    async def _attached(self, receiver: Receiver) -> str:
        """Wait for the peer's answer to a receiver's attach."""
        receiver.engine.wake()
        with anyio.move_on_after(receiver.engine.config.connect_timeout):
            await receiver.done.wait()
        if not receiver.done.is_set():  # a peer that neither attaches nor refuses
            text = "the peer did not answer the receiver's attach"
            self.closed_by(CloseReason(0, text, "network"))
            raise ConnectionLost(f"cannot receive: {text}")
        failure = receiver.failure
        if failure is not None:
            if failure.by == "broker":
                raise BrokerError(failure.code, failure.text)
            raise ConnectionLost(f"cannot receive: {failure}", code=failure.code)
        assert receiver.address is not None
        return receiver.address


class DialledSession(BaseLinkSession):
    """One actor's links on a connection we dialled; see the module docstring."""

    def __init__(self, engine: Engine, on_return: OnReturn | None) -> None:
        super().__init__(on_return, engine.config.max_body_size)
        self._engine = engine
        self._in = new_session(engine, self)
        self._out: proton.Session | None = None
        self._senders: OrderedDict[str, Sender] = OrderedDict()
        engine.owners.add(self)
        engine.wake()

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<amqp10.DialledSession {len(self._receivers)} receivers {state}>"

    @property
    def peer_properties(self) -> Mapping[str, Any]:
        return self._engine.remote_properties

    # -- from the engine ---------------------------------------------------------

    def on_session_closed(self, session: proton.Session) -> None:
        reason = condition_reason(session.remote_condition, "the peer ended the session", "broker")
        if session == self._in:
            self.closed_by(reason)
            return
        if self._out is not None and session == self._out:
            self._out = None
            for sender in list(self._senders.values()):
                sender.fail(reason)

    def on_connection_closed(self, reason: CloseReason) -> None:
        self.closed_by(reason)

    def _release(self) -> None:
        self._engine.owners.discard(self)
        for receiver in self._receivers:
            receiver.close()
        self._receivers.clear()
        senders, self._senders = list(self._senders.values()), OrderedDict()
        for sender in senders:
            sender.gone = True
            sender.close()
        for session in (self._in, self._out):
            if session is not None and session.state & proton.Endpoint.LOCAL_ACTIVE:
                session.close()
        self._out = None
        self._engine.wake()

    # -- the seam ------------------------------------------------------------------

    async def open_receiver(
        self,
        address: str | None,
        on_message: OnDelivery,
        *,
        credit: int,
        mode: SettleMode = "at-least-once",
    ) -> str:
        check_credit(credit, mode)
        self._check_open()
        engine = self._engine
        link = self._in.receiver(engine.link_name("receiver"))
        source = link.source
        if address is None:
            source.dynamic = True
            source.expiry_policy = proton.Terminus.EXPIRE_WITH_LINK
        else:
            source.address = address
        if mode == "at-most-once":
            link.snd_settle_mode = proton.Link.SND_SETTLED
        else:
            link.snd_settle_mode = proton.Link.SND_UNSETTLED
        link.rcv_settle_mode = proton.Link.RCV_FIRST
        if self.max_body_size:
            link.max_message_size = self.max_body_size
        receiver = Receiver(self, engine, link, on_message, credit, mode, address)
        self._receivers.append(receiver)
        link.open()
        link.flow(receiver.credit)
        return await self._attached(receiver)

    def _sender(self, address: str) -> Sender:
        sender = self._senders.get(address)
        if sender is not None and not sender.gone:
            self._senders.move_to_end(address)
            return sender
        if self._out is None:
            self._out = new_session(self._engine, self)
        link = self._out.sender(self._engine.link_name("sender"))
        link.target.address = address
        link.snd_settle_mode = proton.Link.SND_MIXED
        sender = Sender(self, self._engine, link, address, self._forget_sender)
        link.open()
        self._senders[address] = sender
        if len(self._senders) > MAX_SENDERS:
            for old, idle in list(self._senders.items()):
                if not idle.unsettled and idle is not sender:
                    del self._senders[old]
                    idle.gone = True
                    idle.close()
                    break
        return sender

    def _forget_sender(self, sender: Sender) -> None:
        if self._senders.get(sender.address) is sender:
            del self._senders[sender.address]
        sender.close()

    async def send(self, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        self._check_open()
        engine = self._engine
        if engine.close_reason is not None:
            raise ConnectionLost(f"the AMQP 1.0 connection is closed: {engine.close_reason}")
        encoded = []
        for index, message in enumerate(messages):
            known = self._senders.get(message.routing_key)
            limit = known.max_message_size if known is not None else 0
            encoded.append(encode(message, index, limit))
        try:
            for message, data in zip(messages, encoded, strict=True):
                self._sender(message.routing_key).send(data, message, mandatory)
        except proton.ProtonException as exc:
            engine.fail(exc)
            raise ConnectionLost(f"the AMQP 1.0 connection failed: {exc}") from None
        engine.wake()
        await engine.wait_writable()

    async def close(self) -> None:
        self.closed_by(_CLOSED_BY_CLIENT)
