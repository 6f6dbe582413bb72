"""What the client side of the wire refuses: the sandbox encodes as the AMQP backends do.

Rules this module keeps:

- A method (declare, bind, consume, qos, ...) is built and encoded with pamqp,
  as both AMQP backends send it; a value pamqp refuses is a ``ConfigError``
  with the anyio backend's text, and nothing reaches the broker.
- A message is encoded with the codec both backends send with (``_amqp_codec``,
  content header included, checked against ``frame_max``); what it refuses is
  ``Unsendable``, which the channel turns into ``ConfigError`` (or, in a batch,
  ``UnsendableMessage``). The broker gets the properties as a consumer would
  decode them from the wire, never the publisher's objects.
- What reaches the broker is what the broker would decode: argument tables
  come back from pamqp's encoding (keys over 128 bytes cut, as pamqp does).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pamqp import frame as pamqp_frame
from pamqp.base import Frame

from ...errors import ConfigError
from .._amqp_codec import UndecodableProperties, decode_header, encode_publish, plain
from ..base import Properties

__all__ = ["FRAME_MAX", "Unsendable", "encode_message", "method_arguments"]

# What both backends negotiate with RabbitMQ 3.10 by default.
FRAME_MAX = 131072
_FRAME_HEADER = 7  # type, channel, size; then the payload and the frame-end octet

F = TypeVar("F", bound=Frame)


class Unsendable(ValueError):
    """A message AMQP cannot carry; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def method_arguments(cls: type[F], **fields: Any) -> dict[str, Any]:
    """Check a method as the backends send it; its ``arguments`` as the broker decodes them.

    ``ConfigError`` for a value pamqp refuses: a name too long or with bad
    characters, a number out of range, a table value AMQP has no type for.
    """
    try:
        method = cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.name}: {exc}") from None
    try:
        data = pamqp_frame.marshal(method, 1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot send {cls.name}: {exc}") from None
    if not fields.get("arguments"):
        return {}
    _, _, decoded = pamqp_frame.unmarshal(data)
    return dict(plain(getattr(decoded, "arguments", None) or {}))


def encode_message(
    exchange: str,
    routing_key: str,
    body: Any,
    properties: Properties,
    mandatory: bool,
    frame_max: int,
) -> tuple[bytes, Properties]:
    """The body and the properties a consumer gets; ``Unsendable`` if AMQP cannot carry them."""
    try:
        data = bytes(body)
        # The body's frames are left out: its size is the broker's to judge.
        frames = encode_publish(1, exchange, routing_key, mandatory, b"", properties, frame_max)
    except (TypeError, ValueError, AttributeError) as exc:
        raise Unsendable(str(exc)) from None
    if properties == Properties():
        return data, properties
    try:
        _, decoded = decode_header(frames[1][_FRAME_HEADER:-1])
    except UndecodableProperties:
        # The codec decodes all it encodes; should that ever fail, keep what was sent.
        return data, properties
    return data, decoded
