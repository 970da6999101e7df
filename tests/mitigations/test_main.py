"""``python -m mitigations``: help with the papers' defaults, one-line refusals that leave the
input model alone, and a full run whose checkpoint and report agree with independent numbers."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pluggy
import pytest
import torch

from mitigations.recipe import Defaults, Recipe, Setup
from pytest_biascheck import hookspecs
from pytest_biascheck.data.synth_faces import SynthFaces
from pytest_biascheck.model import load_checkpoint

#: The tiny test model has a 4x4 CAM grid: the gate warns that regions are coarse on it.
pytestmark = pytest.mark.filterwarnings("ignore:regions of .* cover less than one cell")


#: The training settings each paper reports (AFFACT-b's are the project's: the paper gives none).
PAPER_DEFAULTS = {
    "roi-iou": {"--optimizer": "sgd", "--lr": "0.01", "--momentum": "0.9", "--batch-size": "256",
                "--epochs": "1", "--wa": "1.0", "--wg": "5.0"},
    "rebalance": {"--optimizer": "adam", "--lr": "0.001", "--weight-decay": "0.0001",
                  "--batch-size": "32", "--epochs": "10", "--mcc": "0.0"},
    "affact-b": {"--optimizer": "sgd", "--lr": "0.003", "--batch-size": "64", "--epochs": "1"},
}  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_help_lists_built_in_and_plugin_recipes(cli, capsys, monkeypatch):
    class Plugin:
        @staticmethod
        def pytest_biascheck_recipes():
            recipe = Recipe("crop-fix", "a plugin's recipe", Defaults(), lambda p: None,
                            lambda args, job: Setup(loss=lambda m, x, b: {}))  # fmt: skip
            return {"crop-fix": recipe}

    def manager() -> pluggy.PluginManager:
        pm = hookspecs._PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(Plugin())
        return pm

    monkeypatch.setattr(hookspecs, "plugin_manager", manager)
    assert cli("--help") == 0
    text = capsys.readouterr().out
    for name, summary in [("roi-iou", "BCE + IoU loss"), ("affact-b", "balanced Euclidean"),
                          ("rebalance", "subsample to a target MCC"), ("crop-fix", "a plugin's")]:  # fmt: skip
        assert re.search(rf"^\s+{name}\s+{re.escape(summary)}", text, re.M), text


@pytest.mark.parametrize("recipe", sorted(PAPER_DEFAULTS))
def test_recipe_help_shows_every_option_with_the_paper_default(cli, capsys, monkeypatch, recipe):
    monkeypatch.setenv("COLUMNS", "300")
    assert cli(recipe, "--help") == 0
    text = capsys.readouterr().out
    for option, value in PAPER_DEFAULTS[recipe].items():
        assert re.search(rf"^\s+{option} \S+\s.*\(default: {re.escape(value)}\)$", text, re.M), (
            option
        )
    for option in ("--momentum", "--seed", "--max-steps", "--micro-batch", "--amp", "--resume"):
        assert option in text


def _bad_cases(tmp: Path, model: Path) -> dict[str, tuple[list, str]]:
    out = str(tmp / "out.pt")
    base = ["--model", model, "--data", "synthfaces:n=16", "--eval-data", "synthfaces:n=8"]
    roi = ["roi-iou", *base, "--out", out]
    return {
        "unknown recipe": (["fix-all", *base, "--out", out], "invalid choice: 'fix-all'"),
        "unknown attribute": ([*roi, "--attribute", "Nope", "--region", "mouth"], "does not predict 'Nope'"),
        "not predicted": ([*roi, "--attribute", "Eyeglasses", "--region", "mouth"], "does not predict 'Eyeglasses'"),
        "unknown region": ([*roi, "--attribute", "Smiling", "--region", "elbow"], "region 'elbow'"),
        "unknown group": (["rebalance", *base, "--out", out, "--attribute", "Smiling", "--protected", "Hat_Size"],
                          "'Hat_Size' is neither a label nor a group"),
        "out is model": (["affact-b", *base, "--out", f"{model.parent}/../{model.parent.name}/{model.name}"],
                         "is the input model"),
        "missing folder": (["affact-b", *base, "--out", tmp / "nowhere" / "out.pt"], "does not exist"),
        "read-only folder": (["affact-b", *base, "--out", "/proc/biascheck-out.pt"], "is not writable"),
        "unknown data": (["affact-b", *base[:2], "--data", "synthfacez", "--out", out], "did you mean 'synthfaces'"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["unknown recipe", "unknown attribute", "not predicted", "unknown region", "unknown group",
     "out is model", "missing folder", "read-only folder", "unknown data"],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_the_model_is_untouched(
    cli, capsys, tiny_checkpoint, tmp_path, case
):
    argv, message = _bad_cases(tmp_path, tiny_checkpoint)[case]
    before = sha(tiny_checkpoint)
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert "error:" in err
    assert sha(tiny_checkpoint) == before
    assert not (tmp_path / "out.pt").exists()


def _accuracy(path: Path, data: SynthFaces, attribute: str) -> float:
    """Accuracy computed directly from the checkpoint's outputs (no biascheck evaluation code)."""
    model = load_checkpoint(path)
    batch = data.render(range(len(data)))
    with torch.no_grad():
        logits = model.module(model.spec.normalize(batch["image"]))
    predicted = logits[:, model.spec.attributes.index(attribute)] > 0
    return float(
        (predicted == (batch["labels"][:, data.attributes.index(attribute)] > 0.5)).float().mean()
    )


def test_run_writes_checkpoint_provenance_and_before_after_report(
    cli, capsys, tiny_checkpoint, tmp_path
):
    before_sha = sha(tiny_checkpoint)
    out = tmp_path / "tiny_roi.pt"
    code = cli("roi-iou", "--model", tiny_checkpoint, "--out", out, "--data", "synthfaces:n=48",
               "--eval-data", "synthfaces:n=24", "--attribute", "Smiling", "--region", "mouth",
               "--batch-size", "16", "--wg", "2", "--pair", "Black_Hair")  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert re.search(
        r"^mask_score\[Smiling-mouth\]\s+-?\d\.\d{3} (ok|FAIL)\s+-?\d\.\d{3}", printed, re.M
    )
    assert sha(tiny_checkpoint) == before_sha
    parent, new = load_checkpoint(tiny_checkpoint), load_checkpoint(out)
    assert (new.arch, new.arch_kwargs, new.spec) == (parent.arch, parent.arch_kwargs, parent.spec)
    assert new.provenance["parent"]["sha256"] == before_sha
    assert new.provenance["recipe"] == "roi-iou" and new.provenance["steps"] == 3
    assert new.provenance["hyperparameters"]["wg"] == 2.0
    # what a suggested fix of the new model trains on: the same data (suggest.training_spec)
    assert (new.provenance["train"], new.provenance["train_images"]) == ("synthfaces:n=48", 48)
    data = SynthFaces(n=48, split="train", image_size=32)
    rate = float(data.labels[:, data.attributes.index("Smiling")].mean())
    assert new.provenance["positive_rates"]["Smiling"] == pytest.approx(rate)
    report = json.loads((tmp_path / "tiny_roi.report.json").read_text())
    assert report["out"]["sha256"] == sha(out) and report["model"]["sha256"] == before_sha
    rows = {row["item"]: row for row in report["checks"]}
    evaluation = SynthFaces(n=24, image_size=32)
    accuracy = rows["accuracy[Smiling]"]
    assert accuracy["before"]["value"] == pytest.approx(
        _accuracy(tiny_checkpoint, evaluation, "Smiling")
    )
    assert accuracy["after"]["value"] == pytest.approx(_accuracy(out, evaluation, "Smiling"))
    assert (
        "mask_score[Smiling-mouth]" in rows and "worst_group_accuracy[Smiling-Black_Hair]" in rows
    )
    e1 = report["measures"]["before"]["e1_e2"]
    assert e1["pair"] == "Black_Hair" and e1["E1_n"] + e1["E2_n"] == int(
        evaluation.labels[:, evaluation.attributes.index("Smiling")].sum()
    )
    html = (tmp_path / "tiny_roi.report" / "biascheck.html").read_text()
    assert "tiny_roi" in html and "tiny" in html
