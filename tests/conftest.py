"""Shared fixtures: tiny checkpoints written once per session."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# Imported once here: in-process pytester runs drop the modules first imported inside them, and
# torch._dynamo's operator registrations fail when it is imported a second time.
import torch._dynamo

from pytest_biascheck.model import ModelSpec, save_checkpoint
from pytest_biascheck.nets import SmallResNet

TINY_ATTRIBUTES = ("Smiling", "Male", "Young")
#: Examples per fuzzer: a default run, and five times more under ``-m slow``.
FUZZ_RUNS = [
    pytest.param(2000, id="2000-examples"),
    pytest.param(10000, id="10000-examples", marks=pytest.mark.slow),
]
#: Debian Chromium, headless, with nothing that phones home.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


#: A conftest adding the check "fixed": its value for each attribute is whatever the test wrote to
#: values.json beside it (interval +-0.05), so gate behaviour is tested apart from any metric.
#: Values are numpy scalars, as pandas-based measures return them.
FIXED_CHECK = """
import json
from pathlib import Path

import numpy as np

from pytest_biascheck.checks import Check, Measurement, Target


def fixed(results, target, scope):
    value = json.loads(Path(__file__).with_name("values.json").read_text())[target.attribute]
    value = np.float64(value)
    return Measurement(value, value - 0.05, value + 0.05, np.int64(len(results.frame)))


def pytest_biascheck_checks():
    return [Check("fixed", "min", 0.5, "a value the test sets", "fix --model {model} --attribute {attribute}",
                  lambda scope: [Target(a) for a in scope.attributes], fixed)]
"""
#: Settings that check "fixed" on the three attributes of every tiny model (alpha, beta).
FIXED_CONFIG = """checks = ["fixed"]
[models.alpha]
attributes = ["Smiling", "Male", "Young"]
[models.beta]
attributes = ["Smiling", "Male", "Young"]
"""
TINY_DATA = "--biascheck-data=synthfaces:n=64"


def make_tiny(path: Path, seed: int = 0) -> Path:
    """A small random SmallResNet over three SynthFaces attributes, saved as a checkpoint."""
    torch.manual_seed(seed)
    model = SmallResNet(len(TINY_ATTRIBUTES), widths=(8, 8, 8, 8)).eval()
    spec = ModelSpec(attributes=TINY_ATTRIBUTES, input_size=(3, 32, 32), target_layer="layer4")
    return save_checkpoint(model, spec, path, "biascheck.small_resnet", {"widths": [8, 8, 8, 8]})


def pytest_configure(config: pytest.Config) -> None:
    """Without pytest-timeout (the test extras have it) the timeout marks are only registered."""
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): fail a test that runs longer")


def report_validator() -> Any:
    """A validator of ``biascheck.json`` by the JSON Schema shipped in the package (checked first)."""
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema (test extra)")
    from pytest_biascheck.report import JSON_SCHEMA

    schema = json.loads(JSON_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def valid_report(path: Path) -> dict[str, Any]:
    """The report at ``path``, after checking it against the schema (errors listed on failure)."""
    document = json.loads(path.read_text())
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in report_validator().iter_errors(document)
    ]
    assert errors == []
    return document


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module: on a shared two-core machine tiny batches run several
    times faster, and results must not depend on the thread count anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny.pt")


@pytest.fixture
def fixed_values(pytester: pytest.Pytester, tiny_checkpoint: Path) -> Callable[..., None]:
    """A pytester folder with alpha.pt and beta.pt, the "fixed" check and FIXED_CONFIG in
    biascheck.toml; returns ``set(**values)`` to write each attribute's value (default: Male
    fails, Smiling and Young pass)."""
    shutil.copy(tiny_checkpoint, pytester.path / "alpha.pt")
    make_tiny(pytester.path / "beta.pt", seed=1)
    pytester.makeconftest(FIXED_CHECK)
    pytester.makefile(".toml", biascheck=FIXED_CONFIG)

    def set_values(**values: float) -> None:
        values = {"Smiling": 0.9, "Male": 0.2, "Young": 0.7, **values}
        (pytester.path / "values.json").write_text(json.dumps(values))

    set_values()
    return set_values


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright (never a browser Playwright downloads);
    the test is skipped when either is missing."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield launched
        finally:
            launched.close()
