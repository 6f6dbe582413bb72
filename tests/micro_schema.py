"""The NATS service API's answers, as nats.go's micro and nats-py's nats.micro send them.

``check(kind, doc)`` fails unless ``doc`` (a decoded ``$SRV.PING``, ``INFO`` or
``STATS`` answer) has exactly micro's keys with micro's types; ``shape(doc)``
is a document's keys and types, for comparing two services' answers.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

__all__ = ["TYPES", "check", "shape"]

TYPES = {
    "PING": "io.nats.micro.v1.ping_response",
    "INFO": "io.nats.micro.v1.info_response",
    "STATS": "io.nats.micro.v1.stats_response",
}
_IDENTITY = {"name": str, "id": str, "version": str, "metadata": dict, "type": str}
_TOP = {
    "PING": _IDENTITY,
    "INFO": {**_IDENTITY, "description": str, "endpoints": list},
    "STATS": {**_IDENTITY, "started": str, "endpoints": list},
}
_ENDPOINT: dict[str, dict[str, Any]] = {
    "INFO": {"name": str, "subject": str, "queue_group": str, "metadata": (dict, type(None))},
    "STATS": {
        "name": str,
        "subject": str,
        "queue_group": str,
        "num_requests": int,
        "num_errors": int,
        "last_error": str,
        "processing_time": int,
        "average_processing_time": int,
    },
}
_OPTIONAL = {"data"}  # nats-py always sends it (null without a stats handler); nats.go may not
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def _fields(doc: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    extra = set(doc) - set(schema) - _OPTIONAL
    missing = set(schema) - set(doc)
    assert not extra and not missing, f"{where}: extra {sorted(extra)}, missing {sorted(missing)}"
    for key, kind in schema.items():
        value = doc[key]
        assert isinstance(value, kind) and not isinstance(value, bool), (
            f"{where}.{key}: {value!r} is not {kind}"
        )


def check(kind: str, doc: Any) -> None:
    """Fail unless ``doc`` is a well-formed micro ``kind`` ("PING", "INFO", "STATS") answer."""
    assert isinstance(doc, dict), f"{kind}: not a JSON object"
    _fields(doc, _TOP[kind], kind)
    assert doc["type"] == TYPES[kind]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc["metadata"].items())
    for i, endpoint in enumerate(doc.get("endpoints", ())):
        _fields(endpoint, _ENDPOINT[kind], f"{kind}.endpoints[{i}]")
    if kind == "STATS":
        assert _RFC3339.fullmatch(doc["started"]), doc["started"]
        # nats-py reads 'started' with this format, so it must carry a fraction.
        datetime.strptime(doc["started"], "%Y-%m-%dT%H:%M:%S.%fZ")
        for endpoint in doc["endpoints"]:
            n, total = endpoint["num_requests"], endpoint["processing_time"]
            assert endpoint["average_processing_time"] == (total // n if n else 0)
            assert 0 <= endpoint["num_errors"] <= n


def shape(value: Any) -> Any:
    """The keys and value types of a JSON document (a list by its first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__
