"""Hook specifications: how plugins and ``conftest.py`` files extend biascheck.

Hooks are named ``pytest_biascheck_*`` so that pytest finds them in ``conftest.py`` files without a
marker. The same specs serve outside pytest (``python -m mitigations``) through ``plugin_manager()``,
which loads plugins from the ``biascheck`` entry-point group, as pytest does too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "pytest"
ENTRY_POINT_GROUP = "biascheck"

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def pytest_biascheck_architectures() -> dict[str, Callable[..., Any]]:
    """Return ``{name: factory}``; ``factory(num_outputs, **arch_kwargs)`` builds an ``nn.Module``.

    Called when a checkpoint is loaded; a checkpoint whose ``arch`` is ``name`` then loads.
    """


@hookspec
def pytest_biascheck_datasets() -> dict[str, Callable[..., Any]]:
    """Return ``{scheme: factory}`` so that ``--biascheck-data scheme:key=value,...`` builds a dataset.

    ``factory(split=..., image_size=..., **params)`` returns a ``BiasDataset``.
    """


@hookspec
def pytest_biascheck_checks() -> list[Any]:
    """Return extra ``checks.Check`` definitions; each becomes pytest items like the built-in ones."""


@hookspec
def pytest_biascheck_recipes() -> dict[str, Callable[..., Any]]:
    """Return ``{name: recipe}`` for ``python -m mitigations NAME``."""


@hookspec
def pytest_biascheck_models(config: Any) -> dict[str, tuple[Any, Any]]:
    """Return ``{name: (module, spec)}``: models built in Python (an ``nn.Module`` and its
    ``ModelSpec`` or task dict) that ``pytest`` gates like ``--biascheck`` files, in every run.

    Called once, when pytest configures (implement it in the root ``conftest.py`` or a plugin,
    as ``pytest_addoption``); each model is validated as a file is (``model.live_model``).
    ``config`` is the ``pytest.Config``; return an empty dict to gate nothing in a run.
    """


@hookspec
def pytest_biascheck_report(report: dict[str, Any]) -> None:
    """Modify the report (the JSON document, also the HTML template's context) in place before writing."""


class _PluginManager(pluggy.PluginManager):
    """Accepts unmarked ``pytest_biascheck_*`` functions, as pytest's own manager does."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if (
            opts is None
            and name.startswith("pytest_biascheck_")
            and callable(getattr(plugin, name))
        ):
            return {}
        return opts


def plugin_manager() -> pluggy.PluginManager:
    """A manager with biascheck's hook specs and the installed ``biascheck`` entry-point plugins."""
    import sys

    pm = _PluginManager(PROJECT)
    pm.add_hookspecs(sys.modules[__name__])
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def merged(results: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Merge the dicts returned by every implementation of a registry hook (earlier plugins win)."""
    out: dict[str, Any] = {}
    for result in reversed(results or []):
        out.update(result or {})
    return out
