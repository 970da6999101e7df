"""What one pytest session knows about biascheck, on ``config.stash[STATE]``: settings, the models
by node id path, their data and scope, results evaluated once per model, and the check outcomes
gathered from test reports (so that the pytest-xdist controller sees its workers' outcomes too)."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_biascheck import hookspecs
from pytest_biascheck.baseline import Baseline
from pytest_biascheck.config import Settings
from pytest_biascheck.errors import BiascheckError

STATE = pytest.StashKey["BiascheckState"]()


def node_path(rootpath: Path, path: Path) -> str:
    """A model file's path as pytest writes it in node ids: relative to the rootdir, with "/"
    (``../`` leads out of the rootdir, where pytest itself would write nothing)."""
    return os.path.relpath(os.path.abspath(path), rootpath).replace(os.sep, "/")


@dataclass
class BiascheckState:
    """Settings, loaded models (keyed by node id path, so that two ``model.pt`` in different folders
    stay apart), and everything computed for them in this process."""

    settings: Settings
    models: dict[str, Any] = field(default_factory=dict)
    hook: Any = None
    baselines: dict[str, Baseline] = field(default_factory=dict)
    report_dir: Path = Path("reports")
    precomputed: Path | None = None
    progress: bool = False
    cache: Path | None = None
    session: Path | None = None
    temporary: bool = False
    datasets: dict[str, tuple[str, Any]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    fixes: dict[str, Any] = field(default_factory=dict)
    outcomes: list[tuple[tuple[int, int], dict[str, Any]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: Path | None = None
    _cache_checked: bool = False

    def key_of(self, model: Any) -> str:
        """The node id path of a loaded model."""
        return next(key for key, m in self.models.items() if m is model)

    def dataset(self, key: str) -> tuple[str, Any]:
        """(spec, dataset) a model is evaluated on: model setting, then global setting, then the default."""
        if key not in self.datasets:
            from pytest_biascheck.planning import data_for

            extra = hookspecs.merged(self.hook.pytest_biascheck_datasets()) if self.hook else {}
            self.datasets[key] = data_for(self.models[key], self.settings, extra)
        return self.datasets[key]

    def scope(self, key: str) -> Any:
        """What to check for a model: configured attributes/groups/regions, else the data's defaults."""
        from pytest_biascheck.planning import plan_for

        return plan_for(self.models[key], self.dataset(key)[1], self.settings)[0]

    def planned(self, key: str) -> list[tuple[Any, Any]]:
        """The (check, target) pairs a model's items check, in catalogue order; what the model's
        scope cannot check becomes a note of the run."""
        from pytest_biascheck.checks import catalogue, selected

        scope = self.scope(key)
        self.notes += [note for note in scope.notes if note not in self.notes]
        return [
            (check, target)
            for check in selected(catalogue(self.hook), self._wanted(key))
            for target in check.targets(scope)
        ]

    def information(self, key: str, results: Any, prefix: str) -> list[dict[str, Any]]:
        """Outcomes of the checks a model's items do not run, measured as information; ``prefix``
        is the model's node id, so each is named as its item would be."""
        from pytest_biascheck.checks import catalogue, information, selected

        checks = catalogue(self.hook)
        gating = {c.name for c in selected(checks, self._wanted(key))}
        name = self.models[key].name
        rows = information(
            results,
            self.scope(key),
            [c for c in checks.values() if c.name not in gating],
            lambda check: self.settings.threshold(name, check.name, check.threshold)[0],
        )
        return [{**row, "item": f"{prefix}::{row['item']}", "path": key} for row in rows]

    def fix(self, key: str) -> Any:
        """What a model's suggested fixes are filled in with (:class:`suggest.Fix`), found once
        per model for all its items."""
        from pytest_biascheck.suggest import fix_for

        if key not in self.fixes:
            model, results = self.models[key], self.results_for(key)
            self.fixes[key] = fix_for(model, self.dataset(key)[0], results)
        return self.fixes[key]

    def _wanted(self, key: str) -> list[str]:
        name = self.models[key].name
        return self.settings.for_model(name).checks or self.settings.checks

    def results_for(self, key: str) -> Any:
        """Evaluate a model once: from ``--biascheck-results``, the stored evaluation, or one pass."""
        if key not in self.results:
            self.results[key] = self._evaluate(key)
        return self.results[key]

    def stored_results(self, key: str) -> Any | None:
        """The model's results if this process or another (an xdist worker) has them; never evaluates."""
        if key in self.results or self.precomputed is not None:
            return self.results_for(key)
        path = self._stored_path(key)
        if path is None or not path.is_file():
            return None
        from pytest_biascheck.store import load_results

        return self.results.setdefault(key, load_results(path))

    def cache_folder(self) -> Path | None:
        """The cache folder when caching is on and it can be written (a note says why not
        otherwise); an xdist worker uses the controller's decision."""
        if self.cache is None and self.settings.cache and not self._cache_checked:
            self._cache_checked = True
            cache = self.report_dir / ".cache"
            try:
                cache.mkdir(parents=True, exist_ok=True)
                tempfile.TemporaryFile(dir=cache).close()
            except OSError as exc:
                self.notes.append(
                    f"cache folder {cache} cannot be written ({exc.strerror or exc}): evaluated "
                    "without the cache; pass --biascheck-report DIR or --biascheck-no-cache"
                )
            else:
                self.cache = cache
        return self.cache

    def adopt(self, cache: Path | None, session: Path) -> None:
        """An xdist worker's folders for evaluations, as the controller chose them (``share``)."""
        self.cache, self.session, self._cache_checked = cache, session, True

    def share(self) -> tuple[Path | None, Path]:
        """The folders xdist workers store and read evaluations in: the cache folder (None when not
        used), and a temporary folder of this session for what is not cached (live models, or all
        with the cache off), so that one worker evaluates each model and the controller reads it."""
        if self.session is None:
            self.session, self.temporary = Path(tempfile.mkdtemp(prefix="biascheck-")), True
        return self.cache_folder(), self.session

    def cleanup(self) -> None:
        """Remove the temporary folder shared with xdist workers, if this process made one."""
        if self.temporary and self.session is not None:
            shutil.rmtree(self.session, ignore_errors=True)

    def _plan(self, key: str) -> Any:
        from pytest_biascheck.planning import plan_for

        return plan_for(self.models[key], self.dataset(key)[1], self.settings)[1]

    def _stored_path(self, key: str) -> Path | None:
        """The file the model's evaluation is stored in (None when nothing is stored): in the cache
        folder, or in this session's folder under xdist. A live model's is never cached: its code
        may change while its weights do not."""
        live = self.models[key].live
        folder = (None if live else self.cache_folder()) or self.session
        if folder is None:
            return None
        from pytest_biascheck.store import cache_key

        model = self.models[key]
        spec, dataset = self.dataset(key)
        extra = {"task": model.spec.to_dict(), "arch": model.arch, "arch_kwargs": model.arch_kwargs}
        extra["metadata"] = getattr(dataset, "sha256", None)  # a joined metadata CSV's bytes
        return folder / f"{cache_key(model.sha256, spec, self._plan(key), extra)}.json"

    def _evaluate(self, key: str) -> Any:
        from pytest_biascheck.evaluate import evaluate
        from pytest_biascheck.store import cached, load_results

        model = self.models[key]
        spec, dataset = self.dataset(key)
        if self.precomputed is not None:
            results = load_results(self.precomputed)
            if results.sha256 != model.sha256 or results.data != spec:
                raise BiascheckError(
                    f"results file {self.precomputed} was computed for another model or data "
                    f"({results.model}, {results.data!r}); re-run python -m pytest_biascheck evaluate"
                )
            return results

        def compute() -> Any:
            return evaluate(
                model, dataset, spec, self._plan(key), batch_size=self.settings.batch_size,
                device=self.settings.device, progress=self.progress,
            )  # fmt: skip

        path = self._stored_path(key)
        return compute() if path is None else cached(path, compute)

    def record(self, position: tuple[int, int], outcome: dict[str, Any]) -> None:
        """Keep a check's outcome, from its test report (a worker's too, under xdist)."""
        self.outcomes.append((position, outcome))

    def ordered_outcomes(self) -> list[dict[str, Any]]:
        """Outcomes in collection order, whichever process ran them first."""
        return [outcome for _, outcome in sorted(self.outcomes, key=lambda pair: pair[0])]

    def _sampler(self, key: str, results: Any) -> Any:
        """A function drawing the report's sample images of a model: their maps, from the model."""
        from pytest_biascheck.evaluate import sample_maps

        if results.plan is None:
            return None
        return functools.partial(
            sample_maps, self.models[key], self.dataset(key)[1], results.plan,
            batch_size=self.settings.batch_size, device=self.settings.device,
        )  # fmt: skip

    def write_report(self, config: pytest.Config) -> Path | None:
        """The HTML and JSON report of every model checked or evaluated (nothing when none was)."""
        from pytest_biascheck.report import library_versions, write_report

        outcomes = self.ordered_outcomes()
        checked = {o["path"] for o in outcomes}
        entries = []
        for key, m in self.models.items():
            results = self.stored_results(key) if key in checked or key in self.results else None
            if results is None:
                continue
            own = [o for o in outcomes if o["path"] == key]
            entries.append(
                {
                    "results": results,
                    "outcomes": own + self.information(key, results, _node_of(own, key)),
                    "model": {
                        "name": m.name,
                        "path": str(m.path),
                        "sha256": m.sha256,
                        "arch": m.arch,
                        "provenance": m.provenance,
                    },
                    "scope": self.scope(key),
                    "images": self._sampler(key, results),
                }
            )
        if not entries:
            return None
        meta = {
            "data": {key: self.dataset(key)[0] for key in self.models},
            "config": {"source": self.settings.source, "thresholds": self.settings.thresholds},
            "versions": library_versions(),
        }
        _, html = write_report(
            entries,
            self.report_dir,
            meta,
            modify=lambda doc: config.hook.pytest_biascheck_report(report=doc),
        )
        return html


def _node_of(outcomes: list[dict[str, Any]], key: str) -> str:
    """The node id of a model's file, from one of its items (``key`` when none ran)."""
    return outcomes[0]["item"].rsplit("::", 1)[0] if outcomes else key
