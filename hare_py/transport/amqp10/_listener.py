"""Peer to peer: a hare_py server listens, and peers dial in and open the links.

Rules this module keeps:

- The listener is the node for the addresses its sessions serve, as
  electron's ``Incoming``/``Accept`` has it: a link a peer opens *to* a
  served address is accepted and given the serving session's credit; to any
  other address it is refused with ``amqp:not-found`` (the peer's transfers
  come back). A link a peer opens *from* an address (its receiver) is
  accepted as the route for that address; a dynamic one gets a new,
  unguessable address ``reply-<token>``.
- A session's ``send`` goes out on a route of its address (round robin when
  several peers receive from it); with no route a mandatory message comes
  back with 404, another is dropped with a log line.
- A peer that goes away takes its links with it; a server session never
  closes because a peer left. Closing a session detaches the links serving
  it; closing the listener closes every peer and stops accepting.
- At most ``MAX_PEERS`` peers at once; the next is hung up on. A peer has
  ``connect_timeout`` to open its connection.
- Peers log in with ANONYMOUS only (proton's built-in server has no PLAIN);
  ``amqps://`` serves TLS through anyio.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import anyio.abc
import proton
from anyio.streams.tls import TLSListener

from ..._log import get_logger
from ...errors import ConfigError, ConnectFailed, ConnectionLost
from ..base import (
    AMQP_1_0,
    NOT_FOUND,
    CloseReason,
    Message,
    OnDelivery,
    OnReturn,
    ReturnedMessage,
    Session,
    SettleMode,
    TransportConnection,
)
from ._config import Amqp10Config
from ._engine import _NETWORK_ERRORS, EndpointOwner, Engine, Incoming, describe
from ._links import Receiver, Sender
from ._message import encode
from ._session import BaseLinkSession, check_credit

__all__ = ["MAX_PEERS", "Amqp10Listener", "ListenerSession", "listen"]

log = get_logger("hare_py.transport.amqp10")

MAX_PEERS = 1024
_CLOSED_BY_CLIENT = CloseReason(0, "closed by the client", "client")


class _Served:
    __slots__ = ("credit", "mode", "on_message", "session")

    def __init__(
        self, session: ListenerSession, on_message: OnDelivery, credit: int, mode: SettleMode
    ) -> None:
        self.session = session
        self.on_message = on_message
        self.credit = credit
        self.mode = mode


def _refuse(link: proton.Link, name: str, text: str) -> None:
    link.condition = proton.Condition(name, text)
    link.open()
    link.close()


class ListenerSession(BaseLinkSession):
    """One server actor's session on a listener; see the module docstring."""

    def __init__(self, listener: Amqp10Listener, on_return: OnReturn | None) -> None:
        super().__init__(on_return, listener.config.max_body_size)
        self._listener = listener
        self.served: list[str] = []

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<amqp10.ListenerSession serving {self.served} {state}>"

    @property
    def peer_properties(self) -> Mapping[str, Any]:
        return {}

    @property
    def listening(self) -> bool:
        return True

    @property
    def receivers(self) -> list[Receiver]:
        return self._receivers

    def link_lost(self, owner: EndpointOwner, reason: CloseReason, *, in_doubt: bool) -> None:
        """A peer's link ended: forget it and its deliveries; the session stays."""
        if isinstance(owner, Receiver):
            self.peer_gone(owner.engine, owner)

    def peer_gone(self, engine: Engine, receiver: Receiver | None = None) -> None:
        gone = [r for r in self._receivers if r is receiver or r.engine is engine]
        for each in gone:
            self._receivers.remove(each)
        if gone:
            self._tracked = {
                tag: entry for tag, entry in self._tracked.items() if entry[1] not in gone
            }

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
        if not address:
            raise ConfigError("a listening server serves a named address: give it one")
        self._listener.serve(address, _Served(self, on_message, credit, mode))
        self.served.append(address)
        return address

    async def send(self, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        self._check_open()
        listener = self._listener
        if listener.close_reason is not None:
            raise ConnectionLost(f"the listener is closed: {listener.close_reason}")
        encoded = []
        for index, message in enumerate(messages):
            route = listener.route(message.routing_key, rotate=False)
            limit = route.max_message_size if route is not None else 0
            encoded.append(encode(message, index, limit))
        touched: set[Engine] = set()
        for message, data in zip(messages, encoded, strict=True):
            route = listener.route(message.routing_key)
            if route is None:
                self._unroutable(message, mandatory)
                continue
            try:
                route.send(data, message, mandatory, self.returned)
            except proton.ProtonException as exc:
                route.engine.fail(exc)
                self._unroutable(message, mandatory)
                continue
            touched.add(route.engine)
        for engine in touched:
            engine.wake()
        for engine in touched:
            await engine.wait_writable()

    def _unroutable(self, message: Message, mandatory: bool) -> None:
        address = message.routing_key
        text = f"amqp:not-found: no peer receives from {address!r:.100}"
        if mandatory:
            self.returned(
                ReturnedMessage(message.body, message.properties, "", address, NOT_FOUND, text)
            )
        else:
            log.info("amqp10.reply_unroutable", address=address[:100])

    def _release(self) -> None:
        self._listener.unserve(self)
        for receiver in self._receivers:
            receiver.link.condition = proton.Condition(
                "amqp:link:detach-forced", "the server stopped serving this address"
            )
            receiver.close()
            receiver.engine.wake()
        self._receivers.clear()

    async def close(self) -> None:
        self.closed_by(_CLOSED_BY_CLIENT)


class Amqp10Listener(TransportConnection, Incoming):
    """A listening AMQP 1.0 node: the ``TransportConnection`` of ``listen=1`` URLs."""

    wire_protocol: ClassVar[str] = AMQP_1_0
    max_body_size: int

    def __init__(self, config: Amqp10Config) -> None:
        self.config = config
        self.max_body_size = config.max_body_size
        self._served: dict[str, list[_Served]] = {}
        self._routes: dict[str, list[Sender]] = {}
        self._sessions: set[ListenerSession] = set()
        self._engines: set[Engine] = set()
        self._close_reason: CloseReason | None = None
        self._closed = anyio.Event()
        self._turn = 0

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<Amqp10Listener {self.config.where} {len(self._engines)} peers {state}>"

    @property
    def close_reason(self) -> CloseReason | None:
        return self._close_reason

    @property
    def peers(self) -> int:
        """Peers connected now."""
        return len(self._engines)

    # -- what sessions ask -------------------------------------------------------

    def serve(self, address: str, served: _Served) -> None:
        self._served.setdefault(address, []).append(served)

    def unserve(self, session: ListenerSession) -> None:
        self._sessions.discard(session)
        for address in list(self._served):
            kept = [s for s in self._served[address] if s.session is not session]
            if kept:
                self._served[address] = kept
            else:
                del self._served[address]

    def route(self, address: str, *, rotate: bool = True) -> Sender | None:
        """A live link a peer receives ``address`` on (the next one, round robin)."""
        routes = self._routes.get(address)
        if not routes:
            return None
        if rotate and len(routes) > 1:
            routes.append(routes.pop(0))
        return routes[-1] if rotate else routes[0]

    # -- Home, for the routes' senders -------------------------------------------

    def track(self, delivery: proton.Delivery, receiver: Receiver) -> int:
        raise AssertionError("a route receives nothing")

    def returned(self, message: ReturnedMessage) -> None:
        log.info("amqp10.reply_not_taken", address=message.routing_key[:100])

    def link_lost(self, owner: EndpointOwner, reason: CloseReason, *, in_doubt: bool) -> None:
        """A route went away with transfers unsettled: they are lost with it."""
        log.info("amqp10.route_lost", reason=str(reason))

    def _route_gone(self, sender: Sender) -> None:
        routes = self._routes.get(sender.address)
        if routes is not None and sender in routes:
            routes.remove(sender)
            if not routes:
                del self._routes[sender.address]
        sender.close()
        sender.engine.wake()

    # -- links the peers open ------------------------------------------------------

    def on_incoming_link(self, engine: Engine, link: proton.Link) -> None:
        if link.is_receiver:
            self._incoming_sender_of_peer(engine, link)
        else:
            self._incoming_receiver_of_peer(engine, link)

    def _incoming_sender_of_peer(self, engine: Engine, link: Any) -> None:
        address = link.remote_target.address
        served = self._served.get(address) if address else None
        if not served:
            _refuse(link, "amqp:not-found", f"nothing is served at {address!r:.100}")
            return
        self._turn += 1
        chosen = served[self._turn % len(served)]
        link.target.address = address
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = proton.Link.RCV_FIRST
        if self.config.max_body_size:
            link.max_message_size = self.config.max_body_size
        session = chosen.session
        receiver = Receiver(
            session, engine, link, chosen.on_message, chosen.credit, chosen.mode, address
        )
        receiver.attached = True
        session.receivers.append(receiver)
        link.open()
        link.flow(receiver.credit)

    def _incoming_receiver_of_peer(self, engine: Engine, link: Any) -> None:
        source = link.remote_source
        address = f"reply-{secrets.token_urlsafe(16)}" if source.dynamic else source.address
        if not address:
            _refuse(link, "amqp:not-found", "a receiver needs an address or a dynamic source")
            return
        link.source.address = address
        link.target.address = link.remote_target.address
        link.snd_settle_mode = link.remote_snd_settle_mode
        sender = Sender(self, engine, link, address, self._route_gone)
        self._routes.setdefault(address, []).append(sender)
        link.open()

    # -- peers -------------------------------------------------------------------

    async def serve_peer(self, stream: anyio.abc.ByteStream) -> None:
        """Run one peer's connection until it ends (the listener's handler)."""
        config = self.config
        if self._close_reason is not None or len(self._engines) >= MAX_PEERS:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        where = f"a peer of {config.where}"
        engine = Engine(stream, config, server=True, incoming=self, where=where)
        self._engines.add(engine)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(engine.run)
                try:
                    with anyio.move_on_after(config.connect_timeout):
                        await engine.opened.wait()
                    if engine.close_reason is None and engine.opened.is_set():
                        await engine.closed.wait()
                finally:
                    await engine.close()  # bounded and shielded; ends the engine's tasks
        except Exception as exc:  # one peer must not end the listener
            log.error("amqp10.peer_failed", url=config.where, error=repr(exc)[:300])
        finally:
            self._peer_gone(engine)

    def _peer_gone(self, engine: Engine) -> None:
        self._engines.discard(engine)
        for address in list(self._routes):
            kept = [s for s in self._routes[address] if s.engine is not engine]
            if kept:
                self._routes[address] = kept
            else:
                del self._routes[address]
        for session in list(self._sessions):
            session.peer_gone(engine)

    # -- the TransportConnection ---------------------------------------------------

    async def open_session(self, *, on_return: OnReturn | None = None) -> Session:
        reason = self._close_reason
        if reason is not None:
            raise ConnectionLost(f"the listener is closed: {reason}", code=reason.code)
        session = ListenerSession(self, on_return)
        self._sessions.add(session)
        return session

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    def stopped(self, reason: CloseReason) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            for session in list(self._sessions):
                session.closed_by(CloseReason(reason.code, reason.text, "connection"))
            self._closed.set()

    async def close(self) -> None:
        self.stopped(_CLOSED_BY_CLIENT)
        engines = list(self._engines)
        with anyio.CancelScope(shield=True):
            for engine in engines:
                await engine.close()


@asynccontextmanager
async def listen(config: Amqp10Config) -> AsyncIterator[Amqp10Listener]:
    """Listen on the config's host and port until the block exits."""
    where = config.where
    try:
        context = config.ssl_context()
        sockets: anyio.abc.Listener[Any] = await anyio.create_tcp_listener(
            local_host=config.host, local_port=config.port, reuse_port=False
        )
    except ConfigError:
        raise
    except (*_NETWORK_ERRORS, ssl.SSLError) as exc:
        raise ConnectFailed(f"cannot listen on {where}: {describe(exc)}") from None
    if context is not None:
        sockets = TLSListener(sockets, context, standard_compatible=False)
    listener = Amqp10Listener(config)
    log.info("amqp10.listening", url=where, tls=context is not None)
    body_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:

            async def accept() -> None:
                try:
                    await sockets.serve(listener.serve_peer)
                except* (*_NETWORK_ERRORS, ssl.SSLError) as group:
                    text = f"the listening socket failed: {group.exceptions[0]}"
                    listener.stopped(CloseReason(0, text, "network"))

            tg.start_soon(accept)
            try:
                yield listener
            except BaseException as exc:
                body_error = exc
            finally:
                await listener.close()  # the peers' last frames, before their tasks go
                tg.cancel_scope.cancel()
    finally:
        # Also when cancelled: the task group's exit raises then, and the port must go.
        with anyio.CancelScope(shield=True):
            await sockets.aclose()
    if body_error is not None:
        raise body_error
