"""The shape of the code: the import graph of the `memscore` package (engine/ and kernels/ in the repository) has
no cycles (lazy imports inside functions count too), so every module can be read after the modules it uses; the
modules are grouped by stage and no stage imports a later one (`STAGES`, which a new module must join); and no
file (the package's modules, the tests, the bench) reaches into another module's private names, so a module's
underscore names can change without breaking anything outside it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"engine": "memscore", "kernels": "memscore.kernels"}
"""Repository folder -> the package it installs as (pyproject.toml maps them the same way)."""
USERS = ("tests", "bench")
"""Repository folders outside the package whose files must use the package's public names too."""


def _module_name(path: Path) -> str:
    folder, *parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join([PACKAGES[folder], *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for folder in PACKAGES for path in sorted((ROOT / folder).rglob("*.py"))}


def _import_target(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The module a `from ... import` in module `name` (the file `path`) reads from, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
    return ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, anywhere in the file (a name imported from a package counts as
    its submodule when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _import_target(node, name, path)
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return {module for module in found if module in known and module != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert graph["memscore.run"] >= {"memscore.store", "memscore.schedule", "memscore.work"}  # the parser sees imports
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


STAGES: tuple[tuple[str, frozenset[str]], ...] = tuple((stage, frozenset(modules)) for stage, modules in (
    ("foundations", {"errors", "settings", "timing", "outputs", "devices", "precision", "allocator", "seeding",
                     "schedule", "progress_files"}),
    ("reading", {"data", "images", "preprocess", "batch", "pillow_reader", "dali_reader", "pipeline", "synthetic"}),
    ("models", {"backbones", "victims", "victims.checkpoint", "victims.pix2pix", "victims.pix2pixhd",
                "victims.spade", "victims.diffusion", "kernels", "kernels.interp", "kernels.difficulty", "train",
                "train_diffusion", "recipes"}),
    ("statistics", {"metrics", "alpha", "calibration", "likelihood_ratio", "blind"}),
    ("store", {"config", "store", "score_names"}),
    ("scoring", {"scores", "work", "shadows", "lmem", "run"}),
    ("attacks", {"attack", "lcal", "shadow_scores", "rescoring", "dataset_inference", "claims"}),
    ("reporting", {"report_data", "report"}),
    ("commands", {"", "cli", "demo"}),
))
"""The package's stages, in the order data flows through them (module names under `memscore.`; "" is the package
itself). A module may import its own stage and earlier ones only: statistics are pure functions of arrays, the
store knows no model, scoring knows no attack, and only the commands know everything."""


def _stage_of(module: str) -> int:
    name = module.removeprefix("memscore").removeprefix(".")
    found = [index for index, (_, members) in enumerate(STAGES) if name in members]
    assert len(found) == 1, f"{module} must belong to exactly one stage of STAGES (it is in {len(found)})"
    return found[0]


def _upward_imports(graph: dict[str, set[str]], stage_of) -> list[str]:
    return sorted(f"{module} ({STAGES[stage_of(module)][0]}) imports {used} ({STAGES[stage_of(used)][0]})"
                  for module, used_set in graph.items() for used in used_set if stage_of(used) > stage_of(module))


def test_no_stage_imports_a_later_one():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert not _upward_imports(graph, _stage_of)


def test_the_stage_rule_finds_a_planted_upward_import():
    stage_of = {"memscore.store": 4, "memscore.report": 7, "memscore.errors": 0}.__getitem__
    graph = {"memscore.store": {"memscore.report", "memscore.errors"}, "memscore.report": {"memscore.store"},
             "memscore.errors": set()}
    assert _upward_imports(graph, stage_of) == ["memscore.store (store) imports memscore.report (reporting)"]


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _private_uses(name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, `module._name`) wherever the file of module `name` reaches into another project module's private
    names: `from .x import _y`; `x._y` on a name bound to a project module (`from . import x`, `import memscore.x
    as x`, `import memscore.x`); and `setattr`/`getattr`-style calls (`monkeypatch.setattr` too) on one, by object
    and name or by dotted string. Bindings count anywhere in the file, lazy imports included."""
    tree = ast.parse(path.read_text())
    modules: dict[str, str] = {}  # a name bound in the file -> the project module it is
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known and alias.asname:
                    modules[alias.asname] = alias.name
                elif alias.name in known:  # `import memscore.x` binds `memscore`
                    modules[alias.name.partition(".")[0]] = alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom):
            target = _import_target(node, name, path)
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    modules[alias.asname or alias.name] = f"{target}.{alias.name}"
                elif target in known and target != name and _is_private(alias.name):
                    found.append((node.lineno, f"{target}.{alias.name}"))

    def module_of(node: ast.expr) -> str | None:
        """The project module an expression names (`x`, `memscore.x`), else None."""
        if isinstance(node, ast.Name):
            return modules.get(node.id)
        if isinstance(node, ast.Attribute) and (parent := module_of(node.value)):
            return f"{parent}.{node.attr}" if f"{parent}.{node.attr}" in known else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and module_of(node.value) not in (None, name):
            found.append((node.lineno, f"{module_of(node.value)}.{node.attr}"))
        elif isinstance(node, ast.Call) and node.args and _called(node) in ATTRIBUTE_CALLS:
            first, second = node.args[0], node.args[1] if len(node.args) > 1 else None
            if _is_text(first):  # monkeypatch.setattr("memscore.x._y", value)
                owner, _, attribute = first.value.rpartition(".")
            elif _is_text(second):  # setattr(x, "_y", value), monkeypatch.setattr(x, "_y", value)
                owner, attribute = module_of(first), second.value
            else:
                continue
            if owner in known and owner != name and _is_private(attribute):
                found.append((node.lineno, f"{owner}.{attribute}"))
    return sorted(found)


ATTRIBUTE_CALLS = ("setattr", "getattr", "delattr", "hasattr")
"""Calls that reach an attribute by its name as text (`monkeypatch.setattr` too)."""


def _called(node: ast.Call) -> str:
    """The name a call calls: `f` for `f(...)` and for `x.f(...)`."""
    return getattr(node.func, "attr", getattr(node.func, "id", ""))


def _is_text(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def test_no_file_uses_another_modules_private_names():
    modules = _modules()
    files = {path: name for name, path in modules.items()}
    files.update({path: ".".join(path.relative_to(ROOT).with_suffix("").parts)
                  for folder in USERS for path in sorted((ROOT / folder).rglob("*.py"))})
    found = [f"{path.relative_to(ROOT)}:{line}: {used}" for path, name in files.items()
             for line, used in _private_uses(name, path, set(modules))]
    assert files[ROOT / "engine" / "run.py"] == "memscore.run" and len(files) > len(modules)
    assert not found, "private names used outside their module (make them public or use a public route): " + \
        "; ".join(found)


PLANTED = '''
from .store import ScoreStore, _now
from . import store
from .kernels import difficulty as kd
import memscore.run as run
import memscore.kernels.difficulty


def uses(monkeypatch, self, other):
    from .pipeline import _noticed_fallback
    store._read_json, kd._plan, run._finish, memscore.kernels.difficulty._scatter
    monkeypatch.setattr(store, "_HELD_LOCKS", {}), getattr(kd, "_LINEAR")
    monkeypatch.setattr("memscore.run._finish", None)
    # not another module's private names: a class's, its own, dunders, unknown objects, public ones
    ScoreStore._array, store.ScoreStore._array, memscore.attack._own, store.__name__, self._x, other._y, kd.plan
    setattr(self, "_x", 1), getattr(store, "column_digest"), monkeypatch.setattr("memscore.run.run_scoring", None)
'''


def test_the_private_name_finder_finds_planted_uses(tmp_path):
    path = tmp_path / "attack.py"  # read as memscore.attack: relative imports resolve inside the package
    path.write_text(PLANTED)
    known = {"memscore", "memscore.attack", "memscore.store", "memscore.run", "memscore.pipeline", "memscore.kernels",
             "memscore.kernels.difficulty"}
    assert _private_uses("memscore.attack", path, known) == [
        (2, "memscore.store._now"), (10, "memscore.pipeline._noticed_fallback"),
        (11, "memscore.kernels.difficulty._plan"), (11, "memscore.kernels.difficulty._scatter"),
        (11, "memscore.run._finish"), (11, "memscore.store._read_json"),
        (12, "memscore.kernels.difficulty._LINEAR"), (12, "memscore.store._HELD_LOCKS"), (13, "memscore.run._finish")]
