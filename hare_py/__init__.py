"""hare_py: supervised, OTP-style RPC on message brokers, on anyio (asyncio and trio).

    async with Connection("amqp://guest:guest@localhost/") as conn:
        async with MyClient.start(conn, exchange="rpc") as client:
            reply = await client.request(b"payload", routing_key="key")

See ``RPCClient`` for the callbacks and ``hare_py.errors`` for what can go wrong.
"""

from .actor import (
    Actor as Actor,
    Backoff as Backoff,
    Caller as Caller,
    ChildSpec as ChildSpec,
    Connection as Connection,
    Ignore as Ignore,
    NoReply as NoReply,
    Reply as Reply,
    Stop as Stop,
    Supervisor as Supervisor,
)
from .codecs import JSON as JSON, Codec as Codec, JSONCodec as JSONCodec
from .errors import (
    BrokerError as BrokerError,
    ClientCrashed as ClientCrashed,
    ClientStopped as ClientStopped,
    ConfigError as ConfigError,
    ConnectFailed as ConnectFailed,
    ConnectionLost as ConnectionLost,
    HareError as HareError,
    RemoteError as RemoteError,
    RequestTimeout as RequestTimeout,
    RestartIntensityExceeded as RestartIntensityExceeded,
    Unroutable as Unroutable,
    UnsendableMessage as UnsendableMessage,
)
from .rpc import (
    ConnectedMeta as ConnectedMeta,
    Forward as Forward,
    Request as Request,
    Response as Response,
    Returned as Returned,
    RPCClient as RPCClient,
    RPCServer as RPCServer,
    Telemetry as Telemetry,
)
from .transport.base import TLSOptions as TLSOptions

__all__ = [
    "JSON",
    "Actor",
    "Backoff",
    "BrokerError",
    "Caller",
    "ChildSpec",
    "ClientCrashed",
    "ClientStopped",
    "Codec",
    "ConfigError",
    "ConnectFailed",
    "ConnectedMeta",
    "Connection",
    "ConnectionLost",
    "Forward",
    "HareError",
    "Ignore",
    "JSONCodec",
    "NoReply",
    "RPCClient",
    "RPCServer",
    "RemoteError",
    "Reply",
    "Request",
    "RequestTimeout",
    "Response",
    "RestartIntensityExceeded",
    "Returned",
    "Stop",
    "Supervisor",
    "TLSOptions",
    "Telemetry",
    "Unroutable",
    "UnsendableMessage",
]
