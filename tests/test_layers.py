"""The package layout follows the data flow: imports point one way, nothing imports the world.

    config -> task, parallel -> model -> sampling -> rl -> eval -> train -> experiments -> cli

A module may import its own package and any package of a lower layer, never a higher one
(function-local imports included: a lazy import is still a dependency). `agrl.world` is the
synthetic data generator: only experiments and the CLI may use it. These rules are what keeps
the import graph free of cycles between packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGRL = Path(__file__).resolve().parents[1] / "agrl"

LAYER = {
    "config": 0,
    "task": 1,
    "parallel": 1,
    "world": 2,
    "model": 2,
    "sampling": 3,
    "rl": 4,
    "eval": 5,
    "train": 6,
    "experiments": 7,
    "cli": 8,
}
WORLD_USERS = {"experiments", "cli", "world"}


def _package(module: str) -> str | None:
    """'agrl.rl.loss' -> 'rl'; 'agrl' itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "agrl" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "agrl":  # from agrl import rl
                out += [(node.lineno, f"agrl.{a.name}") for a in node.names]
            elif node.module.startswith("agrl."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("agrl.")]
    return out


def _modules() -> list[Path]:
    return sorted(p for p in AGRL.rglob("*.py") if p.name != "__init__.py" or p.parent != AGRL)


def test_every_package_has_a_layer():
    packages = {p.relative_to(AGRL).parts[0].removesuffix(".py") for p in _modules()}
    assert packages == set(LAYER), packages ^ set(LAYER)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(AGRL)))
def test_imports_point_one_way(path: Path):
    own = path.relative_to(AGRL).parts[0].removesuffix(".py")
    bad = []
    for line, module in _imports(path):
        target = _package(module)
        if target is None or target == own:
            continue
        if target == "world" and own not in WORLD_USERS:
            bad.append(f"line {line}: {module} (only experiments and the CLI use the world)")
        elif LAYER[target] >= LAYER[own]:
            bad.append(f"line {line}: {module} (layer {target}={LAYER[target]} >= {own})")
    assert not bad, f"{path.relative_to(AGRL)} imports against the data flow: {bad}"


def test_no_private_names_across_modules():
    """`from agrl.x import _name` reaches into another module's internals."""
    bad = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agrl"):
                bad += [
                    f"{path.relative_to(AGRL)}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert not bad, bad
