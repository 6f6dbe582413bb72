"""Payload codecs: bytes by default, JSON on request, your own through ``Codec``.

Nothing here ever unpickles.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError

__all__ = ["BYTES", "JSON", "BytesCodec", "Codec", "JSONCodec"]

# allow_nan=False: NaN and Infinity are not JSON, and other peers refuse them. One
# encoder for every call: json.dumps() with options builds a new one each time.
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


@runtime_checkable
class Codec(Protocol):
    """Turns payloads into message bodies and back."""

    # Read-only here, so that a codec may declare it as a plain ``str`` (or a
    # property): ``content_type = "text/plain"`` on the class is enough.
    @property
    def content_type(self) -> str | None:
        """The ``content_type`` of the messages this codec encodes (``None``: none)."""

    def check(self, payload: Any) -> None:
        """Raise ``ConfigError`` at once for a payload this codec cannot encode."""

    def encode(self, payload: Any) -> bytes: ...

    def decode(self, body: bytes, content_type: str | None) -> Any: ...


class BytesCodec:
    """Payloads are bytes, sent as they are."""

    content_type: str | None = None

    def check(self, payload: Any) -> None:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise ConfigError(
                f"payload must be bytes without a codec, got {type(payload).__name__} "
                f"{payload!r:.60}; encode it or start the client with codec=JSON"
            )

    def encode(self, payload: Any) -> bytes:
        return payload if type(payload) is bytes else bytes(payload)

    def decode(self, body: bytes, content_type: str | None) -> Any:
        return body


class JSONCodec:
    """Payloads are JSON values (``content_type: application/json``)."""

    content_type: str | None = "application/json"

    def check(self, payload: Any) -> None:
        self.encode(payload)

    def encode(self, payload: Any) -> bytes:
        try:
            return _ENCODE(payload).encode()
        except RecursionError:
            raise ConfigError(
                f"payload {type(payload).__name__} is nested too deeply to encode as JSON"
            ) from None
        except (TypeError, ValueError) as exc:
            # repr() of a hostile payload could itself recurse: name only its type.
            raise ConfigError(
                f"payload {type(payload).__name__} is not JSON-serialisable: {exc}"
            ) from None

    def decode(self, body: bytes, content_type: str | None) -> Any:
        return json.loads(body)


BYTES = BytesCodec()
JSON = JSONCodec()
