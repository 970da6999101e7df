"""Shared fixtures: tiny checkpoints written once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
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
