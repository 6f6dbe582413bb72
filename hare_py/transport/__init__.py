"""Broker backends behind one protocol (see ``base``), chosen by URL scheme.

The runtime reaches a backend only through ``backend_for``; backends are
imported lazily so that, for example, the sandbox never imports aiormq.
"""

from __future__ import annotations

import importlib

import sniffio

from ..errors import ConfigError
from .base import (
    Backend,
    Channel,
    CloseReason,
    ConnectOptions,
    Delivery,
    Properties,
    QueueInfo,
    ReturnedMessage,
    TLSOptions,
    TransportConnection,
)
from .url import BrokerURL, parse_url

__all__ = [
    "Backend",
    "BrokerURL",
    "Channel",
    "CloseReason",
    "ConnectOptions",
    "Delivery",
    "Properties",
    "QueueInfo",
    "ReturnedMessage",
    "TLSOptions",
    "TransportConnection",
    "backend_for",
    "parse_url",
]

# scheme -> "module:Class", imported on first use
_BACKENDS: dict[str, str] = {
    "sandbox": "hare_py.transport.sandbox:SandboxBackend",
    "amqp": "hare_py.transport.aiormq_backend:AiormqBackend",
    "amqps": "hare_py.transport.aiormq_backend:AiormqBackend",
}
_ASYNCIO_ONLY = {"hare_py.transport.aiormq_backend:AiormqBackend"}
_instances: dict[str, Backend] = {}


def backend_for(url: BrokerURL) -> Backend:
    """The backend for ``url``'s scheme, for the running async library."""
    target = _BACKENDS.get(url.scheme)
    if target is None:  # parse_url already rejects unknown schemes
        raise ConfigError(f"no backend for URL scheme {url.scheme!r}")
    if target in _ASYNCIO_ONLY:
        library = sniffio.current_async_library()
        if library != "asyncio":
            raise ConfigError(
                f"{url.scheme}:// uses the aiormq backend, which runs on asyncio only "
                f"(running on {library})"
            )
    backend = _instances.get(target)
    if backend is None:
        module_name, _, class_name = target.partition(":")
        backend = getattr(importlib.import_module(module_name), class_name)()
        _instances[target] = backend
    return backend
