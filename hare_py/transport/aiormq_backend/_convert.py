"""aiormq's frames -> hare_py's ``Delivery`` and ``ReturnedMessage``; ``Properties`` <->
pamqp ``Basic.Properties`` (all 13 basic properties), which the codec tests compare with.

pamqp names ``type`` ``message_type``; AMQP timestamps have whole seconds, so a
timestamp comes back as an aware UTC datetime without its microseconds.
"""

from __future__ import annotations

from pamqp.commands import Basic

from ...errors import ConfigError
from .._amqp_codec import plain as _plain
from ..base import Delivery, Properties, ReturnedMessage
from ._frames import Incoming

__all__ = ["to_delivery", "to_pamqp", "to_properties", "to_returned"]


def to_pamqp(properties: Properties) -> Basic.Properties:
    """The wire form of ``properties``; ``ConfigError`` for values AMQP cannot carry."""
    try:
        return Basic.Properties(
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=dict(properties.headers) if properties.headers is not None else None,
            delivery_mode=properties.delivery_mode,
            priority=properties.priority,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            expiration=properties.expiration,
            message_id=properties.message_id,
            timestamp=properties.timestamp,
            message_type=properties.type,
            user_id=properties.user_id,
            app_id=properties.app_id,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid message properties: {exc}") from None


def to_properties(wire: Basic.Properties) -> Properties:
    return Properties(
        content_type=wire.content_type,
        content_encoding=wire.content_encoding,
        headers=_plain(wire.headers) if wire.headers is not None else None,
        delivery_mode=wire.delivery_mode,
        priority=wire.priority,
        correlation_id=wire.correlation_id,
        reply_to=wire.reply_to,
        expiration=wire.expiration,
        message_id=wire.message_id,
        timestamp=wire.timestamp,
        type=wire.message_type,
        user_id=wire.user_id,
        app_id=wire.app_id,
    )


def to_delivery(frame: Basic.Deliver, incoming: Incoming, body: bytes) -> Delivery:
    return Delivery(
        body=body,
        properties=incoming.properties,
        exchange=frame.exchange,
        routing_key=frame.routing_key or "",
        delivery_tag=frame.delivery_tag or 0,
        consumer_tag=frame.consumer_tag or "",
        redelivered=bool(frame.redelivered),
        undecodable=incoming.undecodable,
    )


def to_returned(frame: Basic.Return, properties: Properties, body: bytes) -> ReturnedMessage:
    return ReturnedMessage(
        body=body,
        properties=properties,
        exchange=frame.exchange,
        routing_key=frame.routing_key or "",
        reply_code=frame.reply_code or 0,
        reply_text=frame.reply_text,
    )
