"""The layers of hare_py: every import points down, and backends keep to themselves.

    hare_py, cli, demo, testing     (the top: may import anything)
    rpc                             behaviours: RPCClient, RPCServer
    conventions                     wire naming and envelopes
    actor                           the OTP-like runtime
    transport                       the seam and its backends
    errors, codecs, _log, _clock,   (the bottom: import nothing of hare_py's above them)
    _frozen, _ids

Inside ``transport``, a backend (a subpackage such as ``amqp`` or ``sandbox``)
imports only its own modules and the transport's top-level modules (the seam,
URLs, the shared codecs), never another backend, and no backend imports a
layer above ``transport``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "hare_py"

LAYERS = {
    "rpc": 5,
    "conventions": 4,
    "actor": 3,
    "transport": 2,
    "errors": 1,
    "codecs": 1,
    "_log": 1,
    "_clock": 1,
    "_frozen": 1,
    "_ids": 1,
}
TOP = 6  # the package itself, cli, demo, testing, __main__


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every hare_py import in ``path``, module ``name``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("hare_py")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hare_py"):
                found.append((node.lineno, target))
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def _backend(module: str) -> str | None:
    """The transport backend package ``module`` belongs to, if any."""
    parts = module.split(".")
    if len(parts) > 3 and parts[1] == "transport":
        return parts[2]
    if len(parts) == 3 and parts[1] == "transport" and (ROOT / "transport" / parts[2]).is_dir():
        return parts[2]
    return None


def violations(root: Path = ROOT) -> list[str]:
    """Every import in the package under ``root`` that breaks a rule, as ``file:line: why``."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        for line, target in _imports(path, module):
            where = f"{path.relative_to(root.parent)}:{line}"
            if _layer(target) > _layer(module):
                found.append(f"{where}: {module} imports {target}, a layer above it")
            mine, theirs = _backend(module), _backend(target)
            if mine is not None and theirs is not None and mine != theirs:
                found.append(f"{where}: backend {mine} imports backend {theirs} ({target})")
    return found


def test_every_import_points_down() -> None:
    """No module imports a layer above its own, and no backend imports another backend."""
    assert violations() == []


def test_a_planted_upward_import_is_caught(tmp_path: Path) -> None:
    """The check is not vacuous: an upward import planted in a copy of the tree fails it."""
    import shutil

    copy = tmp_path / "hare_py"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    base = copy / "transport" / "base.py"
    base.write_text(base.read_text() + "\nfrom ..rpc import client  # planted\n")
    sandbox = copy / "transport" / "sandbox" / "_model.py"
    sandbox.write_text(sandbox.read_text() + "\nfrom ..amqp import _codec  # planted\n")
    found = violations(copy)
    assert any("transport.base imports hare_py.rpc" in v for v in found), found
    assert any("backend sandbox imports backend amqp" in v for v in found), found


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_every_layer_exists(layer: str) -> None:
    """The table names real modules, so that a rename cannot silently exempt one."""
    assert (ROOT / layer).is_dir() or (ROOT / f"{layer}.py").is_file()
