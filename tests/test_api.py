"""A live model, no file: ``pytest_biascheck.evaluate(module, data)`` and the
``pytest_biascheck_models`` hook give what the same weights give from a checkpoint file."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import pytest_biascheck
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import ModelSpec, save_checkpoint
from pytest_biascheck.nets import SmallResNet

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = ModelSpec(("Smiling", "Male"), (3, 32, 32))
DATA = "synthfaces:n=24"


def _net() -> SmallResNet:
    torch.manual_seed(0)
    return SmallResNet(2, widths=(8, 8, 8, 8)).eval()


def test_evaluate_a_module_gives_the_results_of_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no config file: the defaults
    path = save_checkpoint(_net(), SPEC, tmp_path / "net.pt", "biascheck.small_resnet",
                           {"widths": [8, 8, 8, 8]})  # fmt: skip
    from_file = pytest_biascheck.evaluate(path, DATA, batch_size=5)
    live = pytest_biascheck.evaluate(_net(), DATA, spec=SPEC, name="net", batch_size=7)
    pd.testing.assert_frame_equal(live.frame, from_file.frame)
    assert live.tables.keys() == from_file.tables.keys()
    for name, table in from_file.tables.items():
        pd.testing.assert_frame_equal(live.tables[name], table, check_exact=False, rtol=1e-9)


def test_evaluate_refuses_a_module_without_a_spec_or_with_a_wrong_one():
    with pytest.raises(BiascheckError, match="needs spec=ModelSpec"):
        pytest_biascheck.evaluate(_net(), DATA)
    with pytest.raises(BiascheckError, match=r"outputs shape \[1, 2\] but its task names 3"):
        pytest_biascheck.evaluate(_net(), DATA, spec={"attributes": ["a", "b", "c"],
                                                      "input_size": [3, 32, 32]})  # fmt: skip
    broken = _net()
    with torch.no_grad():
        broken.fc.weight[0, 0] = float("nan")
    with pytest.raises(BiascheckError, match=r"NaN/Inf weights in fc\.weight"):
        pytest_biascheck.evaluate(broken, DATA, spec=SPEC)


CONFTEST = """
import torch
from pytest_biascheck.model import ModelSpec
from pytest_biascheck.nets import SmallResNet


def pytest_biascheck_models(config):
    torch.manual_seed(0)
    return {"net": (SmallResNet(2, widths=(8, 8, 8, 8)).eval(), ModelSpec(%s, (3, 32, 32)))}
"""


def test_the_hook_gates_a_live_model_like_its_file(pytester, tmp_path):
    """The same weights, handed over by a conftest and saved as ``net.pt``, give the same items
    and values; the user's own tests still run beside the checks."""
    pytester.makeconftest(CONFTEST % '("Smiling", "Male")')
    pytester.makepyfile(
        test_own="def test_own(biascheck_results):\n    assert len(biascheck_results.frame) == 24\n"
    )
    common = [f"--biascheck-data={DATA}", "-p", "no:cacheprovider", "-v"]
    live = pytester.runpytest(*common, "--biascheck-save-baseline=live.json")
    assert live.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    live.stdout.fnmatch_lines(["*net::accuracy?Smiling?*", "*test_own.py::test_own?net? PASSED*"])
    path = save_checkpoint(_net(), SPEC, tmp_path / "net.pt", "biascheck.small_resnet",
                           {"widths": [8, 8, 8, 8]})  # fmt: skip
    (pytester.path / "conftest.py").unlink()
    from_file = pytester.runpytest(
        f"--biascheck={path}", *common, "--biascheck-save-baseline=file.json"
    )
    assert from_file.ret == live.ret
    (live_saved,), (file_saved,) = (
        json.loads((pytester.path / f).read_text())["models"] for f in ("live.json", "file.json")
    )
    assert (live_saved["model"], live_saved["path"], file_saved["model"]) == ("net", "net", "net")
    assert len(live_saved["checks"]) >= 5 and live_saved["checks"] == file_saved["checks"]


def test_a_live_model_that_does_not_fit_its_spec_is_a_usage_error(pytester):
    pytester.makeconftest(CONFTEST % '("Smiling", "Male", "Young")')
    result = pytester.runpytest("--biascheck-data=synthfaces:n=8", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*model net outputs shape [[]1, 2[]] but its task names 3 attributes*"]
    )
