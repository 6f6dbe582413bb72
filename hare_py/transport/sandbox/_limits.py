"""What RabbitMQ 3.10 refuses of what the wire can carry. Pure functions, no state.

Each check returns RabbitMQ's reply text (without the code name) for a
refusal, or None. The texts, and the order in which arguments are checked,
are RabbitMQ's, measured against a real broker, so that a test reads the same
on both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "CHANNEL_MAX",
    "EXCHANGE_TYPES",
    "MAX_MESSAGE_SIZE",
    "amqp_type",
    "check_expiration",
    "check_queue",
    "check_x_match",
    "equivalent",
]

CHANNEL_MAX = 2047  # RabbitMQ's default channel_max
MAX_MESSAGE_SIZE = 128 * 1024 * 1024  # RabbitMQ's default max_message_size
MAX_TTL = 315_360_000_000  # ms, ten years: the most a TTL or expiry may be
MAX_PRIORITY = 255
EXCHANGE_TYPES = frozenset({"direct", "topic", "fanout", "headers"})

_QUEUE_TYPES = {
    "classic": "rabbit_classic_queue",
    "quorum": "rabbit_quorum_queue",
    "stream": "rabbit_stream_queue",
}
# The arguments each queue type takes; one known to another type is refused.
_TYPE_ARGS = {
    "classic": frozenset(
        {
            "x-expires",
            "x-message-ttl",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-priority",
            "x-overflow",
            "x-queue-mode",
            "x-single-active-consumer",
            "x-queue-type",
            "x-queue-master-locator",
        }
    ),
    "quorum": frozenset(
        {
            "x-expires",
            "x-message-ttl",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-dead-letter-strategy",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-in-memory-length",
            "x-max-in-memory-bytes",
            "x-overflow",
            "x-single-active-consumer",
            "x-queue-type",
            "x-quorum-initial-group-size",
            "x-delivery-limit",
        }
    ),
    "stream": frozenset(
        {
            "x-max-length-bytes",
            "x-queue-type",
            "x-max-age",
            "x-stream-max-segment-size-bytes",
            "x-initial-cluster-size",
            "x-queue-leader-locator",
        }
    ),
}
_KNOWN_ARGS = frozenset().union(*_TYPE_ARGS.values())

# pamqp's choice of integer type: the smallest that holds the value.
_INTEGERS = (
    (-(1 << 7), (1 << 7) - 1, "byte"),
    (-(1 << 15), (1 << 15) - 1, "short"),
    (0, (1 << 16) - 1, "unsignedshort"),
    (-(1 << 31), (1 << 31) - 1, "signedint"),
    (0, (1 << 32) - 1, "unsignedint"),
)


def amqp_type(value: Any) -> str:
    """How RabbitMQ names the field type of ``value`` as pamqp encodes it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return next((name for lo, hi, name in _INTEGERS if lo <= value <= hi), "long")
    if isinstance(value, float):
        return "float"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, bytes | bytearray):
        return "binary"
    if isinstance(value, datetime):
        return "timestamp"
    if value is None:
        return "void"
    return "table" if isinstance(value, Mapping) else "array"


def _kind(value: Any) -> str:
    # RabbitMQ compares argument values within a type class: all integers alike.
    kind = amqp_type(value)
    if kind in ("byte", "short", "unsignedshort", "signedint", "unsignedint", "long"):
        return "int"
    return "binary" if kind == "longstr" else kind


def _shown(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _described(value: Any) -> str:
    if value is None:
        return "none"
    return f"the value '{_shown(value)}' of type '{amqp_type(value)}'"


def equivalent(key: str, what: str, have: Any, want: Any) -> str | None:
    """Why a redeclare's argument ``want`` differs from the current ``have``, or None.

    ``what`` names the entity: "for queue 'q' in vhost '/'".
    """
    if have is None and want is None:
        return None
    if have is not None and want is not None:
        if _kind(have) == _kind(want) and have == want:
            return None
        return (
            f"inequivalent arg '{key}' {what}: "
            f"received '{_shown(want)}' but current is '{_shown(have)}'"
        )
    return (
        f"inequivalent arg '{key}' {what}: "
        f"received {_described(want)} but current is {_described(have)}"
    )


# -- queue arguments -------------------------------------------------------------


def _integer(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f'"expected integer, got {amqp_type(value)}"'
    return None


def _non_negative(value: Any, _: Mapping[str, Any]) -> str | None:
    if (error := _integer(value)) is not None:
        return error
    return f"{{value_negative,{value}}}" if value < 0 else None


def _ttl(value: Any, args: Mapping[str, Any]) -> str | None:
    if (error := _non_negative(value, args)) is not None:
        return error
    return f"{{value_too_large,{value}}}" if value > MAX_TTL else None


def _positive_ttl(value: Any, args: Mapping[str, Any]) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return "{value_zero,0}"
    return _ttl(value, args)


def _positive(value: Any, args: Mapping[str, Any]) -> str | None:
    if (error := _non_negative(value, args)) is not None:
        return error
    return "{value_zero,0}" if value == 0 else None


def _max_priority(value: Any, args: Mapping[str, Any]) -> str | None:
    if (error := _non_negative(value, args)) is not None:
        return error
    return f"{{max_value_exceeded,{value}}}" if value > MAX_PRIORITY else None


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"{{unacceptable_type,{amqp_type(value)}}}"


def _any_string(value: Any, _: Mapping[str, Any]) -> str | None:
    return _string(value)


def _dead_letter_key(value: Any, args: Mapping[str, Any]) -> str | None:
    if (error := _string(value)) is not None:
        return error
    return None if "x-dead-letter-exchange" in args else "routing_key_but_no_dlx_defined"


def _one_of(choices: tuple[str, ...], refusal: Callable[[str], str]) -> Callable[..., str | None]:
    def check(value: Any, _: Mapping[str, Any]) -> str | None:
        if (error := _string(value)) is not None:
            return error
        return None if value in choices else refusal(value)

    return check


def _boolean(value: Any, _: Mapping[str, Any]) -> str | None:
    return None if isinstance(value, bool) else f"{{unacceptable_type,{amqp_type(value)}}}"


# In RabbitMQ's order: the first one that fails is the one reported.
_QUEUE_ARGS: tuple[tuple[str, Callable[[Any, Mapping[str, Any]], str | None]], ...] = (
    ("x-expires", _positive_ttl),
    ("x-message-ttl", _ttl),
    ("x-dead-letter-exchange", _any_string),
    ("x-dead-letter-routing-key", _dead_letter_key),
    ("x-max-length", _non_negative),
    ("x-max-length-bytes", _non_negative),
    ("x-max-in-memory-length", _non_negative),
    ("x-max-in-memory-bytes", _non_negative),
    ("x-max-priority", _max_priority),
    (
        "x-overflow",
        _one_of(
            ("drop-head", "reject-publish", "reject-publish-dlx"), lambda _: "invalid_overflow"
        ),
    ),
    (
        "x-queue-mode",
        _one_of(("default", "lazy"), lambda v: f"\"unsupported queue mode '{v}'\""),
    ),
    ("x-single-active-consumer", _boolean),
    (
        "x-queue-type",
        _one_of(tuple(_QUEUE_TYPES), lambda v: f"\"unsupported queue type '{v}'\""),
    ),
    ("x-quorum-initial-group-size", _positive),
    ("x-stream-max-segment-size-bytes", _non_negative),
    ("x-initial-cluster-size", _positive),
)


def check_queue(
    what: str,
    *,
    server_named: bool,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    args: Mapping[str, Any],
) -> str | None:
    """Why RabbitMQ refuses to create this queue (``what``: "queue 'q' in vhost '/'"), or None."""
    dlx = args.get("x-dead-letter-exchange")
    if dlx is not None and not isinstance(dlx, str):
        return f"invalid type '{amqp_type(dlx)}' for arg 'x-dead-letter-exchange' in {what}"
    queue_type = args.get("x-queue-type", "classic")
    if server_named and queue_type in ("quorum", "stream"):
        return f"Cannot declare a server-named queue for type {_QUEUE_TYPES[queue_type]}"
    for key, check in _QUEUE_ARGS:
        if key in args and (error := check(args[key], args)) is not None:
            return f"invalid arg '{key}' for {what}: {error}"
    allowed = _TYPE_ARGS[queue_type]
    for key in args:
        if key in _KNOWN_ARGS and key not in allowed:
            return f"invalid arg '{key}' for {what} of queue type {_QUEUE_TYPES[queue_type]}"
    if queue_type != "classic":
        for refused, prop in (
            (auto_delete, "auto-delete"),
            (exclusive, "exclusive-owner"),
            (not durable, "non-durable"),
        ):
            if refused:
                return f"invalid property '{prop}' for {what}"
    return None


def check_x_match(args: Mapping[str, Any]) -> str | None:
    """Why a headers exchange refuses a binding's ``x-match``, or None."""
    if "x-match" not in args:
        return None
    value = args["x-match"]
    if not isinstance(value, str):
        return (
            f"Invalid x-match field type {amqp_type(value)} (value {_shown(value)}); "
            "expected longstr"
        )
    if value in ("all", "any", "all-with-x", "any-with-x"):
        return None
    return (
        f'Invalid x-match field value <<"{value}">>; expected all, any, all-with-x, or any-with-x'
    )


# -- message expiration ------------------------------------------------------------

_INTEGER_PREFIX = re.compile(r"([+-]?[0-9]+)(.*)", re.DOTALL)


def check_expiration(expiration: str) -> int | str:
    """The TTL in milliseconds an ``expiration`` property gives, or RabbitMQ's refusal."""
    match = _INTEGER_PREFIX.fullmatch(expiration)
    if match is None:
        return f"invalid expiration '{expiration}': no_integer"
    digits, rest = match.groups()
    if rest:
        return f"invalid expiration '{expiration}': {{leftover_string,\"{rest}\"}}"
    ttl = int(digits)
    if ttl < 0:
        return f"invalid expiration '{expiration}': {{value_negative,{ttl}}}"
    if ttl > MAX_TTL:
        return f"invalid expiration '{expiration}': {{value_too_large,{ttl}}}"
    return ttl
