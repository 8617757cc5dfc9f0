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
