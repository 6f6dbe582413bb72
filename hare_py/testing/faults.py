"""Faults that work on any broker, for demos and chaos tests."""

from __future__ import annotations

import secrets
from typing import Any

from ..errors import BrokerError, ConfigError, ConnectionLost

__all__ = ["break_channel"]


async def break_channel(actor: Any) -> bool:
    """Make the broker close the channel of an ``RPCClient`` or ``RPCServer``.

    It asks the broker, on the actor's own channel, for an exchange that does
    not exist; the broker answers ``404 NOT_FOUND`` by closing the channel,
    exactly as it does for a real channel error. Returns False if the actor
    had no open channel.
    """
    channel = getattr(actor, "_channel", None)
    if channel is None:
        if not hasattr(actor, "_channel"):
            raise ConfigError(f"{actor!r} is not an RPCClient or RPCServer")
        return False
    try:
        await channel.exchange_declare(f"hare.missing.{secrets.token_hex(4)}", passive=True)
    except (BrokerError, ConnectionLost):
        return True
    return False  # pragma: no cover - the exchange cannot exist
