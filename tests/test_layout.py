"""The package layout keeps data flowing one way: a walk over every import statement (module
level and inside functions) of the installed packages, from their source files.

* drivers and models never import each other; drivers, models and sync never import the agent;
* the shared low pieces (``edge_agent/``) import none of the layers;
* the training subpackage (the ``[train]`` extra) is imported only by the training commands
  (``models/cli.py``), commissioning and itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"agent": "edge_agent.agent", "drivers": "edge_agent.drivers",
          "models": "edge_agent.models", "sync": "edge_agent.sync"}
FORBIDDEN = {
    "drivers": ("edge_agent.models", "edge_agent.agent", "edge_agent.sync"),
    "models": ("edge_agent.drivers", "edge_agent.agent"),
    "sync": ("edge_agent.agent", "edge_agent.drivers", "edge_agent.models"),
    "edge_agent": ("edge_agent.agent", "edge_agent.drivers", "edge_agent.models",
                   "edge_agent.sync"),
}
TRAINING = "edge_agent.models.training"
TRAINING_IMPORTERS = ("models/cli.py", "models/commissioning.py", "models/training/")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in LAYERS:
        parts = [*LAYERS[parts[0]].split("."), *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    files = sources(layer)
    assert files, f"no sources under {layer}/"
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}"
           for p in files for line, mod in imports(p)
           if any(under(mod, f) for f in FORBIDDEN[layer])]
    assert not bad, "\n".join(bad)


def test_training_is_imported_only_by_training_commands_and_commissioning() -> None:
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}"
           for layer in LAYERS for p in sources(layer) for line, mod in imports(p)
           if under(mod, TRAINING)
           and not str(p.relative_to(REPO)).startswith(TRAINING_IMPORTERS)]
    assert not bad, "\n".join(bad)


def test_the_walk_sees_imports_inside_functions() -> None:
    """The checker itself: a lazy import and a relative one are both found."""
    probe = REPO / "drivers" / "simulator.py"
    found = {m for _, m in imports(probe)}
    assert "edge_agent.bearing" in found and "edge_agent.drivers.base" in found
    sync_found = {m for _, m in imports(REPO / "sync" / "buffer.py")}
    assert "edge_agent.sync.schema" in sync_found          # ``from . import schema``
    cli_found = {m for _, m in imports(REPO / "models" / "cli.py")}
    assert "edge_agent.models.training.baseline" in cli_found  # imported inside cmd_train
