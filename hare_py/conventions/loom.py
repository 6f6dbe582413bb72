"""Loom's NATS RPC: ``loom.rpc.{serviceType}.{instanceID}.{method}`` and JSON envelopes.

Requests are NATS requests to ``loom.rpc.{serviceType}.{instanceID}.{method}``
(a method may hold dots: ``task.assign``) carrying the envelope
``{"method", "caller_id", "payload", "trace_id"}``, where ``payload`` is raw
JSON and ``trace_id`` the current OpenTelemetry trace's id when tracing is on
(the W3C context itself travels in NATS headers, as with every convention);
the answer is ``{"ok", "payload", "error"}`` on the request's reply subject,
and ``ok: false`` is a ``RemoteError`` with the error text.

A client names the instance in its routing key: ``"inst123.task.assign"``
for one instance, ``"any.task.assign"`` for any instance of the service.

"Any instance", made to work: Loom's own callers ask for a wildcard subject
(``loom.rpc.svc.*.method``), but nats-server delivers a request to a
wildcard subject to no responder. Every hare_py Loom server instance
therefore also serves ``loom.rpc.{svc}.any.{method}`` in queue group
``{svc}``, so that each such request is handled by exactly one instance, and
``any`` is a reserved instance id. With ``compat_wildcard=True`` an instance
also joins queue group ``{svc}`` on ``loom.rpc.{svc}.*.{method}`` and answers
there only when the instance token is literally ``*`` (or ``any``), which is
what an unmodified Loom caller sends. The cost: every instance-addressed call
is also delivered once to some member of the group, which drops it, and so a
call to an instance that does not exist waits out its deadline instead of
failing at once as ``Unroutable``.

A server also answers the NATS service API (``$SRV.PING``/``INFO``/``STATS``,
see ``_nats_common``) as the service named by its service type, its
subscriptions being the endpoints, and drains when it stops.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

from .._ids import random_ids
from ..errors import ConfigError, RemoteError
from ..transport.base import EMPTY_PROPERTIES, Delivery, Message, Properties
from ._nats_common import Endpoint, InboxClient, NatsServer, inbox_correlation, nats_headers
from .base import (
    Convention,
    Incoming,
    IncomingReply,
    NotForThisServer,
    Outgoing,
    ServerOptions,
)

__all__ = ["ANY", "LoomClient", "LoomServer", "loom"]

#: The instance id that reaches any one instance of a service.
ANY = "any"
_PREFIX = "loom.rpc"
_TOKEN = re.compile(r"[^.*>\s]+")  # a subject token: no dots, wildcards or whitespace
_MAX_ENVELOPE = 64 * 1024 * 1024
_MAX_ROUTES = 1024  # routing keys whose subject and method a client keeps checked
JSON_TYPE = "application/json"
_OK = b'{"ok":true,"payload":%s,"error":""}'  # Loom's field order, as Go marshals it
_OK_HEAD, _OK_TAIL = _OK.split(b"%s")


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


# As json.loads, but NaN and Infinity are refused, as _dump refuses them.
_DECODE = json.JSONDecoder(parse_constant=_not_json).decode
_STRING = rb'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'  # a JSON string
#: A request as Loom's Go caller and hare_py marshal it: method, caller_id, payload, trace_id.
_REQUEST = re.compile(
    rb'\{"method":(%s),"caller_id":(%s),"payload":(.+),"trace_id":(%s)\}' % ((_STRING,) * 3),
    re.S,
)
# Compact, and NaN and Infinity refused: they are not JSON, and Go peers refuse them.
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
#: A W3C traceparent: version, trace id, parent id, flags (the trace id must not be all 0).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def _trace_id(headers: Mapping[str, Any], fresh: Iterator[str]) -> str:
    """The envelope's trace id: the current trace's, which tracing put in the request's
    ``traceparent`` header, or a fresh random one, so that every call has one (Loom's
    own Go caller sends none)."""
    parent = headers.get("traceparent")
    if isinstance(parent, str):
        match = _TRACEPARENT.match(parent)
        if match is not None:
            return match.group(1)
    return next(fresh)


def _token(value: object, what: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ConfigError(
            f"{what} must be a non-empty string without '.', '*', '>' or whitespace, "
            f"got {value!r:.60}"
        )
    return value


def _method(value: object, what: str = "method") -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r:.60}")
    for part in value.split("."):
        _token(part, f"each dot-separated part of {what} {value!r:.60}")
    return value


def _json_payload(body: bytes, content_type: str | None) -> bytes:
    """The request or reply payload as raw JSON text for the envelope.

    A body of ``content_type`` application/json is a JSON codec's output and
    goes in as it is; any other body is checked to be JSON (and made compact).
    """
    if not body:
        return b"null"
    if content_type == JSON_TYPE:
        return body
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise ConfigError(
            "Loom payloads are JSON: start the client or server with codec=JSON, or pass JSON bytes"
        ) from None
    return _dump(value)


def _open_envelope(body: bytes, what: str) -> dict[str, Any]:
    if len(body) > _MAX_ENVELOPE:
        raise ValueError(f"{what} envelope over {_MAX_ENVELOPE} bytes")
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} envelope is not JSON: {str(exc)[:100]}") from None
    if not isinstance(envelope, dict):
        raise ValueError(f"{what} envelope is not a JSON object")
    return envelope


def _splice_request(body: bytes, method: str) -> tuple[bytes, Any, str] | None:
    """(payload JSON, payload, trace id) of a request envelope in the field order
    Loom's Go caller and hare_py marshal, without parsing the envelope; None for
    any other (it is then read whole). The payload between must parse alone:
    only then is the envelope exactly these four fields."""
    if len(body) > _MAX_ENVELOPE:
        return None
    match = _REQUEST.fullmatch(body)
    if match is None:
        return None
    named, caller, payload_json, trace = match.groups()
    if named != b'"%s"' % method.encode() or b"\\" in named:
        return None  # another method, or one spelled with escapes: read it whole
    try:
        caller.decode()  # the envelope is UTF-8 throughout
        payload = _DECODE(payload_json.decode())
        trace_id = trace[1:-1].decode() if b"\\" not in trace else _DECODE(trace.decode())
    except (ValueError, RecursionError):
        return None
    return payload_json, payload, trace_id


def _dump(value: Any) -> bytes:
    try:
        return _ENCODE(value).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"cannot encode the Loom envelope: {exc}") from None


class LoomClient(InboxClient):
    """Calls ``loom.rpc.{svc}.{instance}.{method}`` through one muxed inbox."""

    def __init__(self, service_type: str, caller_id: str) -> None:
        self.service_type = service_type
        self.caller_id = caller_id
        self.exchange = f"{_PREFIX}.{service_type}"
        self._caller_json = _ENCODE(caller_id).encode()
        self._routes: dict[str, tuple[str, bytes]] = {}
        self._trace_ids = random_ids(32, hex=True)  # as W3C trace ids

    def request_subject(self, routing_key: str) -> str:
        return f"{self.exchange}.{routing_key}"

    def _route(self, routing_key: str) -> tuple[str, bytes]:
        """The subject and the envelope's JSON method for ``routing_key``, checked once."""
        route = self._routes.get(routing_key)
        if route is None:
            instance, dot, method = routing_key.partition(".")
            if not dot:
                raise ConfigError(
                    f"a Loom routing key is '<instance>.<method>' or 'any.<method>', "
                    f"got {routing_key!r:.60}"
                )
            _token(instance, "the instance id ('any' for any instance)")
            _method(method)
            if len(self._routes) >= _MAX_ROUTES:
                self._routes.clear()
            route = self._routes[routing_key] = (
                f"{self.exchange}.{routing_key}",
                _ENCODE(method).encode(),
            )
        return route

    def wrap(
        self, routing_key: str, body: bytes, content_type: str | None, headers: Mapping[str, Any],
        correlation_id: str, expiration: str | None, reply_queue: str,
    ) -> Outgoing:  # fmt: skip
        subject, method = self._route(routing_key)
        envelope = b'{"method":%s,"caller_id":%s,"payload":%s,"trace_id":"%s"}' % (
            method,
            self._caller_json,
            _json_payload(body, content_type),
            _trace_id(headers, self._trace_ids).encode(),
        )
        return Message(
            "",
            subject,
            envelope,
            Properties(
                reply_to=f"{reply_queue}.{correlation_id}",
                headers=nats_headers(headers) if headers else None,
            ),
        )

    def unwrap(self, delivery: Delivery) -> IncomingReply:
        cid = inbox_correlation(delivery.routing_key)
        body = delivery.body
        if body.startswith(_OK_HEAD) and body.endswith(_OK_TAIL) and len(body) <= _MAX_ENVELOPE:
            # As Loom's Go server and hare_py's marshal a success: the payload is the
            # JSON between, and if it parses alone, the envelope is exactly that.
            payload_json = body[len(_OK_HEAD) : -len(_OK_TAIL)]
            try:
                value = _DECODE(payload_json.decode())
            except (ValueError, RecursionError):
                pass  # not one JSON value: read the envelope whole
            else:
                headers = delivery.properties.headers or {}
                return IncomingReply(cid, payload_json, JSON_TYPE, headers, value=value)
        envelope = _open_envelope(body, "response")
        ok = envelope.get("ok")
        if not isinstance(ok, bool):
            raise ValueError("response envelope has no boolean 'ok'")
        headers = delivery.properties.headers or {}
        if not ok:
            error = envelope.get("error")
            text = error if isinstance(error, str) else json.dumps(error)[:1000]
            return IncomingReply(cid, b"", None, headers, RemoteError("LoomError", text))
        payload = envelope.get("payload")
        return IncomingReply(cid, _dump(payload), JSON_TYPE, headers)


class LoomServer(NatsServer):
    """Serves the methods of one instance, and of any instance through queue group ``svc``.

    Its service API name is the service type; its endpoints, per method, are
    the instance's subject, the ``any`` subject and (``compat_wildcard``) the
    wildcard subject, each named by the method (``>`` for every method).
    """

    def __init__(
        self,
        service_type: str,
        instance_id: str,
        methods: tuple[str, ...] | None,
        compat_wildcard: bool,
    ) -> None:
        self.service_type = service_type
        self.instance_id = instance_id
        self.methods = methods
        self.compat_wildcard = compat_wildcard
        self.exchange = f"{_PREFIX}.{service_type}"
        self.queue = f"{self.exchange}.{instance_id}"
        endpoints: list[Endpoint] = []
        compat: list[Endpoint] = []
        for method in methods or (">",):
            endpoints.append(Endpoint(method, f"{self.queue}.{method}", ""))
            endpoints.append(Endpoint(method, f"{self.exchange}.{ANY}.{method}", service_type))
            if compat_wildcard:
                compat.append(Endpoint(method, f"{self.exchange}.*.{method}", service_type))
        super().__init__(
            service_type, "0.0.0", "", {"instance_id": instance_id}, endpoints + compat
        )
        self._compat = frozenset(compat)

    def unwrap(self, delivery: Delivery) -> Incoming:
        self.answer_control(delivery)
        rest = delivery.routing_key[len(self.exchange) + 1 :]
        instance, _, method = rest.partition(".")
        endpoint = self._by_sid.get(delivery.consumer_tag)
        if endpoint in self._compat and instance not in ("*", ANY):
            # Addressed to one instance, also seen through the compat wildcard group.
            # ('any' requests match both group subscriptions; the group delivers once.)
            raise NotForThisServer(delivery.routing_key)
        props = delivery.properties
        stats = endpoint.stats if endpoint is not None else None
        spliced = _splice_request(delivery.body, method)
        if spliced is not None:
            body, value, trace_id = spliced
            return Incoming(
                body=body,
                content_type=JSON_TYPE,
                routing_key=method,
                headers=dict(props.headers or {}),
                correlation_id=None,
                reply=props.reply_to,
                trace_id=trace_id,
                stats=stats,
                value=value,
            )
        envelope = _open_envelope(delivery.body, "request")
        named = envelope.get("method")
        if named is not None and named != method:
            raise ValueError(f"envelope method {named!r:.60} differs from the subject's")
        payload = envelope.get("payload")
        trace = envelope.get("trace_id")
        return Incoming(
            body=_dump(payload) if payload is not None else b"null",
            content_type=JSON_TYPE,
            routing_key=method,
            headers=dict(props.headers or {}),
            correlation_id=None,
            reply=props.reply_to,
            trace_id=trace if isinstance(trace, str) else None,
            stats=stats,
        )

    def wrap(
        self, incoming: Incoming, body: bytes, content_type: str | None, error: BaseException | None
    ) -> Outgoing | None:
        if not incoming.reply:
            return None
        if error is None:
            envelope = _OK % _json_payload(body, content_type)
        else:
            text = error.message if isinstance(error, RemoteError) else str(error)
            envelope = _dump({"ok": False, "payload": None, "error": text or repr(error)})
        return Message("", incoming.reply, envelope, EMPTY_PROPERTIES)


class _Loom(Convention):
    def __init__(
        self,
        service_type: str,
        instance_id: str | None,
        caller_id: str | None,
        compat_wildcard: bool,
    ) -> None:
        self.name = f"loom({service_type!r})"
        self.service_type = _token(service_type, "service_type")
        if instance_id is not None:
            _token(instance_id, "instance_id")
            if instance_id == ANY:
                raise ConfigError(f"instance id {ANY!r} is reserved: it reaches any instance")
        self.instance_id = instance_id
        if caller_id is not None and (not isinstance(caller_id, str) or not caller_id):
            raise ConfigError(f"caller_id must be a non-empty string, got {caller_id!r:.60}")
        self.caller_id = caller_id or f"hare-py-{secrets.token_hex(4)}"
        if not isinstance(compat_wildcard, bool):
            raise ConfigError(f"compat_wildcard must be True or False, got {compat_wildcard!r}")
        self.compat_wildcard = compat_wildcard

    def client(self, exchange: str, exchange_type: str, durable: bool) -> LoomClient:
        if exchange:
            raise ConfigError(f"the {self.name} convention names its own subjects: drop exchange=")
        return LoomClient(self.service_type, self.caller_id)

    def server(self, options: ServerOptions) -> LoomServer:
        if self.instance_id is None:
            raise ConfigError(f"a {self.name} server needs instance_id=")
        if options.exchange or options.queue:
            raise ConfigError(
                f"the {self.name} convention names its own subjects: drop queue= and exchange="
            )
        methods = None
        if options.routing_keys is not None:
            methods = tuple(_method(m, "each of routing_keys") for m in options.routing_keys)
        return LoomServer(self.service_type, self.instance_id, methods, self.compat_wildcard)


def loom(
    service_type: str,
    *,
    instance_id: str | None = None,
    caller_id: str | None = None,
    compat_wildcard: bool = False,
) -> Convention:
    """Loom's NATS RPC for ``service_type`` (see the module docstring).

    A server needs ``instance_id`` and serves ``routing_keys`` (methods; every
    method of its instance without them). A client's ``caller_id`` goes in
    every request envelope (a random one by default).
    """
    return _Loom(service_type, instance_id, caller_id, compat_wildcard)
