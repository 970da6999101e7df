"""``convert``: every kind of source becomes a checkpoint whose model computes what the original
computes; presets come from the architecture; nothing is written when the weights do not fit."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from pytest_biascheck.convert import convert
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import ModelSpec, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ATTRIBUTES = ["Smiling", "Male"]
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=2).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _same_outputs(path: Path, original: torch.nn.Module, x: torch.Tensor, **kwargs) -> None:
    loaded = load_checkpoint(path, **kwargs)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), original(x))


def test_state_dict_with_a_bare_torchvision_name_takes_torchvision_preset(tmp_path, resnet, x):
    torch.save(resnet.state_dict(), tmp_path / "sd.pt")
    loaded = convert(tmp_path / "sd.pt", tmp_path / "m.pt", arch="resnet18", attributes=ATTRIBUTES)
    assert loaded.arch == "torchvision.resnet18" and loaded.spec.attributes == tuple(ATTRIBUTES)
    assert loaded.spec.input_size == (3, 224, 224)  # torchvision's crop for ResNet-18 weights
    assert (loaded.spec.mean, loaded.spec.std) == (IMAGENET["mean"], IMAGENET["std"])
    assert loaded.spec.target_layer == "layer4"
    _same_outputs(tmp_path / "m.pt", resnet, x)


def test_training_checkpoint_with_dataparallel_names(tmp_path, resnet, x):
    wrapped = {f"module.{k}": v for k, v in resnet.state_dict().items()}
    torch.save({"epoch": 7, "state_dict": wrapped, "optimizer": {}}, tmp_path / "train.pt")
    convert(tmp_path / "train.pt", tmp_path / "m.pt", arch="resnet18", attributes=ATTRIBUTES)
    _same_outputs(tmp_path / "m.pt", resnet, x)


def test_whole_pickled_model_needs_trust(tmp_path, resnet, x):
    torch.save(resnet, tmp_path / "whole.pt")
    with pytest.raises(BiascheckError, match="--trust-pickle"):
        convert(tmp_path / "whole.pt", tmp_path / "m.pt", arch="resnet18", attributes=ATTRIBUTES)
    assert not (tmp_path / "m.pt").exists()
    convert(
        tmp_path / "whole.pt", tmp_path / "m.pt", arch="resnet18", attributes=ATTRIBUTES,
        trust_pickle=True,
    )  # fmt: skip
    _same_outputs(tmp_path / "m.pt", resnet, x)


def test_torchscript_into_the_architecture_it_was_scripted_from(tmp_path, resnet, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(resnet), tmp_path / "scripted.pt")
    with pytest.raises(BiascheckError, match="convert"):
        load_checkpoint(tmp_path / "scripted.pt")
    convert(tmp_path / "scripted.pt", tmp_path / "m.pt", arch="resnet18", attributes=ATTRIBUTES)
    _same_outputs(tmp_path / "m.pt", resnet, x)


def test_between_formats_keeps_the_task(tmp_path, resnet, x):
    spec = ModelSpec(tuple(ATTRIBUTES), (3, 64, 64), head="multilabel")
    save_checkpoint(resnet, spec, tmp_path / "m.pt", "torchvision.resnet18")
    loaded = convert(tmp_path / "m.pt", tmp_path / "m.safetensors")
    assert loaded.spec.input_size == (3, 64, 64) and loaded.spec.mean == (0.5, 0.5, 0.5)
    _same_outputs(tmp_path / "m.safetensors", resnet, x)


def test_weights_that_do_not_fit_write_nothing(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(BiascheckError, match=r"fc.weight \[2, 512\] vs \[3, 512\]"):
        convert(tmp_path / "sd.pt", tmp_path / "m.pt", arch="resnet18", attributes=["a", "b", "c"])
    with pytest.raises(BiascheckError, match=r"missing layer1\.2"):
        convert(tmp_path / "sd.pt", tmp_path / "m.pt", arch="resnet34", attributes=ATTRIBUTES)
    with pytest.raises(BiascheckError, match="--attributes"):
        convert(tmp_path / "sd.pt", tmp_path / "m.pt", arch="resnet18")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd.pt"]


def test_random_weights_are_seeded(tmp_path):
    first = convert(None, tmp_path / "a.pt", arch="biascheck.small_resnet", attributes=["a"])
    second = convert(None, tmp_path / "b.pt", arch="biascheck.small_resnet", attributes=["a"])
    other = convert(
        None, tmp_path / "c.pt", arch="biascheck.small_resnet", attributes=["a"], seed=1
    )
    state = [m.module.state_dict()["fc.weight"] for m in (first, second, other)]
    assert torch.equal(state[0], state[1]) and not torch.equal(state[0], state[2])
    assert first.spec.input_size == (3, 64, 64)  # biascheck's nets: ModelSpec's defaults


def test_unknown_weights_name_lists_the_choices(tmp_path):
    with pytest.raises(BiascheckError, match="IMAGENET1K_V1"):
        convert(None, tmp_path / "m.pt", arch="resnet18", weights="NOPE", attributes=["a"])


def test_num_classes_in_arch_kwargs_is_accepted_when_it_agrees(tmp_path, resnet, x):
    spec = ModelSpec(tuple(ATTRIBUTES), (3, 64, 64))
    path = save_checkpoint(
        resnet, spec, tmp_path / "m.pt", "torchvision.resnet18", {"num_classes": 2}
    )
    _same_outputs(path, resnet, x)
    with pytest.raises(
        BiascheckError, match=r"num_classes=3 .* contradicts the task's 2 attributes"
    ):
        save_checkpoint(resnet, spec, tmp_path / "n.pt", "torchvision.resnet18", {"num_classes": 3})


def test_import_path_factory_from_the_current_folder(tmp_path, monkeypatch):
    """A user's own factory, `module:factory`, without PYTHONPATH: as the shell user runs it."""
    (tmp_path / "mynets.py").write_text(
        "from pytest_biascheck.nets import SmallResNet\n\n"
        "def tiny(num_outputs, width=8):\n"
        "    return SmallResNet(num_outputs, widths=(width,) * 4)\n"
    )
    torch.manual_seed(0)
    original = __import__("pytest_biascheck.nets", fromlist=["x"]).SmallResNet(2, widths=(8,) * 4)
    torch.save(original.state_dict(), tmp_path / "sd.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BiascheckError, match="--input-size --mean --std"):
        convert("sd.pt", "m.pt", arch="mynets:tiny", attributes=ATTRIBUTES)
    loaded = convert(
        "sd.pt", "m.pt", arch="mynets:tiny", attributes=ATTRIBUTES, input_size=[3, 32, 32],
        mean=[0.5] * 3, std=[0.25] * 3,
    )  # fmt: skip
    assert loaded.arch == "mynets:tiny" and loaded.spec.std == (0.25, 0.25, 0.25)
    sys.modules.pop("mynets", None)
    with pytest.raises(BiascheckError, match="allow_imports"):
        load_checkpoint("m.pt")
    _same_outputs(
        Path("m.pt"), original.eval(), torch.randn(1, 3, 32, 32), allow_imports=["mynets:tiny"]
    )
    sys.modules.pop("mynets", None)


def test_command_line_writes_and_refuses_in_one_line(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "sd.pt")
    command = [sys.executable, "-m", "pytest_biascheck", "convert", "sd.pt", "--arch", "resnet18"]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [*command, "--attributes", "Smiling,Male", "--out", "m.safetensors"],
        cwd=tmp_path, capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "torchvision.resnet18" in run.stdout and "input [3, 224, 224]" in run.stdout
    assert load_checkpoint(tmp_path / "m.safetensors").spec.attributes == ("Smiling", "Male")
    bad = subprocess.run(
        [*command, "--attributes", "a,b,c", "--out", "x.pt"],
        cwd=tmp_path, capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert bad.returncode == 4 and bad.stderr.count("\n") == 1 and "fc.weight" in bad.stderr
