"""pytest entry point: options, model loading, check items, fixtures and the terminal summary."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_biascheck import hookspecs
from pytest_biascheck.baseline import read_baseline, write_baseline
from pytest_biascheck.config import (
    Settings,
    check_folder,
    find_config,
    load_settings,
    option_type,
    validate_thresholds,
)
from pytest_biascheck.errors import BiascheckError

STATE = pytest.StashKey["BiascheckState"]()
#: The usage error an xdist worker stopped on (set in the controller).
WORKER_ERROR = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("biascheck", "bias checks of vision models (biascheck)")
    group.addoption(
        "--biascheck", action="append", default=[], metavar="PATH",
        help="model checkpoint to check; repeat for several models (one set of items each)",
    )  # fmt: skip
    group.addoption(
        "--biascheck-data", metavar="SPEC", default=None,
        help="evaluation data: synthfaces[:n=2000,...], synthbirds[:...], celeba:PATH, celebamask:PATH, waterbirds:PATH, csv:PATH[,groups=A+B,split=test] (docs/data.md), or a folder",
    )  # fmt: skip
    group.addoption(
        "--biascheck-config", metavar="FILE", default=None,
        help="settings file (default: biascheck.toml, else [tool.biascheck] in pyproject.toml)",
    )  # fmt: skip
    group.addoption(
        "--biascheck-report", metavar="DIR", default=None,
        help="folder for the HTML/JSON report and the evaluation cache (default: reports/)",
    )  # fmt: skip
    group.addoption(
        "--biascheck-baseline", metavar="FILE", default=None,
        help="baseline JSON: fail checks that regress beyond their tolerance",
    )  # fmt: skip
    group.addoption(
        "--biascheck-save-baseline", metavar="FILE", default=None,
        help="write every measured value to FILE, to compare later runs against",
    )  # fmt: skip
    group.addoption(
        "--biascheck-results", metavar="FILE", default=None,
        help="gate on results precomputed by python -m pytest_biascheck evaluate (e.g. under torchrun)",
    )  # fmt: skip
    group.addoption(
        "--biascheck-no-cache", action="store_true", default=False,
        help="always re-evaluate instead of reusing results cached in the report folder",
    )  # fmt: skip
    group.addoption(
        "--biascheck-device", metavar="DEVICE", default=None, type=option_type("device"),
        help="torch device for the evaluation pass (default: cuda when available, else cpu)",
    )  # fmt: skip
    group.addoption(
        "--biascheck-batch-size", metavar="N", type=option_type("batch_size"), default=None,
        help="images per batch in the evaluation pass (results do not depend on it)",
    )  # fmt: skip
    group.addoption(
        "--biascheck-trust-pickle", action="store_true", default=False,
        help="allow model files holding pickled Python objects (they can run code: trusted files only)",
    )  # fmt: skip


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@dataclass
class BiascheckState:
    """Everything the session knows about biascheck: settings, loaded models, data, cached results."""

    settings: Settings
    models: list[Any] = field(default_factory=list)
    datasets: dict[str, tuple[str, Any]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    hook: Any = None
    baseline: dict[str, float] = field(default_factory=dict)
    report_dir: Path = Path("reports")
    precomputed: Path | None = None
    progress: bool = False
    report: Path | None = None

    def dataset(self, model: Any) -> tuple[str, Any]:
        """(spec, dataset) a model is evaluated on: model setting, then global setting, then the default."""
        if model.name not in self.datasets:
            from pytest_biascheck.planning import data_for

            extra = hookspecs.merged(self.hook.pytest_biascheck_datasets()) if self.hook else {}
            self.datasets[model.name] = data_for(model, self.settings, extra)
        return self.datasets[model.name]

    def scope(self, model: Any) -> Any:
        """What to check for a model: configured attributes/groups/regions, else the data's defaults."""
        from pytest_biascheck.planning import plan_for

        return plan_for(model, self.dataset(model)[1], self.settings)[0]

    def results_for(self, model: Any) -> Any:
        """Evaluate a model once: from ``--biascheck-results``, the on-disk cache, or one pass."""
        if model.name not in self.results:
            self.results[model.name] = self._evaluate(model)
        return self.results[model.name]

    def _evaluate(self, model: Any) -> Any:
        from pytest_biascheck.evaluate import evaluate
        from pytest_biascheck.planning import plan_for
        from pytest_biascheck.store import cache_key, cached, load_results

        spec, dataset = self.dataset(model)
        if self.precomputed is not None:
            results = load_results(self.precomputed)
            if results.sha256 != model.sha256 or results.data != spec:
                raise BiascheckError(
                    f"results file {self.precomputed} was computed for another model or data "
                    f"({results.model}, {results.data!r}); re-run python -m pytest_biascheck evaluate"
                )
            return results
        _, plan = plan_for(model, dataset, self.settings)

        def compute() -> Any:
            return evaluate(
                model, dataset, spec, plan, batch_size=self.settings.batch_size,
                device=self.settings.device, progress=self.progress,
            )  # fmt: skip

        if not self.settings.cache or model.live:  # a live model's code may change, not its weights
            return compute()
        extra = {"task": model.spec.to_dict(), "arch": model.arch, "arch_kwargs": model.arch_kwargs}
        extra["metadata"] = getattr(dataset, "sha256", None)  # a joined metadata CSV's bytes
        key = cache_key(model.sha256, spec, plan, extra)
        return cached(self.report_dir / ".cache" / f"{key}.json", compute)

    def write_report(self, config: pytest.Config) -> Path | None:
        """The HTML and JSON report of every evaluated model (nothing when no check ran)."""
        from pytest_biascheck.report import library_versions, write_report

        entries = [
            {
                "results": self.results[m.name],
                "outcomes": [o for o in self.outcomes if o["model"] == m.name],
                "model": {
                    "name": m.name,
                    "path": str(m.path),
                    "sha256": m.sha256,
                    "arch": m.arch,
                    "provenance": m.provenance,
                },
                "scope": self.scope(m),
            }
            for m in self.models
            if m.name in self.results
        ]
        if not entries:
            return None
        meta = {
            "data": {m.name: self.dataset(m)[0] for m in self.models},
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "biascheck: a bias check item generated by --biascheck")
    paths = config.getoption("biascheck")
    if config.getoption("help", False):  # --help never loads models (or torch)
        return
    live = hookspecs.merged(config.hook.pytest_biascheck_models(config=config))
    if not paths and not live:
        return
    config.pluginmanager.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
    try:
        config.stash[STATE] = _start(config, paths, live)
    except BiascheckError as exc:
        raise pytest.UsageError(str(exc)) from None
    from pytest_biascheck.checks import catalogue

    for check in catalogue(config.pluginmanager.hook).values():
        config.addinivalue_line("markers", f"{check.name}: biascheck {check.name} items")


def _start(config: pytest.Config, paths: list[str], live: dict[str, Any]) -> BiascheckState:
    """Read settings and load every model up front (files, and the ``live`` models of the
    ``pytest_biascheck_models`` hook), so bad input stops the run before any test."""
    from pytest_biascheck.files import check_file

    for path in paths:
        check_file(path, "model", "model file", "check the path given to --biascheck")
    option = config.getoption("biascheck_config")
    settings = load_settings(Path(option) if option else find_config(config.rootpath))
    for key in ("data", "device", "batch_size"):
        value = config.getoption(f"biascheck_{key}")
        if value is not None:
            setattr(settings, key, value)
    from pytest_biascheck.checks import catalogue
    from pytest_biascheck.model import live_model, load_checkpoint

    hook = config.pluginmanager.hook
    validate_thresholds(settings, catalogue(hook))
    architectures = hookspecs.merged(hook.pytest_biascheck_architectures())
    stems = [Path(p).stem for p in paths] + list(live)
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise BiascheckError(
            f"several models are named {duplicates[0]!r}; give each model file a distinct name"
        )
    models = [
        load_checkpoint(
            path,
            trust_pickle=config.getoption("biascheck_trust_pickle"),
            allow_imports=settings.allow_imports,
            architectures=architectures,
            spec_overrides=settings.for_model(Path(path).stem).task,
        )
        for path in paths
    ]
    models += [live_model(*_live_entry(name, entry), name) for name, entry in live.items()]
    baseline_path = config.getoption("biascheck_baseline")
    baseline = read_baseline(Path(baseline_path)) if baseline_path else {}
    option = config.getoption("biascheck_report")
    report_dir = Path(option) if option else config.rootpath / settings.report
    check_folder(report_dir, "--biascheck-report" if option else "report")
    if config.getoption("biascheck_no_cache"):
        settings.cache = False
    results = config.getoption("biascheck_results")
    progress = config.getoption("verbose") >= 0 and sys.stderr.isatty()
    return BiascheckState(
        settings, models, hook=hook, baseline=baseline, report_dir=report_dir,
        precomputed=Path(results) if results else None, progress=progress,
    )  # fmt: skip


def _live_entry(name: str, entry: Any) -> tuple[Any, Any]:
    """(module, spec) of one ``pytest_biascheck_models`` entry; anything else is a usage error."""
    if not isinstance(entry, tuple) or len(entry) != 2:
        raise BiascheckError(
            f"pytest_biascheck_models returned {type(entry).__name__} for model {name!r}; "
            "return {name: (module, ModelSpec(...))}"
        )
    return entry


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``pytest --biascheck m.pt`` runs only the checks; name test paths to run your own tests too."""
    paths = config.getoption("biascheck", None)
    if STATE in config.stash and paths and not config.option.file_or_dir:
        return True
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Put the check items of every model first, before -k/-m selection runs (hence tryfirst)."""
    state = config.stash.get(STATE, None)
    if state is None:
        return
    from pytest_biascheck.items import ModelCollector

    generated: list[pytest.Item] = []
    for model in state.models:
        try:
            state.scope(model)
            if state.precomputed is not None:
                state.results_for(model)
        except BiascheckError as exc:
            raise pytest.UsageError(str(exc)) from None
        collector = ModelCollector.from_parent(
            session, name=model.path.name, nodeid=model.path.name, model=model
        )
        generated.extend(session.genitems(collector))
    items[:0] = generated


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Evaluate the model an item needs before the item starts (inside pytest's warning capture),
    so bad data found only during evaluation (a truncated image, a decompression bomb) is one
    usage error (exit 4) instead of one failed item per check."""
    state = item.config.stash.get(STATE, None)
    model = None if state is None else _model_of(item)
    if model is None or model.name in state.results:
        return
    try:
        state.results_for(model)
    except BiascheckError as exc:
        if hasattr(item.config, "workerinput"):  # xdist: the controller stops and exits 4
            item.session.shouldstop = str(exc)
            item.config.workeroutput["biascheck_error"] = str(exc)
        raise pytest.UsageError(str(exc)) from None


def _model_of(item: pytest.Item) -> Any:
    """The model whose results an item reads: a check item's, or a user test's through the
    ``biascheck_results`` fixture; None for other tests."""
    from pytest_biascheck.items import CheckItem

    if isinstance(item, CheckItem):
        return item.model
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "biascheck_results" in getattr(item, "fixturenames", ()):
        return callspec.params.get("biascheck_model")
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: a worker that stopped on bad data (``pytest_runtest_protocol``) makes the run
    a usage error."""
    message = getattr(node, "workeroutput", {}).get("biascheck_error")
    if message:
        node.config.stash[WORKER_ERROR] = message


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if WORKER_ERROR in session.config.stash:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
    state = session.config.stash.get(STATE, None)
    if state is None:
        return
    path = session.config.getoption("biascheck_save_baseline", None)
    if path:
        write_baseline(Path(path), state.outcomes)
    state.report = state.write_report(session.config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use ``biascheck_model`` (or fixtures built on it) run once per ``--biascheck`` model."""
    if "biascheck_model" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash.get(STATE, None)
    if state is None:
        metafunc.parametrize(
            "biascheck_model",
            [pytest.param(None, marks=pytest.mark.skip(reason="needs --biascheck MODEL"))],
        )
        return
    metafunc.parametrize(
        "biascheck_model", state.models, ids=[m.name for m in state.models], scope="session"
    )


@pytest.fixture(scope="session")
def biascheck_data(biascheck_model: Any, pytestconfig: pytest.Config) -> Any:
    """The evaluation dataset of the model under test (a ``BiasDataset``)."""
    return pytestconfig.stash[STATE].dataset(biascheck_model)[1]


@pytest.fixture(scope="session")
def biascheck_results(biascheck_model: Any, pytestconfig: pytest.Config) -> Any:
    """The model's evaluation ``Results`` (pandas tables), computed once and shared with the check items."""
    return pytestconfig.stash[STATE].results_for(biascheck_model)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """A table of every check that ran: value, threshold and status."""
    state = config.stash.get(STATE, None)
    if state is None or not state.outcomes:
        return
    terminalreporter.section("biascheck summary")
    header = ("check", "value", "95% CI", "threshold", "status", "baseline")
    if all(o["baseline"] is None for o in state.outcomes):
        header = header[:-1]  # no baseline given: no empty column
    rows = [header] + [
        (
            o["item"],
            f"{o['value']:.3f}",
            f"{o['low']:.3f}-{o['high']:.3f}",
            f"{o['op']} {o['threshold']:.3f}",
            o["status"],
            "" if o["baseline"] is None else f"{o['baseline']:.3f} {o['change'] or 'unchanged'}",
        )[: len(header)]
        for o in state.outcomes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        terminalreporter.write_line(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        )
    values, cells = [], []  # the group values first: each leaves every statistic
    for model in state.models:
        if model.name in state.results:
            own_values, own_cells = excluded_lines(state, model)
            values += own_values
            cells += own_cells
    excluded = values + cells
    if excluded:
        terminalreporter.section("biascheck excluded groups")
        for line in excluded[:MAX_EXCLUDED_LINES]:
            terminalreporter.write_line(line)
        if len(excluded) > MAX_EXCLUDED_LINES:
            terminalreporter.write_line(
                f"... and {len(excluded) - MAX_EXCLUDED_LINES} more: table excluded_groups of the report"
            )
    if state.report is not None:
        terminalreporter.write_line(f"report: {state.report}")


#: Excluded groups listed in the terminal; the report lists all.
MAX_EXCLUDED_LINES = 20


def excluded_lines(state: BiascheckState, model: Any) -> tuple[list[str], list[str]]:
    """Lines for the group values, and for the label x group cells, that held under
    ``min_group_share`` of a model's images and were left out of its group statistics."""
    results = state.results[model.name]
    table = results.tables.get("excluded_groups")
    if table is None or table.empty:
        return [], []
    share = f"{state.settings.min_share(model.name):.1%}"
    values = table[table["label"] == -1].drop_duplicates(["group", "value"])
    lines = [
        f"{model.path.name}: {r.group} = {r.level}: n={r.n} ({r.share:.1%} < {share}), "
        "left out of every group statistic"
        for r in values.itertuples()
    ]
    cells = []
    plan = results.plan
    for r in table[table["label"] >= 0].itertuples():
        if plan is not None and r.attribute == plan.task:
            label = f"{r.attribute} = {plan.attributes[r.label]}"
        else:
            label = f"{r.attribute} y={r.label}"
        cells.append(
            f"{model.path.name}: {label} in {r.group} = {r.level}: n={r.n} ({r.share:.1%} < "
            f"{share}), left out of worst-group accuracy and the rates it defines"
        )
    return lines, cells
