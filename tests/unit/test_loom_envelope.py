"""Loom's envelopes as bytes on the wire: a JSON codec's body goes in as it is, any
other body is checked and made compact, and the checks of a routing key are kept
in a bounded table."""

from __future__ import annotations

import json

import pytest

from hare_py import ConfigError
from hare_py.conventions.base import UNDECODED, Incoming
from hare_py.conventions.loom import _MAX_ROUTES, LoomClient, LoomServer
from hare_py.transport.base import EMPTY_PROPERTIES, Delivery, Properties

JSON_TYPE = "application/json"


def _request(client: LoomClient, body: bytes, content_type: str | None) -> bytes:
    message = client.wrap("inst1.task.assign", body, content_type, {}, "cid1", None, "_INBOX.x")
    return bytes(message.body)


def test_a_json_codec_body_goes_into_the_envelope_verbatim() -> None:
    client = LoomClient("svc", 'caller "one"')
    body = b'{"b":[1,2],"a":"\\u00e9"}'
    raw = _request(client, body, JSON_TYPE)
    assert b'"payload":' + body + b"," in raw
    envelope = json.loads(raw)
    assert envelope["method"] == "task.assign"
    assert envelope["caller_id"] == 'caller "one"'
    assert envelope["payload"] == {"b": [1, 2], "a": "é"}
    assert len(envelope["trace_id"]) == 32 and int(envelope["trace_id"], 16) >= 0


def test_other_bodies_are_checked_and_made_compact() -> None:
    client = LoomClient("svc", "c")
    raw = _request(client, b'{ "a" : 1 }', None)
    assert b'"payload":{"a":1},' in raw
    assert json.loads(raw)["payload"] == {"a": 1}
    assert json.loads(_request(client, b"", None))["payload"] is None
    with pytest.raises(ConfigError, match="Loom payloads are JSON"):
        _request(client, b"not json", None)
    with pytest.raises(ConfigError, match="cannot encode"):
        _request(client, b"NaN", None)  # Python reads it; it is not JSON, Go refuses it


def test_a_bad_routing_key_is_refused_every_time() -> None:
    client = LoomClient("svc", "c")
    for key in ("nodot", "in*st.m", "inst.me thod"):
        for _ in range(2):  # not remembered as checked
            with pytest.raises(ConfigError):
                client.wrap(key, b"1", JSON_TYPE, {}, "cid", None, "_INBOX.x")


def test_the_checked_routing_keys_stay_bounded() -> None:
    client = LoomClient("svc", "c")
    for n in range(_MAX_ROUTES + 10):
        message = client.wrap(f"inst{n}.m", b"1", JSON_TYPE, {}, "cid", None, "_INBOX.x")
        assert message.routing_key == f"loom.rpc.svc.inst{n}.m"
    assert len(client._routes) <= _MAX_ROUTES


def _incoming() -> Incoming:
    return Incoming(b"", JSON_TYPE, "task.assign", {}, None, "_INBOX.x.cid1")


def test_the_answer_envelope_in_loom_field_order() -> None:
    server = LoomServer("svc", "inst1", None, False)
    answer = server.wrap(_incoming(), b'{"x":1}', JSON_TYPE, None)
    assert answer is not None
    assert answer.body == b'{"ok":true,"payload":{"x":1},"error":""}'
    assert answer.properties is EMPTY_PROPERTIES
    assert answer.routing_key == "_INBOX.x.cid1"
    failed = server.wrap(_incoming(), b"", None, ValueError("boom"))
    assert failed is not None
    assert json.loads(failed.body) == {"ok": False, "payload": None, "error": "boom"}


def _reply(body: bytes) -> Delivery:
    return Delivery(body, EMPTY_PROPERTIES, "", "_INBOX.abc.cid7", 0, "1")


@pytest.mark.parametrize(
    "payload", [b'{"a":[1,"x"]}', b"null", b'"s"', b"3.5", b'{"ok":false,"error":"x"}']
)
def test_a_success_as_go_marshals_it_is_read_without_parsing_the_envelope(payload: bytes) -> None:
    reply = LoomClient("svc", "c").unwrap(_reply(b'{"ok":true,"payload":%s,"error":""}' % payload))
    assert (reply.correlation_id, reply.body, reply.error) == ("cid7", payload, None)
    assert reply.value == json.loads(payload)  # a JSON codec takes this as it is


@pytest.mark.parametrize(
    ("body", "error"),
    [
        # The payload between is not one JSON value: the envelope says otherwise.
        (b'{"ok":true,"payload":1,"ok":false,"error":""}', ""),
        (b'{"ok":true,"payload":1,"error":"x","ok":false,"error":""}', ""),
    ],
)
def test_an_envelope_that_only_looks_like_a_success_is_read_whole(body: bytes, error: str) -> None:
    reply = LoomClient("svc", "c").unwrap(_reply(body))
    assert json.loads(body)["ok"] is False
    assert reply.error is not None and reply.error.message == error
    assert reply.value is UNDECODED


def test_other_successes_are_read_whole() -> None:
    reply = LoomClient("svc", "c").unwrap(_reply(b'{"payload": [1, 2], "ok": true}'))
    assert (reply.body, reply.error, reply.value) == (b"[1,2]", None, UNDECODED)


def _served(body: bytes) -> Incoming:
    server = LoomServer("svc", "inst1", None, False)
    delivery = Delivery(
        body, Properties(reply_to="_INBOX.r.1"), "", "loom.rpc.svc.inst1.task.assign", 0, "9"
    )
    return server.unwrap(delivery)


_SPLICED = [
    b'{"method":"task.assign","caller_id":"c","payload":{"a":[1,"\\u00e9"]},"trace_id":"ab"}',
    b'{"method":"task.assign","caller_id":"\\"q\\"","payload":null,"trace_id":""}',
    b'{"method":"task.assign","caller_id":"c","payload":"x","trace_id":"a\\u0062"}',
]


@pytest.mark.parametrize("body", _SPLICED)
def test_a_request_as_go_marshals_it_is_read_without_parsing_the_envelope(body: bytes) -> None:
    envelope = json.loads(body)
    incoming = _served(body)
    assert incoming.value == envelope["payload"]  # a JSON codec takes this as it is
    assert json.loads(incoming.body) == envelope["payload"]
    assert (incoming.routing_key, incoming.trace_id) == ("task.assign", envelope["trace_id"])
    assert (incoming.reply, incoming.content_type) == ("_INBOX.r.1", JSON_TYPE)


@pytest.mark.parametrize(
    "body",
    [
        # The payload between is not one JSON value: the envelope has another field.
        b'{"method":"task.assign","caller_id":"c","payload":1,"x":2,"trace_id":"t"}',
        # Whitespace, another order, or a method spelled with an escape.
        b'{"method": "task.assign", "caller_id": "c", "payload": 1, "trace_id": "t"}',
        b'{"caller_id":"c","method":"task.assign","payload":1,"trace_id":"t"}',
        b'{"method":"task\\u002eassign","caller_id":"c","payload":1,"trace_id":"t"}',
    ],
)
def test_other_requests_are_read_whole(body: bytes) -> None:
    incoming = _served(body)
    assert incoming.value is UNDECODED
    assert json.loads(incoming.body) == json.loads(body)["payload"]
    assert incoming.trace_id == "t"


@pytest.mark.parametrize(
    "body",
    [
        b'{"method":"task.assign","caller_id":"c\\q","payload":1,"trace_id":"t"}',  # bad escape
        b'{"method":"task.assign","caller_id":"\xff","payload":1,"trace_id":"t"}',  # not UTF-8
        b'{"method":"other","caller_id":"c","payload":1,"trace_id":"t"}',
        b'{"method":"task.assign","caller_id":"c","payload":NaN,"trace_id":"t"}',
    ],
)
def test_a_request_the_full_parse_refuses_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="envelope"):
        _served(body)


def test_a_success_with_nan_is_refused_as_before() -> None:
    with pytest.raises(ValueError, match="envelope"):
        LoomClient("svc", "c").unwrap(_reply(b'{"ok":true,"payload":NaN,"error":""}'))
