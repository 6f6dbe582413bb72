"""Links of a ``LinkSession``: receivers with credit, senders with outcomes.

Rules this module keeps:

- A receiver keeps ``credit`` messages in hand at most: at-least-once
  counts what is delivered and not yet settled, at-most-once what is not
  yet handed on; credit is given back in batches, never past the bound.
- A delivery is read in pieces as it arrives and bounded by the
  connection's ``max_body_size``: past it the rest is dropped and the
  delivery handed on ``undecodable`` (and, at least once, rejected by its
  consumer), so that a large transfer cannot fill the session window or
  the memory.
- A sender remembers each unsettled transfer until its outcome; anything
  but accepted goes to the session's returns for a mandatory one, and is
  logged otherwise. A sender whose link is refused before it ever had
  credit sent nothing: its transfers all come back. One detached after it
  had credit leaves its unsettled transfers in doubt: the session closes.
- Callbacks into the session's user never raise into the engine: a failing
  one is logged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import proton

from ..._log import get_logger
from ..base import (
    EMPTY_PROPERTIES,
    NO_ROUTE,
    CloseReason,
    Delivery,
    Message,
    OnDelivery,
    ReturnedMessage,
    SettleMode,
)
from ._engine import EndpointOwner, Engine, condition_reason
from ._message import decode, reply_code

__all__ = ["Home", "Receiver", "Sender"]

log = get_logger("hare_py.transport.amqp10")

_ACCEPTED = proton.Delivery.ACCEPTED
_REJECTED = proton.Delivery.REJECTED
_RELEASED = proton.Delivery.RELEASED
_MODIFIED = proton.Delivery.MODIFIED
OnReturned = Callable[[ReturnedMessage], None]

_cproton: Any = importlib.import_module("cproton")  # proton's C binding, untyped
_aborted, _readable = _cproton.pn_delivery_aborted, _cproton.pn_delivery_readable
_pending, _partial = _cproton.pn_delivery_pending, _cproton.pn_delivery_partial
_settled, _settle = _cproton.pn_delivery_settled, _cproton.pn_delivery_settle
_recv, _advance, _EOS = _cproton.pn_link_recv, _cproton.pn_link_advance, _cproton.PN_EOS
_new_delivery, _send = _cproton.pn_delivery, _cproton.pn_link_send
_updated, _remote_state = _cproton.pn_delivery_updated, _cproton.pn_delivery_remote_state
_link_state, _link_credit, _link_flow = (
    _cproton.pn_link_state,
    _cproton.pn_link_credit,
    _cproton.pn_link_flow,
)
_LOCAL_ACTIVE, _remote_max_size = _cproton.PN_LOCAL_ACTIVE, _cproton.pn_link_remote_max_message_size
_wrap_delivery: Any = proton.Delivery.wrap


class Home(Protocol):
    """What a link needs of the session (or listener) it belongs to."""

    max_body_size: int

    def track(self, delivery: proton.Delivery, receiver: Receiver) -> int: ...
    def returned(self, message: ReturnedMessage) -> None: ...
    def link_lost(self, owner: EndpointOwner, reason: CloseReason, *, in_doubt: bool) -> None: ...


class Receiver(EndpointOwner):
    """One receiving link and its credit; deliveries go to ``on_message``."""

    def __init__(
        self,
        session: Home,
        engine: Engine,
        link: proton.Receiver,
        on_message: OnDelivery,
        credit: int,
        mode: SettleMode,
        address: str | None,
    ) -> None:
        self.session = session
        self.engine = engine
        self.link = link
        self.on_message = on_message
        self.credit = max(1, credit)
        self.mode = mode
        self.address = address
        self.name = str(link.name)
        self.unsettled = 0
        self.attached = False
        self.failure: CloseReason | None = None
        self.done = anyio.Event()
        self._parts: list[bytes] = []
        self._size = 0
        self._over = False
        link.owner = self

    def grant(self) -> None:
        """Give credit back up to the bound, in batches of at least half of it."""
        link = self.link._impl  # per message: through the C binding, not the wrapper
        if not _link_state(link) & _LOCAL_ACTIVE:
            return
        credit = _link_credit(link)
        room = self.credit - credit - self.unsettled
        if room > 0 and (room >= self.credit // 2 or credit == 0):
            _link_flow(link, room)

    def on_link_opened(self, link: proton.Link) -> None:
        source = link.remote_source
        if source.address is None and not source.dynamic and self.address is not None:
            return  # a refusal: the detach with its condition follows
        address = source.address
        if address is None:
            return  # a dynamic node the peer did not make: its detach follows
        self.address = str(address)
        self.attached = True
        self.done.set()

    def on_link_closed(self, link: proton.Link) -> None:
        reason = condition_reason(
            link.remote_condition, f"link {self.name} detached by the peer", "broker"
        )
        if not self.attached:
            self.failure = reason
            self.done.set()
        self.session.link_lost(self, reason, in_doubt=self.attached)

    def on_connection_closed(self, reason: CloseReason) -> None:
        if not self.attached:
            self.failure = reason
            self.done.set()

    def on_delivery(self, delivery: proton.Delivery) -> None:
        self.on_raw_delivery(delivery._impl)

    def on_raw_delivery(self, delivery: Any) -> None:
        # Through proton's C binding: a wrapper per delivery is most of the cost of one.
        link = self.link
        if _aborted(delivery):
            self._reset()
            _settle(delivery)
            self.grant()
            return
        if not _readable(delivery):
            return
        pending = _pending(delivery)
        if pending > 0:
            n, data = _recv(link._impl, pending)
            if n < 0 and n != _EOS:
                link._check(n)  # raises proton's error for it
            if n > 0 and data:
                self._size += len(data)
                limit = self.session.max_body_size
                if limit and self._size > limit + 64 * 1024:  # room for the sections around it
                    self._over = True
                    self._parts.clear()
                elif not self._over:
                    self._parts.append(data)
        if _partial(delivery):
            return
        _advance(link._impl)
        over, size = self._over, self._size
        data = b"".join(self._parts)
        self._reset()
        presettled = _settled(delivery) or self.mode == "at-most-once"
        tag = 0 if presettled else self.session.track(_wrap_delivery(delivery), self)
        if presettled:
            _settle(delivery)
        else:
            self.unsettled += 1
        address = self.address or ""
        if over:
            limit = self.session.max_body_size
            handed = Delivery(
                b"", EMPTY_PROPERTIES, "", address, tag, self.name, False,
                f"a body of {size} bytes is over max_body_size={limit}",
            )  # fmt: skip
        else:
            handed = decode(data, address, tag, self.name, False)
        self.grant()
        try:
            self.on_message(handed)
        except Exception:
            log.exception("amqp10.callback_failed", callback="on_message", link=self.name)

    def settled(self) -> None:
        """One of this link's deliveries was settled by the session's user."""
        if self.unsettled:
            self.unsettled -= 1
        self.grant()

    def _reset(self) -> None:
        self._parts = []
        self._size = 0
        self._over = False

    def close(self) -> None:
        link = self.link
        if link.state & proton.Endpoint.LOCAL_ACTIVE:
            link.close()


class _Sent:
    __slots__ = ("mandatory", "message", "on_return")

    def __init__(self, message: Message, mandatory: bool, on_return: OnReturned | None) -> None:
        self.message = message
        self.mandatory = mandatory
        self.on_return = on_return


class Sender(EndpointOwner):
    """One sending link to an address; remembers its unsettled transfers."""

    def __init__(
        self,
        session: Home,
        engine: Engine,
        link: proton.Sender,
        address: str,
        on_gone: Callable[[Sender], None],
    ) -> None:
        self.session = session
        self.engine = engine
        self.link = link
        self.address = address
        self.name = str(link.name)
        self.credited = False  # the peer gave credit once: transfers may have left
        self.gone = False
        self.unsettled: dict[Any, _Sent] = {}
        self._on_gone = on_gone
        self._tags = 0
        link.owner = self

    @property
    def max_message_size(self) -> int:
        size = _remote_max_size(self.link._impl)  # read per message sent
        return int(size) if size else 0

    def send(
        self, data: bytes, message: Message, mandatory: bool, on_return: OnReturned | None = None
    ) -> None:
        """Queue one transfer; a mandatory one is unsettled until its outcome, which
        goes to ``on_return`` (default: the session's) unless it is accepted."""
        # Through proton's C binding, as a receiver reads: its wrappers were most of
        # the cost of a transfer. Unsettled ones are known by their C pointer.
        link = self.link._impl
        self._tags += 1
        delivery = _new_delivery(link, str(self._tags))
        sent = _send(link, data)
        if sent < 0:
            self.link._check(sent)  # raises proton's error for it
        _advance(link)
        if mandatory:
            self.unsettled[delivery] = _Sent(message, True, on_return)
        else:
            _settle(delivery)

    def on_flow(self, link: proton.Link) -> None:
        if link.credit > 0:
            self.credited = True

    def on_link_opened(self, link: proton.Link) -> None:
        if link.credit > 0:
            self.credited = True

    def on_delivery(self, delivery: proton.Delivery) -> None:
        self.on_raw_delivery(delivery._impl)

    def on_raw_delivery(self, delivery: Any) -> None:
        self.credited = True
        if not _updated(delivery):
            return
        state = _remote_state(delivery)
        if state not in (_ACCEPTED, _REJECTED, _RELEASED, _MODIFIED) and not _settled(delivery):
            return  # received, or no outcome yet
        sent = self.unsettled.pop(delivery, None)
        if sent is None or state == _ACCEPTED:
            _settle(delivery)
            return
        self._outcome(sent, state, _wrap_delivery(delivery))

    def _outcome(self, sent: _Sent, state: int, delivery: proton.Delivery) -> None:
        """A transfer not accepted: read why before settling it, then return it."""
        if state == _REJECTED:
            condition = delivery.remote.condition
            name = str(condition.name) if condition is not None else "amqp:rejected"
            text = (
                f"{name}: {condition.description}" if condition and condition.description else name
            )
            code = reply_code(name) if condition is not None else NO_ROUTE
        elif state == _MODIFIED and not delivery.remote.undeliverable:
            code, text = NO_ROUTE, "modified: not delivered"
        else:
            code, text = NO_ROUTE, "released: nobody took it"
        delivery.settle()
        self._return(sent, code, text[:500])

    def _return(self, sent: _Sent, code: int, text: str) -> None:
        if not sent.mandatory:
            log.warning("amqp10.send_failed", address=self.address, code=code, text=text)
            return
        body, props = sent.message.body, sent.message.properties
        returned = ReturnedMessage(body, props, "", self.address, code, text)
        if sent.on_return is not None:
            sent.on_return(returned)
        else:
            self.session.returned(returned)

    def on_link_closed(self, link: proton.Link) -> None:
        reason = condition_reason(
            link.remote_condition, f"the peer detached the link to {self.address}", "broker"
        )
        self.fail(reason)

    def on_session_closed(self, session: proton.Session) -> None:
        self.fail(condition_reason(session.remote_condition, "session ended", "broker"))

    def fail(self, reason: CloseReason) -> None:
        """The link is gone: its transfers come back, or are in doubt."""
        if self.gone:
            return
        self.gone = True
        self._on_gone(self)
        unsettled, self.unsettled = self.unsettled, {}
        if self.credited and unsettled:
            self.session.link_lost(self, reason, in_doubt=True)
            return
        level = log.info if unsettled else log.debug
        level("amqp10.sender_closed", address=self.address, reason=str(reason))
        code = reason.code if reason.code not in (0, 200) else NO_ROUTE
        for sent in unsettled.values():
            self._return(sent, code, reason.text)

    def on_connection_closed(self, reason: CloseReason) -> None:
        self.gone = True
        self.unsettled.clear()

    def close(self) -> None:
        link = self.link
        if link.state & proton.Endpoint.LOCAL_ACTIVE:
            link.close()
