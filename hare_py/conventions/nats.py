"""Plain NATS request/reply, as nats.go's ``micro`` and nats-py's ``nats.micro`` speak it.

A client sends a NATS request to the subject given as the routing key
(``await client.request(b"hi", "svc.echo")``), with the reply subject
``<inbox>.<correlation id>`` on its one inbox subscription. Request headers
travel as NATS headers and the codec's content type in ``Content-Type``; the
body is the payload, with no envelope.

A server serves the subjects given as ``routing_keys`` (or the one subject
given as ``queue``), each in queue group ``queue_group`` (default ``"q"``, as
micro's), so that the instances of a service share the requests and each is
handled once (``queue_group=""``: every instance gets every request). A
handler's error is an error reply with an empty body and the headers
``Nats-Service-Error`` (the text) and ``Nats-Service-Error-Code``:
500 for a handler's exception, 400 for a request the codec cannot decode, 503
for one a stopping server could not finish, and a handler that raises
``RemoteError("404", "no such key")`` sends that code. A client raises such a
reply as ``RemoteError(code, text)``.

The server is also a NATS service: it answers ``$SRV.PING``, ``$SRV.INFO`` and
``$SRV.STATS`` (and their ``.<name>`` and ``.<name>.<id>`` forms), listing its
subjects as endpoints named by the subject less the leading ``<service>.``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, RemoteError
from ..transport.base import EMPTY_PROPERTIES, Delivery, Message, Properties
from ..transport.subjects import check_queue_group
from ._nats_common import (
    CONTENT_TYPE_HEADER,
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    Endpoint,
    InboxClient,
    NatsServer,
    check_endpoint,
    check_service,
    error_code,
    first_value,
    inbox_correlation,
    nats_headers,
)
from .base import Convention, Incoming, IncomingReply, Outgoing, ServerOptions

__all__ = ["DEFAULT_QUEUE_GROUP", "NatsClient", "NatsServiceServer", "nats"]

#: The queue group of every endpoint unless ``queue_group=`` says otherwise (micro's).
DEFAULT_QUEUE_GROUP = "q"


class NatsClient(InboxClient):
    """Requests to the routing key as subject; replies on one muxed inbox."""

    def wrap(
        self, routing_key: str, body: bytes, content_type: str | None, headers: Mapping[str, Any],
        correlation_id: str, expiration: str | None, reply_queue: str,
    ) -> Outgoing:  # fmt: skip
        sent: dict[str, str | list[str]] | None = nats_headers(headers) if headers else None
        if content_type:
            sent = {**(sent or {}), CONTENT_TYPE_HEADER: content_type}
        props = Properties(reply_to=f"{reply_queue}.{correlation_id}", headers=sent)
        return Message("", routing_key, body, props)

    def unwrap(self, delivery: Delivery) -> IncomingReply:
        cid = inbox_correlation(delivery.routing_key)
        headers = delivery.properties.headers
        if not headers:
            return IncomingReply(cid, delivery.body, None)
        code = first_value(headers, ERROR_CODE_HEADER)
        text = first_value(headers, ERROR_HEADER)
        if code is not None or text is not None:
            error = RemoteError(code or "500", text or "")
            return IncomingReply(cid, b"", None, headers, error)
        return IncomingReply(cid, delivery.body, first_value(headers, CONTENT_TYPE_HEADER), headers)


class NatsServiceServer(NatsServer):
    """Serves its subjects in one queue group, answering errors in micro's headers."""

    def unwrap(self, delivery: Delivery) -> Incoming:
        self.answer_control(delivery)
        headers = delivery.properties.headers
        endpoint = self._by_sid.get(delivery.consumer_tag)
        return Incoming(
            body=delivery.body,
            content_type=first_value(headers, CONTENT_TYPE_HEADER) if headers else None,
            routing_key=delivery.routing_key,
            headers=headers or {},
            correlation_id=None,
            reply=delivery.properties.reply_to,
            stats=endpoint.stats if endpoint is not None else None,
        )

    def wrap(
        self, incoming: Incoming, body: bytes, content_type: str | None, error: BaseException | None
    ) -> Outgoing | None:
        if not incoming.reply:
            return None
        if error is not None:
            code, text = error_code(error)
            headers = {ERROR_HEADER: text, ERROR_CODE_HEADER: code}
            return Message("", incoming.reply, b"", Properties(headers=headers))
        if content_type:
            props = Properties(headers={CONTENT_TYPE_HEADER: content_type})
            return Message("", incoming.reply, body, props)
        return Message("", incoming.reply, body, EMPTY_PROPERTIES)


class _Nats(Convention):
    def __init__(
        self,
        service: str | None,
        version: str,
        description: str,
        queue_group: str | None,
        metadata: Mapping[str, str] | None,
    ) -> None:
        self.name = f"nats({service!r})" if service is not None else "nats()"
        self.service = service
        if not isinstance(description, str):
            raise ConfigError(f"description must be a string, got {description!r:.60}")
        self.description = description
        group = DEFAULT_QUEUE_GROUP if queue_group is None else queue_group
        if not isinstance(group, str):
            raise ConfigError(f"queue_group must be a string, got {group!r:.60}")
        if group:
            check_queue_group(group)
        self.queue_group = group
        self.metadata = check_service(service, version, metadata, self.name)
        self.version = version

    def client(self, exchange: str, exchange_type: str, durable: bool) -> NatsClient:
        if exchange:
            raise ConfigError(f"the {self.name} convention sends to subjects: drop exchange=")
        return NatsClient()

    def server(self, options: ServerOptions) -> NatsServiceServer:
        if self.service is None:
            raise ConfigError("a nats() server is a named service: nats('svc')")
        if options.exchange:
            raise ConfigError(f"the {self.name} convention serves subjects: drop exchange=")
        if options.routing_keys is not None and options.queue:
            raise ConfigError(
                f"a {self.name} server serves the subjects in routing_keys= or the one in "
                "queue=, not both"
            )
        subjects = options.routing_keys or ((options.queue,) if options.queue else ())
        if not subjects:
            raise ConfigError(
                f"a {self.name} server needs its subjects: routing_keys=['{self.service}.echo']"
            )
        prefix = f"{self.service}."
        endpoints = [
            Endpoint(
                s.removeprefix(prefix) or s,
                check_endpoint(s, self.queue_group, "each subject"),
                self.queue_group,
            )
            for s in subjects
        ]
        server = NatsServiceServer(
            self.service, self.version, self.description, self.metadata, endpoints
        )
        server.queue = subjects[0] if len(subjects) == 1 else self.service
        return server


def nats(
    service: str | None = None,
    *,
    version: str = "0.1.0",
    description: str = "",
    queue_group: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Convention:
    """Plain NATS request/reply and the NATS service API (see the module docstring).

    A client needs nothing (``nats()``); a server is the service named
    ``service`` (letters, digits, ``-`` and ``_``), at ``version`` (semantic),
    with ``description`` and ``metadata`` shown by ``$SRV.INFO``; its subjects
    share the requests among instances through ``queue_group`` (default "q").
    """
    return _Nats(service, version, description, queue_group, metadata)
