"""The recipe registry: every recipe module of the package is registered, and the recipes' base
module imports none of them (recipes import the base, never the other way round)."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import mitigations
import mitigations.recipe
from mitigations.recipe import Recipe
from mitigations.registry import BUILTIN, builtin_recipes


def recipe_modules() -> dict[str, str]:
    """Every module of the mitigations package that defines a ``RECIPE``, found by walking the
    package (not from the registry's list): ``{module: recipe name}``."""
    found = {}
    for info in pkgutil.walk_packages(mitigations.__path__, "mitigations."):
        if info.name.endswith("__main__"):
            continue
        recipe = getattr(importlib.import_module(info.name), "RECIPE", None)
        if isinstance(recipe, Recipe):
            found[info.name] = recipe.name
    return found


def test_every_recipe_module_of_the_package_is_registered():
    modules = recipe_modules()
    assert set(modules) == set(BUILTIN)
    recipes = builtin_recipes()
    assert sorted(recipes) == sorted(modules.values())
    assert {"roi-iou", "affact-b", "rebalance", "jlu", "crayon"} <= set(recipes)
    for module, name in modules.items():
        assert recipes[name] is importlib.import_module(module).RECIPE


def test_importing_the_recipe_base_imports_no_recipe():
    code = (
        "import json, sys; import mitigations.recipe, mitigations.registry; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mitigations'))))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert "mitigations.recipe" in loaded
    assert not set(loaded) & {*BUILTIN, *recipe_modules()}, loaded
    assert not [m for m in loaded if m.startswith("mitigations.crayon")], loaded


def imported_modules(source: str) -> set[str]:
    """Every module an import statement of ``source`` names, also inside functions
    (``from mitigations import jlu`` names mitigations.jlu)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_recipe_base_names_no_recipe_module_even_lazily():
    source = Path(mitigations.recipe.__file__).read_text(encoding="utf-8")
    imported = imported_modules(source)
    assert "pytest_biascheck.model" in imported  # the reader sees the module's imports
    assert not imported & {*recipe_modules(), "mitigations.registry"}, imported
