"""hare_py: supervised, OTP-style RPC on message brokers, on anyio."""

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
)

__all__ = [
    "BrokerError",
    "ClientCrashed",
    "ClientStopped",
    "ConfigError",
    "ConnectFailed",
    "ConnectionLost",
    "HareError",
    "RemoteError",
    "RequestTimeout",
    "RestartIntensityExceeded",
    "Unroutable",
]
