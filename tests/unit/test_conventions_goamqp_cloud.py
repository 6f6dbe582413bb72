"""The goamqp and cloud conventions' names and envelopes, without a broker."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from hare_py import ConfigError, RemoteError
from hare_py.conventions import Incoming, ServerOptions, cloud, goamqp
from hare_py.conventions.cloud import (
    CloudClient,
    CloudServer,
    RPCRequestDTO,
    RPCResponseDTO,
)
from hare_py.conventions.goamqp import (
    QUEUE_EXPIRES_MS,
    GoamqpClient,
    GoamqpServer,
    request_exchange,
    request_queue,
    response_exchange,
    response_queue,
)
from hare_py.transport.base import Delivery, Properties
from hare_py.transport.sandbox._routing import topic_match


def options(**changes: Any) -> ServerOptions:
    base: dict[str, Any] = {
        "queue": None,
        "exchange": "",
        "exchange_type": "direct",
        "routing_keys": None,
        "durable": False,
        "auto_delete": False,
    }
    return ServerOptions(**{**base, **changes})


def delivery(body: bytes, routing_key: str = "k", **props: Any) -> Delivery:
    return Delivery(body, Properties(**props), "x", routing_key, 1, "ctag")


# -- goamqp -------------------------------------------------------------------------------


def goamqp_client(**kwargs: Any) -> GoamqpClient:
    client = goamqp("orders", "web", **kwargs).client("", "direct", False)
    assert isinstance(client, GoamqpClient)
    return client


def goamqp_server(keys: tuple[str, ...] = ("get",)) -> GoamqpServer:
    server = goamqp("orders").server(options(routing_keys=keys))
    assert isinstance(server, GoamqpServer)
    return server


def test_goamqp_names_are_goamqps() -> None:
    """The four names follow goamqp's naming.go; queues expire after 5 days."""
    assert request_exchange("orders") == "orders.direct.exchange.request"
    assert request_queue("orders") == "orders.direct.exchange.request.queue"
    assert response_exchange("orders") == "orders.headers.exchange.response"
    assert response_queue("orders", "web") == "orders.headers.exchange.response.queue.web"
    assert QUEUE_EXPIRES_MS == 432_000_000
    client, server = goamqp_client(), goamqp_server()
    assert (client.exchange, client.queue) == (
        request_exchange("orders"),
        response_queue("orders", "web"),
    )
    assert (server.exchange, server.queue) == (request_exchange("orders"), request_queue("orders"))
    assert client.lasting and client.correlates_by_routing_key


def test_goamqp_client_is_serial_per_routing_key_unless_pipelined() -> None:
    """By default one request per routing key is out; pipelined=True is the explicit opt-in."""
    default = goamqp_client()
    assert (default.serial_per_routing_key, default.pipelined, default.late_reply_grace) == (
        True,
        False,
        None,
    )
    fast = goamqp_client(pipelined=True, late_reply_grace=2)
    assert (fast.serial_per_routing_key, fast.pipelined, fast.late_reply_grace) == (
        False,
        True,
        2.0,
    )
    assert goamqp_client(late_reply_grace=math.inf).late_reply_grace == math.inf
    for bad in ({"pipelined": 1}, {"late_reply_grace": -1}, {"late_reply_grace": math.nan}):
        with pytest.raises(ConfigError, match=r"pipelined|late_reply_grace"):
            goamqp("orders", "web", **bad)
    with pytest.raises(ConfigError, match="late_reply_grace"):
        goamqp("orders", "web", late_reply_grace=True)


def test_goamqp_request_carries_the_service_header_and_a_correlation_id() -> None:
    """A request: JSON, persistent, service = caller (overriding a user's), ids set."""
    out = goamqp_client().wrap(
        "get", b'{"id":1}', None, {"service": "spoof", "trace": "t"}, "cid", "5000", "ignored"
    )
    assert (out.exchange, out.routing_key, out.body) == (
        request_exchange("orders"),
        "get",
        b'{"id":1}',
    )
    props = out.properties
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.headers == {"service": "web", "trace": "t"}
    assert (props.correlation_id, props.message_id, props.expiration) == ("cid", "cid", "5000")
    assert props.reply_to is None  # goamqp answers by the service header


def test_goamqp_reply_without_correlation_id_keeps_its_routing_key() -> None:
    """A goamqp server's reply names no request: the client matches it by routing key."""
    reply = goamqp_client().unwrap(
        delivery(b'{"ok":true}', "get", content_type="application/json", headers={"service": "web"})
    )
    assert (reply.correlation_id, reply.routing_key, reply.error) == (None, "get", None)
    error = goamqp_client().unwrap(
        delivery(
            b"boom",
            "get",
            correlation_id="c",
            headers={"x-error-type": "KeyError", "x-error-message": "boom"},
        )
    )
    assert error.correlation_id == "c"
    assert isinstance(error.error, RemoteError) and error.error.type == "KeyError"


def test_goamqp_server_answers_the_service_header_on_the_response_exchange() -> None:
    """The response: same routing key, service = caller, the caller's correlation id back."""
    server = goamqp_server()
    incoming = server.unwrap(
        delivery(b"{}", "get", headers={"service": b"web"}, correlation_id="c", message_id="m")
    )
    assert (incoming.reply, incoming.correlation_id, incoming.request_id) == ("web", "c", "m")
    out = server.wrap(incoming, b'{"a":1}', "application/json", None)
    assert out is not None
    assert (out.exchange, out.routing_key, out.body) == (
        response_exchange("orders"),
        "get",
        b'{"a":1}',
    )
    assert out.properties.headers == {"service": "web"}
    assert (out.properties.correlation_id, out.properties.delivery_mode) == ("c", 2)
    assert out.properties.content_type == "application/json"


def test_goamqp_server_errors_go_to_hare_py_callers_only() -> None:
    """Error replies (x-error-*) go to hare_py callers only; goamqp callers get none."""
    server = goamqp_server()
    hare_caller = server.unwrap(
        delivery(b"{}", "get", headers={"service": "web"}, correlation_id="c")
    )
    out = server.wrap(hare_caller, b"", None, ValueError("bad"))
    assert out is not None
    assert out.properties.headers == {
        "service": "web",
        "x-error-type": "ValueError",
        "x-error-message": "bad",
    }
    go_caller = server.unwrap(delivery(b"{}", "get", headers={"service": "web"}))
    assert go_caller.correlation_id is None
    assert server.wrap(go_caller, b"", None, ValueError("bad")) is None
    assert server.wrap(go_caller, b"{}", None, None) is not None
    anonymous = server.unwrap(delivery(b"{}", "get"))
    assert anonymous.reply is None and server.wrap(anonymous, b"{}", None, None) is None


def test_goamqp_configuration_errors() -> None:
    """Missing caller or keys, foreign queue or exchange names: ConfigError at start."""
    with pytest.raises(ConfigError, match="caller"):
        goamqp("orders").client("", "direct", False)
    with pytest.raises(ConfigError, match="exchange"):
        goamqp("orders", "web").client("x", "direct", False)
    with pytest.raises(ConfigError, match="routing keys"):
        goamqp("orders").server(options())
    with pytest.raises(ConfigError, match="queue"):
        goamqp("orders").server(options(queue="mine", routing_keys=("k",)))
    with pytest.raises(ConfigError, match="exchange"):
        goamqp("orders").server(options(exchange="x", routing_keys=("k",)))
    with pytest.raises(ConfigError):
        goamqp("")
    with pytest.raises(ConfigError, match="sequence"):
        goamqp("orders", routing_keys="get")
    keys = goamqp("orders", routing_keys=["a"]).server(options())
    assert isinstance(keys, GoamqpServer) and keys.routing_keys == ("a",)


# -- cloud --------------------------------------------------------------------------------


def cloud_client() -> CloudClient:
    client = cloud("Users").client("", "direct", False)
    assert isinstance(client, CloudClient)
    return client


def cloud_server(**kwargs: Any) -> CloudServer:
    server = cloud("Users", **kwargs).server(options())
    assert isinstance(server, CloudServer)
    return server


def test_cloud_request_envelope_field_names() -> None:
    """RPCRequestDTO is PascalCase JSON; its Payload is the request as JSON text."""
    dto = RPCRequestDTO("rk", "rid", "cid", "CreateUser", "v2", '{"a":1}')
    assert json.loads(dto.encode()) == {
        "ReplyRoutingKey": "rk",
        "RequestId": "rid",
        "CorrelationId": "cid",
        "RequestClass": "CreateUser",
        "RequestType": "v2",
        "Payload": '{"a":1}',
    }
    assert RPCRequestDTO.decode(dto.encode()) == dto


def test_cloud_envelopes_are_read_leniently_and_refused_when_malformed() -> None:
    """camelCase names and an embedded Payload are read; non-objects and bad types are not."""
    dto = RPCRequestDTO.decode(b'{"replyRoutingKey":"r","PAYLOAD":{"a":[1]}}')
    assert (dto.reply_routing_key, dto.payload, dto.request_id) == ("r", '{"a":[1]}', None)
    assert dto.payload_bytes == b'{"a":[1]}'
    assert RPCRequestDTO.decode(b"{}").payload_bytes == b"null"
    for bad in (b"not json", b"[1]", b'{"RequestId":5}', b"\xff"):
        with pytest.raises(ValueError, match=r"RPCRequestDTO|RequestId"):
            RPCRequestDTO.decode(bad)
    with pytest.raises(ValueError, match="Status"):
        RPCResponseDTO.decode(b'{"Status":true}')
    assert RPCResponseDTO.decode(b'{"status":"404"}').status == 404


def test_cloud_response_status_and_error() -> None:
    """Success is a 2xx (or absent) Status and no Error; anything else raises RemoteError."""
    assert not RPCResponseDTO(status=200).failed
    assert not RPCResponseDTO().failed
    assert RPCResponseDTO(status=404).failed
    assert RPCResponseDTO(status=200, error="x").failed
    error = RPCResponseDTO(response_class="NotFound", status=404, error="no user").remote_error()
    assert (error.type, error.message, error.details.status) == ("NotFound", "no user", 404)
    assert RPCResponseDTO(status=503).remote_error().type == "Status503"
    assert json.loads(RPCResponseDTO("r", "c", "U", "t", "{}", 200, None).encode()) == {
        "ResponseId": "r",
        "CorrelationId": "c",
        "ResponseClass": "U",
        "ResponseType": "t",
        "Payload": "{}",
        "Status": 200,
        "Error": None,
    }


def test_cloud_client_builds_the_key_and_the_envelope() -> None:
    """'<Resource>.<Action>' gets the RPC.Cloud.<ServiceType> prefix; headers fill the DTO."""
    headers = {"RequestClass": "CreateUser", "RequestId": "r-1", "trace": "t"}
    out = cloud_client().wrap("User.Create", b'{"n":"a"}', None, headers, "cid", "900", "amq.gen-q")
    assert (out.exchange, out.routing_key) == (
        "Cloud.Service.RPC1.Requests",
        "RPC.Cloud.Users.User.Create",
    )
    dto = RPCRequestDTO.decode(out.body)
    assert dto == RPCRequestDTO("amq.gen-q", "r-1", "cid", "CreateUser", None, '{"n":"a"}')
    props = out.properties
    assert (props.correlation_id, props.expiration, props.headers) == ("cid", "900", {"trace": "t"})
    assert props.content_type == "application/json"
    default = cloud_client().wrap("User.Get", b"1", None, {}, "cid", None, "q")
    assert RPCRequestDTO.decode(default.body).request_id == "cid"  # kept by a republish


@pytest.mark.parametrize("key", ["User", "User.Get.Now", "User.*", "#.Get", ".Get", ""])
def test_cloud_client_refuses_keys_that_are_not_resource_action(key: str) -> None:
    """Only '<Resource>.<Action>' words are accepted, never wildcards."""
    with pytest.raises(ConfigError):
        cloud_client().wrap(key, b"1", None, {}, "cid", None, "q")


def test_cloud_client_refuses_a_payload_that_is_not_text() -> None:
    """The Payload is JSON text: bytes that are not UTF-8 cannot be sent."""
    with pytest.raises(ConfigError, match="UTF-8"):
        cloud_client().wrap("User.Get", b"\xff", None, {}, "cid", None, "q")


def test_cloud_client_unwraps_success_and_failure() -> None:
    """The Payload is the reply body; envelope fields show in headers; failures are errors."""
    ok = RPCResponseDTO("resp", "cid", "User", None, '{"id":7}', 200, None).encode()
    reply = cloud_client().unwrap(delivery(ok))
    assert (reply.correlation_id, reply.body, reply.error) == ("cid", b'{"id":7}', None)
    assert reply.headers["ResponseId"] == "resp" and reply.headers["Status"] == 200
    failed = RPCResponseDTO("resp", "cid", "KeyError", None, None, 500, "'x'").encode()
    error = cloud_client().unwrap(delivery(failed)).error
    assert isinstance(error, RemoteError) and (error.type, error.message) == ("KeyError", "'x'")
    with pytest.raises(ValueError, match="not JSON"):
        cloud_client().unwrap(delivery(b"nope"))


def test_cloud_server_defaults_and_incoming() -> None:
    """The default queue and binding (*.*: the documented '.*' matches no five-word key)."""
    server = cloud_server()
    assert server.queue == "Cloud.Service.RPC1.Requests.Users"
    assert server.routing_keys == ("RPC.Cloud.Users.*.*",)
    assert topic_match("RPC.Cloud.Users.*.*", "RPC.Cloud.Users.User.Create")
    assert not topic_match("RPC.Cloud.Users.*", "RPC.Cloud.Users.User.Create")
    assert topic_match("RPC.Cloud.*.User.*", "RPC.Cloud.Users.User.Create")
    body = RPCRequestDTO("rk", "rid", "cid", "CreateUser", "v2", '{"n":1}').encode()
    incoming = server.unwrap(delivery(body, "RPC.Cloud.Users.User.Create", headers={"h": 1}))
    assert incoming == Incoming(
        b'{"n":1}',
        "application/json",
        "RPC.Cloud.Users.User.Create",
        {"h": 1, "RequestId": "rid", "RequestClass": "CreateUser", "RequestType": "v2"},
        "cid",
        "rk",
        "rid",
    )


def test_cloud_server_answers_with_response_envelopes() -> None:
    """RPCResponseDTOs: 200 and payload, or the error's status, class and message."""
    server = cloud_server(response_class={"CreateUser": "UserCreated"}.get)
    body = RPCRequestDTO("rk", "rid", "cid", "CreateUser", None, "{}").encode()
    incoming = server.unwrap(delivery(body))
    out = server.wrap(incoming, b'{"id":7}', "application/json", None)
    assert out is not None
    assert (out.exchange, out.routing_key) == ("Cloud.Service.RPC1.Responses", "rk")
    assert out.properties.correlation_id == "cid"
    dto = RPCResponseDTO.decode(out.body)
    assert (dto.correlation_id, dto.response_class, dto.payload, dto.status, dto.error) == (
        "cid",
        "UserCreated",
        '{"id":7}',
        200,
        None,
    )
    again = server.wrap(incoming, b'{"id":7}', "application/json", None)
    assert again is not None and RPCResponseDTO.decode(again.body).response_id == dto.response_id

    class Gone(Exception):
        status = 410

    for error, expected in (
        (KeyError("k"), ("KeyError", "'k'", 500)),
        (Gone("gone"), ("Gone", "gone", 410)),
        (RemoteError("Upstream", "down"), ("Upstream", "down", 500)),
    ):
        failed = server.wrap(incoming, b"", None, error)
        assert failed is not None
        dto = RPCResponseDTO.decode(failed.body)
        assert (dto.response_class, dto.error, dto.status, dto.payload) == (*expected, None)
    unencodable = server.wrap(incoming, b"\xff", None, None)
    assert unencodable is not None and RPCResponseDTO.decode(unencodable.body).status == 500
    no_reply = server.unwrap(delivery(RPCRequestDTO(payload="1").encode()))
    assert server.wrap(no_reply, b"1", None, None) is None


def test_cloud_configuration_errors() -> None:
    """A service type must be one word; only topic or direct Requests exchanges."""
    for bad in ("", "A.B", "A*", "#"):
        with pytest.raises(ConfigError):
            cloud(bad)
    with pytest.raises(ConfigError):
        cloud("Users", request_exchange_type="fanout")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exchange"):
        cloud("Users").client("mine", "direct", False)
    with pytest.raises(ConfigError, match="exchange"):
        cloud("Users").server(options(exchange="mine"))
    custom = cloud("Users").server(options(queue="q", routing_keys=("RPC.Cloud.*.User.*",)))
    assert isinstance(custom, CloudServer)
    assert (custom.queue, custom.routing_keys) == ("q", ("RPC.Cloud.*.User.*",))
