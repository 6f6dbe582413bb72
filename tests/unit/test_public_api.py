"""The public API: names fixed by DESIGN.md are exported, and __all__ does not drift."""

from __future__ import annotations

import types

import hare_py
import hare_py.testing

FIXED = {
    "RPCClient", "RPCServer", "Forward", "Reply", "NoReply", "Stop", "Ignore", "Request",
    "Response", "Returned", "Caller", "ConnectedMeta", "Connection", "Supervisor", "HareError",
    "ConnectionLost", "RequestTimeout", "Unroutable", "ClientStopped", "RemoteError",
    "ConfigError", "RestartIntensityExceeded",
}  # fmt: skip


def test_design_names_are_exported() -> None:
    """Every name DESIGN.md fixes is importable from hare_py and listed in __all__."""
    assert set(hare_py.__all__) >= FIXED
    assert hasattr(hare_py.testing, "SandboxBroker")


def test_all_matches_the_public_namespace() -> None:
    """__all__ lists exactly the public names hare_py defines, each importable."""
    public = {
        name
        for name, value in vars(hare_py).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)  # submodules
    }
    assert set(hare_py.__all__) == public
    for name in hare_py.__all__:
        assert getattr(hare_py, name) is not None


def test_every_error_is_a_hare_error() -> None:
    """All exceptions hare_py exports derive from HareError."""
    for name in hare_py.__all__:
        obj = getattr(hare_py, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, hare_py.HareError), name
