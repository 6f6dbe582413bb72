"""hare_py: supervised, OTP-style RPC on message brokers, on anyio (asyncio and trio).

    async with Connection("amqp://guest:guest@localhost/") as conn:
        async with MyClient.start(conn, exchange="rpc") as client:
            reply = await client.request(b"payload", routing_key="key")

See ``RPCClient`` for the callbacks and ``hare_py.errors`` for what can go wrong.
"""

from .actor import (
    Actor as Actor,
)
from .actor import (
    Backoff as Backoff,
)
from .actor import (
    Caller as Caller,
)
from .actor import (
    ChildSpec as ChildSpec,
)
from .actor import (
    Connection as Connection,
)
from .actor import (
    Ignore as Ignore,
)
from .actor import (
    NoReply as NoReply,
)
from .actor import (
    Reply as Reply,
)
from .actor import (
    Stop as Stop,
)
from .actor import (
    Supervisor as Supervisor,
)
from .codecs import JSON as JSON
from .codecs import Codec as Codec
from .codecs import JSONCodec as JSONCodec
from .errors import (
    BrokerError as BrokerError,
)
from .errors import (
    ClientCrashed as ClientCrashed,
)
from .errors import (
    ClientStopped as ClientStopped,
)
from .errors import (
    ConfigError as ConfigError,
)
from .errors import (
    ConnectFailed as ConnectFailed,
)
from .errors import (
    ConnectionLost as ConnectionLost,
)
from .errors import (
    HareError as HareError,
)
from .errors import (
    RemoteError as RemoteError,
)
from .errors import (
    RequestTimeout as RequestTimeout,
)
from .errors import (
    RestartIntensityExceeded as RestartIntensityExceeded,
)
from .errors import (
    Unroutable as Unroutable,
)
from .rpc import (
    ConnectedMeta as ConnectedMeta,
)
from .rpc import (
    Forward as Forward,
)
from .rpc import (
    Request as Request,
)
from .rpc import (
    Response as Response,
)
from .rpc import (
    Returned as Returned,
)
from .rpc import (
    RPCClient as RPCClient,
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
    "Unroutable",
]
