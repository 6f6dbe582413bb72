"""RPC behaviours, RPCClient and RPCServer, on top of the actor runtime."""

from .client import RPCClient as RPCClient
from .messages import (
    ConnectedMeta as ConnectedMeta,
    Forward as Forward,
    Request as Request,
    Response as Response,
    Returned as Returned,
)
from .server import RPCServer as RPCServer
from .telemetry import Telemetry as Telemetry

__all__ = [
    "ConnectedMeta",
    "Forward",
    "RPCClient",
    "RPCServer",
    "Request",
    "Response",
    "Returned",
    "Telemetry",
]
