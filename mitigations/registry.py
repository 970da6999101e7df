"""Which recipes ``python -m mitigations`` offers: the built-in ones, each module imported only
when the recipes are asked for, and those plugins return from ``pytest_biascheck_recipes``. Recipe
modules import ``recipe`` (their types); ``recipe`` imports no recipe."""

from __future__ import annotations

import importlib
from typing import Any

from mitigations.recipe import Recipe
from pytest_biascheck.errors import BiascheckError

#: Modules of the built-in recipes, each defining ``RECIPE``, in the order the help lists them.
BUILTIN = (
    "mitigations.roi_iou",
    "mitigations.affact_b",
    "mitigations.rebalance",
    "mitigations.jlu",
    "mitigations.crayon",
)


def builtin_recipes() -> dict[str, Recipe]:
    """The recipes that ship with biascheck, by name."""
    recipes = (importlib.import_module(module).RECIPE for module in BUILTIN)
    return {r.name: r for r in recipes}


def all_recipes(hook: Any | None = None) -> dict[str, Recipe]:
    """Built-in recipes plus those plugins return from ``pytest_biascheck_recipes`` (a plugin's
    recipe replaces a built-in one of the same name, as plugin checks do)."""
    recipes = builtin_recipes()
    for extra in hook.pytest_biascheck_recipes() if hook is not None else []:
        for name, recipe in (extra or {}).items():
            if not isinstance(recipe, Recipe):
                raise BiascheckError(
                    f"plugin recipe {name!r} is a {type(recipe).__name__}; return "
                    "mitigations.recipe.Recipe objects from pytest_biascheck_recipes"
                )
            recipes[name] = recipe
    return recipes
