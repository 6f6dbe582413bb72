"""Conventions: the wire names, declarations and envelopes of an RPC system.

``hare()`` is the default; ``direct_reply_to()`` uses RabbitMQ's pseudo-queue;
``goamqp(service, caller)`` speaks sparetimecoders/goamqp's request/response;
``cloud(service_type)`` the Cloud.Service.RPC1 exchanges and DTO envelopes,
all on AMQP 0-9-1; ``loom(service_type, ...)`` speaks Loom's NATS RPC and
``nats(service, ...)`` plain NATS request/reply as a NATS service;
``amqp10(service_address, ...)`` RPC over AMQP 1.0 links.
Choose one with ``RPCClient.start(conn, convention=...)`` or
``RPCServer.start(conn, convention=...)``.
"""

from .amqp10 import amqp10 as amqp10
from .base import (
    ClientConvention as ClientConvention,
    Convention as Convention,
    EndpointStats as EndpointStats,
    Incoming as Incoming,
    IncomingReply as IncomingReply,
    LocalAnswer as LocalAnswer,
    NotForThisServer as NotForThisServer,
    Outgoing as Outgoing,
    ServerConvention as ServerConvention,
    ServerOptions as ServerOptions,
    ServerStopping as ServerStopping,
    UndecodableRequest as UndecodableRequest,
)
from .cloud import cloud as cloud
from .goamqp import goamqp as goamqp
from .hare import direct_reply_to as direct_reply_to, hare as hare
from .loom import loom as loom
from .nats import nats as nats

__all__ = [
    "ClientConvention",
    "Convention",
    "EndpointStats",
    "Incoming",
    "LocalAnswer",
    "NotForThisServer",
    "Outgoing",
    "IncomingReply",
    "ServerConvention",
    "ServerOptions",
    "ServerStopping",
    "UndecodableRequest",
    "amqp10",
    "cloud",
    "direct_reply_to",
    "goamqp",
    "hare",
    "loom",
    "nats",
]
