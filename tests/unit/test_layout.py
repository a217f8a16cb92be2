"""The package layout's rules (README "Layout"), read from every module's imports, late ones included.

Layers, lowest first; a module imports only from its own layer or below:
  0 contract   visalign.errors, visalign.inputs, visalign.schema, visalign.report, visalign.recipes (recipes
               import nothing else of visalign)
  1 infra      visalign.infra
  2 models     visalign.models, visalign.image_layout
  3 stages     visalign.stages
  4 papers     visalign.mia_dpo, visalign.mpo, visalign.ipa (never each other)
  5 entry      visalign.toyworld, visalign.cli, visalign.demo
The pipelines package (visalign_pipelines) sits above them all; of visalign only the demo imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "components" / "visalign"
PAPERS = ("visalign.mia_dpo", "visalign.mpo", "visalign.ipa")
LAYERS = [
    ("visalign.errors", "visalign.inputs", "visalign.schema", "visalign.report", "visalign.recipes"),
    ("visalign.infra",),
    ("visalign.models", "visalign.image_layout"),
    ("visalign.stages",),
    PAPERS,
    ("visalign.toyworld", "visalign.cli", "visalign.demo"),
]
MAX_LINES = 450


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(_within(module, p) for p in prefixes):
            return i
    raise AssertionError(f"{module}: in no layer; add it to README 'Layout' and LAYERS")


def _package_of(module: str) -> str:
    """The prefix that names the module's room: visalign.stages, visalign.recipes, visalign.cli, ..."""
    parts = module.split(".")
    return ".".join(parts[:2])


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """Every visalign / visalign_pipelines module `path` imports, wherever the import statement is."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:  # `from visalign.stages import rollout` imports a module, not a name
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m.split(".")[0] in ("visalign", "visalign_pipelines")}


def graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imports(f, known) - {module_name(f)} for f in files}


def violations(deps: dict[str, set[str]]) -> list[str]:
    problems = []
    for mod, imported in sorted(deps.items()):
        for dep in sorted(imported):
            if dep == "visalign":  # the empty top-level package
                continue
            if dep.startswith("visalign_pipelines"):
                if mod != "visalign.demo":
                    problems.append(f"{mod} imports {dep}: the pipelines package sits above visalign")
                continue
            if _within(mod, "visalign.recipes") and not _within(dep, "visalign.recipes"):
                problems.append(f"{mod} imports {dep}: recipes import nothing else of visalign (use recipes/registry.py)")
            elif layer(dep) > layer(mod):
                problems.append(f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)}): a lower layer "
                                "imports a higher one")
            elif layer(dep) == layer(mod) == LAYERS.index(PAPERS) and _package_of(dep) != _package_of(mod):
                problems.append(f"{mod} imports {dep}: one paper's package never imports another's")
    return problems


def test_every_module_keeps_to_its_layer():
    assert violations(graph()) == []


def test_the_rules_catch_each_kind_of_violation():
    bad = {"visalign.recipes.validate": {"visalign.stages.augment"},
           "visalign.infra.kfp_client": {"visalign_pipelines.compile"},
           "visalign.stages.rollout": {"visalign.mia_dpo.attention"},
           "visalign.ipa.pairs": {"visalign.mpo.pairs"},
           "visalign.mpo.pairs": {"visalign.stages.rollout", "visalign.recipes", "visalign.infra.store"},
           "visalign.demo": {"visalign_pipelines.local", "visalign.ipa.summary"}}
    found = violations(bad)
    assert len(found) == 4
    assert [p.split(" ")[0] for p in found] == ["visalign.infra.kfp_client", "visalign.ipa.pairs",
                                                "visalign.recipes.validate", "visalign.stages.rollout"]


def test_no_import_cycle_between_packages():
    deps = graph()
    rooms: dict[str, set[str]] = {}
    for mod, imported in deps.items():
        rooms.setdefault(_package_of(mod), set()).update(
            _package_of(d) for d in imported if d.startswith("visalign.") and _package_of(d) != _package_of(mod))

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in rooms.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert [room for room in sorted(rooms) if room in reach(room)] == []


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_the_size_limit(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path}: split it (README 'Layout')"
