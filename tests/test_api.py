"""The public API: `from adaptkit import X` works for every exported name, type checkers see the same names,
and `import adaptkit` itself stays light."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import adaptkit
from adaptkit.errors import AdaptkitError

INIT = Path(adaptkit.__file__)


def test_every_exported_name_resolves_to_its_modules_object():
    assert set(adaptkit.__all__) == {"__version__", *adaptkit._EXPORTS}
    for name, module in adaptkit._EXPORTS.items():
        assert getattr(adaptkit, name) is getattr(importlib.import_module(module), name), name
    namespace: dict[str, object] = {}
    exec("from adaptkit import *", namespace)  # what `from adaptkit import *` gives a user
    assert set(adaptkit.__all__) <= set(namespace)


def test_type_checkers_see_exactly_the_lazy_exports():
    tree = ast.parse(INIT.read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    imported = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert imported == adaptkit._EXPORTS


def test_every_adaptkit_error_is_exported():
    for module in pkgutil.walk_packages(adaptkit.__path__, "adaptkit."):
        importlib.import_module(module.name)
    errors, todo = set(), [AdaptkitError]
    while todo:
        cls = todo.pop()
        errors.add(cls)
        todo.extend(cls.__subclasses__())
    ours = {cls.__name__ for cls in errors if cls.__module__.startswith("adaptkit.")}
    assert ours <= set(adaptkit.__all__)


def test_import_adaptkit_does_not_import_torch():
    code = "import sys, adaptkit; print(sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _module_imports() -> dict[str, set[str]]:
    """Every adaptkit module -> the adaptkit modules it imports anywhere (top level, inside functions, under
    TYPE_CHECKING): a function-level import still makes two modules depend on each other."""
    root = INIT.parent
    modules = {".".join(("adaptkit", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): path
               for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "adaptkit":  # the facade: it imports every public name lazily, by design
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[:len(parts) - node.level + 1], base]).strip(".")
                for alias in node.names:  # `from adaptkit import bases`: a module; `AdaptedModel`: its home module
                    candidate = f"{base}.{alias.name}"
                    targets.add(candidate if candidate in modules else adaptkit._EXPORTS.get(alias.name, base)
                                if base == "adaptkit" else base)
        graph[name] = {target for target in targets if target in modules and target not in (name, "adaptkit")}
    return graph


def test_the_module_graph_has_no_cycles():
    graph = _module_imports()
    assert {"adaptkit.adapters", "adaptkit.bases", "adaptkit.tiny"} <= set(graph)
    assert "adaptkit.card" in graph["adaptkit.hub"] and "adaptkit.tiny" in graph["adaptkit.bases"]  # it sees imports
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            assert state.get(target) != "open", "import cycle: " + " -> ".join([*path[path.index(target):], target])
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
