"""RPC behaviours: the client (and, later, the server) on top of the actor runtime."""

from .client import RPCClient as RPCClient
from .messages import (
    ConnectedMeta as ConnectedMeta,
)
from .messages import (
    Forward as Forward,
)
from .messages import (
    Request as Request,
)
from .messages import (
    Response as Response,
)
from .messages import (
    Returned as Returned,
)

__all__ = ["ConnectedMeta", "Forward", "RPCClient", "Request", "Response", "Returned"]
