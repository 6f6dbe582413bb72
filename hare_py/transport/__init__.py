"""Broker backends behind one protocol (see ``base``), chosen by URL scheme.

The runtime reaches a backend only through ``backend_for``; backends are
imported lazily so that, for example, the sandbox never imports aiormq.
"""

from __future__ import annotations

import importlib

import sniffio

from ..errors import ConfigError
from .base import (
    AMQP_0_9_1,
    AMQP_1_0,
    NATS,
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
    "check_url",
    "parse_url",
    "wire_protocol_of",
]

# "module:Class", imported on first use
_SANDBOX = "hare_py.transport.sandbox:SandboxBackend"
_AIORMQ = "hare_py.transport.aiormq_backend:AiormqBackend"
_ANYIO_AMQP = "hare_py.transport.amqp:AnyioAmqpBackend"
_NATS = "hare_py.transport.nats:NatsBackend"
_SANDBOX_NATS = "hare_py.transport.sandbox_nats:SandboxNatsBackend"
_AMQP10 = "hare_py.transport.amqp10:Amqp10Backend"
# The URL's ``backend=`` for amqp:// and amqps://
_AMQP_BACKENDS = {"aiormq": _AIORMQ, "anyio": _ANYIO_AMQP}
_instances: dict[str, Backend] = {}


#: The wire protocol of each URL scheme; known without importing a backend.
_WIRE_PROTOCOLS = {
    "sandbox": AMQP_0_9_1,
    "amqp": AMQP_0_9_1,
    "amqps": AMQP_0_9_1,
    "nats": NATS,
    "tls": NATS,
    "sandbox+nats": NATS,
}


def wire_protocol_of(url: BrokerURL) -> str:
    """The wire protocol a URL speaks (``"amqp-0-9-1"``, ``"nats"``, ``"amqp-1.0"``, ...)."""
    if _is_amqp10(url):
        return AMQP_1_0
    protocol = _WIRE_PROTOCOLS.get(url.scheme)
    if protocol is None:
        raise ConfigError(f"no backend for URL scheme {url.scheme!r}")
    return protocol


def backend_for(url: BrokerURL) -> Backend:
    """The backend for ``url``'s scheme, for the running async library.

    AMQP URLs go to hare_py's anyio-native backend on asyncio and trio;
    ``?backend=aiormq`` picks aiormq instead, on asyncio only. ``?protocol=1.0``
    picks AMQP 1.0, which needs the ``amqp10`` extra (a ``ConfigError`` says so).
    """
    if _is_amqp10(url):
        target = _AMQP10
    elif url.scheme == "sandbox":
        target = _SANDBOX
    elif url.scheme in ("amqp", "amqps"):
        target = _amqp_backend(url)
    elif url.scheme in ("nats", "tls"):
        target = _NATS
    elif url.scheme == "sandbox+nats":
        target = _SANDBOX_NATS
    else:  # parse_url already rejects unknown schemes
        raise ConfigError(f"no backend for URL scheme {url.scheme!r}")
    backend = _instances.get(target)
    if backend is None:
        module_name, _, class_name = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if target != _AMQP10 or exc.name not in ("proton", "cproton"):
                raise
            raise ConfigError(
                f"{url} speaks AMQP 1.0, which needs python-qpid-proton: "
                "pip install 'hare_py[amqp10]'"
            ) from None
        backend = getattr(module, class_name)()
        _instances[target] = backend
    return backend


def check_url(url: BrokerURL, options: ConnectOptions) -> Backend:
    """The backend for ``url``, once every setting it would read is checked.

    Raises ``ConfigError`` for an unknown URL parameter or a value the backend
    would refuse at connect time; nothing is connected.
    """
    backend = backend_for(url)
    if url.scheme in ("amqp", "amqps") and not _is_amqp10(url):
        from . import _amqp_common as _common  # the same URL parameters for both backends

        _common.check_url(url, options)
        if backend is _instances.get(_AIORMQ) and _common.login_mechanism(url) == "AMQPLAIN":
            raise ConfigError(
                f"auth=amqplain in {url}: aiormq logs in with PLAIN or EXTERNAL only; "
                "leave backend=aiormq out to use AMQPLAIN"
            )
    backend.check(url, options)
    return backend


def _is_amqp10(url: BrokerURL) -> bool:
    """``amqp://`` or ``amqps://`` with ``protocol=1.0`` (any other value is refused)."""
    if url.scheme not in ("amqp", "amqps"):
        return False
    protocol = url.param("protocol")
    if protocol is None:
        return False
    if protocol != "1.0":
        raise ConfigError(
            f"protocol={protocol[:40]!r} in {url}: use protocol=1.0 for AMQP 1.0, "
            "or leave it out for AMQP 0-9-1"
        )
    return True


def _amqp_backend(url: BrokerURL) -> str:
    library = sniffio.current_async_library()
    wanted = url.param("backend")
    if wanted is None:
        return _ANYIO_AMQP
    target = _AMQP_BACKENDS.get(wanted)
    if target is None:
        raise ConfigError(
            f"backend={wanted!r} in {url}: use one of {', '.join(sorted(_AMQP_BACKENDS))}"
        )
    if target == _AIORMQ and library != "asyncio":
        raise ConfigError(
            f"backend=aiormq in {url} runs on asyncio only (running on {library}); "
            "leave backend= out to use the anyio backend"
        )
    return target
