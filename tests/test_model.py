"""Checkpoint format: round trips, and every refusal with its one-line message."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_biascheck import files
from pytest_biascheck.config import load_settings
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import (
    ModelSpec,
    load_checkpoint,
    model_from_payload,
    ready,
    register_architecture,
    save_checkpoint,
    save_torchscript,
)
from pytest_biascheck.nets import SmallResNet
from tests.conftest import FUZZ_RUNS

SPEC = ModelSpec(attributes=("a", "b", "c"), input_size=(3, 32, 32), target_layer="layer4")


class Evil:
    """A pickle payload that creates a marker file when unpickled (standing in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("arch", "build"),
    [
        ("torchvision.resnet18", lambda: torchvision.models.resnet18(num_classes=3)),
        ("biascheck.small_resnet", lambda: SmallResNet(3, widths=(8, 8, 8, 8))),
    ],
)
def test_round_trip_gives_identical_outputs(tmp_path, arch, build):
    torch.manual_seed(0)
    model = build().eval()
    kwargs = {"widths": [8, 8, 8, 8]} if arch.startswith("biascheck") else {}
    path = save_checkpoint(model, SPEC, tmp_path / "m.pt", arch, kwargs, {"note": "test"})
    loaded = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.module(x))
    assert loaded.spec == SPEC
    assert loaded.provenance == {"note": "test"}
    assert len(loaded.sha256) == 64
    assert not loaded.module.training


def test_torchscript_loads_for_its_outputs_only(tmp_path):
    torch.manual_seed(0)
    model = SmallResNet(3, widths=(8, 8, 8, 8)).eval()
    path = save_torchscript(model, SPEC, tmp_path / "m.ts")
    with pytest.raises(
        BiascheckError, match=r"is a TorchScript archive .*, whose layers cannot be hooked"
    ):
        load_checkpoint(path)
    loaded = load_checkpoint(path, outputs_only=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded.module(x), atol=1e-6)
    assert loaded.spec == SPEC and loaded.arch == "torchscript"


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = save_checkpoint(
        SmallResNet(3, widths=(8, 8, 8, 8)),
        SPEC,
        tmp_path / "m.pt",
        "biascheck.small_resnet",
        {"widths": [8] * 4},
    )
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    assert zipfile.is_zipfile(path)


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(Evil(marker), path)
    with pytest.raises(BiascheckError) as exc:
        load_checkpoint(path)
    assert not marker.exists()
    message = _one_line(exc)
    assert "evil.pt" in message and "--biascheck-trust-pickle" in message


def test_checkpoint_dict_hiding_code_never_runs(tmp_path, tiny_checkpoint):
    marker = tmp_path / "pwned"
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["provenance"] = {"x": Evil(marker)}
    path = tmp_path / "hidden.pt"
    torch.save(payload, path)
    with pytest.raises(BiascheckError, match="could run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_trusted_pickled_module_loads_with_spec_from_config(tmp_path):
    torch.manual_seed(0)
    model = SmallResNet(3, widths=(8, 8, 8, 8)).eval()
    path = tmp_path / "module.pt"
    torch.save(model, path)
    with pytest.raises(BiascheckError, match="--biascheck-trust-pickle"):
        load_checkpoint(path)
    with pytest.raises(BiascheckError) as refused:
        load_checkpoint(path, trust_pickle=True)
    # the message's own fix, written into a config file as a user would, makes the file load
    fix = re.search(
        r"set (task = .*?) under \[(tool\.biascheck\.models\.module)\]", str(refused.value)
    )
    table = fix[1].replace("[...]", '["a", "b", "c"]')
    (tmp_path / "pyproject.toml").write_text(f"[{fix[2]}]\n{table}\n")
    settings = load_settings(tmp_path / "pyproject.toml")
    loaded = load_checkpoint(
        path, trust_pickle=True, spec_overrides=settings.for_model("module").task
    )
    assert loaded.spec.attributes == ("a", "b", "c")
    loaded = load_checkpoint(path, trust_pickle=True, spec_overrides=SPEC.to_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.module(x))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _resave(payload: dict, path: Path) -> Path:
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p, ck: p / "absent.pt", "does not exist"),
        (lambda p, ck: _write(p / "empty.pt", b""), "is empty"),
        (lambda p, ck: _write(p / "cut.pt", ck.read_bytes()[:2000]), "not a torch checkpoint"),
        (lambda p, ck: _write(p / "text.pt", b"hello"), "not a torch checkpoint"),
        (lambda p, ck: _resave(_payload(ck)["state_dict"], p / "bare.pt"), "bare state_dict"),
        (
            lambda p, ck: _resave(torch.zeros(3), p / "tensor.pt"),
            "a Tensor, not a biascheck checkpoint",
        ),
        (
            lambda p, ck: _resave({**_payload(ck), "format": "other/9"}, p / "fmt.pt"),
            "has format 'other/9'",
        ),
        (
            lambda p, ck: _resave(
                {**_payload(ck), "arch": "biascheck.small_resnett"}, p / "arch.pt"
            ),
            "did you mean biascheck.small_resnet",
        ),
        (
            lambda p, ck: _resave({**_payload(ck), "arch": "evil.module:Net"}, p / "imp.pt"),
            "allow_imports",
        ),
    ],
    ids=[
        "missing",
        "empty",
        "truncated",
        "not-zip",
        "bare-state-dict",
        "tensor",
        "format",
        "unknown-arch",
        "import-path",
    ],
)
def test_refusals_name_the_file_and_the_fix(tmp_path, tiny_checkpoint, make, expected):
    path = make(tmp_path, tiny_checkpoint)
    with pytest.raises(BiascheckError) as exc:
        load_checkpoint(path)
    message = _one_line(exc)
    assert expected in message
    assert path.name in message or "architecture" in message


def test_state_dict_mismatches_are_listed(tmp_path, tiny_checkpoint):
    payload = _payload(tiny_checkpoint)
    sd = payload["state_dict"]
    sd.pop("stem.0.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["fc.weight"] = torch.zeros(3, 9)
    with pytest.raises(BiascheckError) as exc:
        load_checkpoint(_resave(payload, tmp_path / "mismatch.pt"))
    message = _one_line(exc)
    assert "missing stem.0.weight" in message
    assert "unexpected extra.weight" in message
    assert "fc.weight [3, 9] vs [3, 8]" in message


def test_nan_weights_are_refused(tmp_path, tiny_checkpoint):
    payload = _payload(tiny_checkpoint)
    payload["state_dict"]["fc.bias"][1] = float("nan")
    with pytest.raises(BiascheckError, match=r"NaN/Inf weights in fc.bias"):
        load_checkpoint(_resave(payload, tmp_path / "nan.pt"))


def test_attribute_count_must_match_outputs(tmp_path, tiny_checkpoint):
    payload = _payload(tiny_checkpoint)
    payload["task"]["attributes"] = ["a", "b"]
    payload["arch_kwargs"]["num_outputs"] = 3
    payload["arch_kwargs"] = {"widths": [8, 8, 8, 8]}
    register_architecture("test.three_outputs", lambda n, **kw: SmallResNet(3, **kw))
    payload["arch"] = "test.three_outputs"
    with pytest.raises(
        BiascheckError, match=r"outputs shape \[1, 3\] but its task names 2 attributes"
    ):
        load_checkpoint(_resave(payload, tmp_path / "count.pt"))


def test_unknown_target_layer_lists_close_names(tmp_path, tiny_checkpoint):
    payload = _payload(tiny_checkpoint)
    payload["task"]["target_layer"] = "layer5"
    with pytest.raises(BiascheckError) as exc:
        load_checkpoint(_resave(payload, tmp_path / "layer.pt"))
    message = _one_line(exc)
    assert "'layer5' does not exist" in message and "layer4" in message


def test_plugin_architectures_and_allowed_imports_load(tmp_path):
    torch.manual_seed(0)
    model = SmallResNet(3, widths=(8, 8, 8, 8)).eval()
    with pytest.raises(BiascheckError, match=r"unknown architecture 'myplugin\.net'"):
        save_checkpoint(model, SPEC, tmp_path / "p.pt", "myplugin.net", {"widths": [8, 8, 8, 8]})
    assert not (tmp_path / "p.pt").exists()
    plugin = {"myplugin.net": SmallResNet}
    path = save_checkpoint(
        model, SPEC, tmp_path / "p.pt", "myplugin.net", {"widths": [8, 8, 8, 8]}, None, plugin
    )
    loaded = load_checkpoint(path, architectures={"myplugin.net": SmallResNet})
    assert loaded.arch == "myplugin.net"
    path = save_checkpoint(
        model,
        SPEC,
        tmp_path / "i.pt",
        "pytest_biascheck.nets:SmallResNet",
        {"widths": [8, 8, 8, 8]},
    )
    loaded = load_checkpoint(path, allow_imports=["pytest_biascheck.nets:SmallResNet"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.module(x))


def test_spec_validation_messages():
    with pytest.raises(ValueError, match="duplicate"):
        ModelSpec(attributes=("a", "a"))
    with pytest.raises(ValueError, match="one per channel"):
        ModelSpec(attributes=("a",), mean=(0.5,))
    with pytest.raises(ValueError, match="head must be one of"):
        ModelSpec(attributes=("a",), head="softmax")
    assert ModelSpec.from_dict(SPEC.to_dict()) == SPEC


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from([0, 1, -1, 3, 8, 2**16, 2**20, 2**40])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
SIDES = st.sampled_from([0, 1, 7, 32, 100_000])
TASK_EDITS = st.dictionaries(
    st.sampled_from(["attributes", "input_size", "mean", "std", "target_layer", "head", "other"]),
    JSONISH
    | st.tuples(st.sampled_from([0, 1, 3, 4, 65, 2**20]), SIDES, SIDES).map(list)
    | st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3)
    | st.sampled_from(
        [["Smiling", "Male", "Young"], ["a", "a", "b"], "layer4", "fc", "multiclass"]
    ),
    max_size=3,
)
WEIGHTS = st.sampled_from(
    [
        lambda t: torch.zeros(1).expand(2**40),
        lambda t: torch.zeros(1).expand(t.shape) if t.dim() else t,
        lambda t: t.new_full(t.shape, float("nan")) if t.is_floating_point() else t,
        lambda t: t.new_full(t.shape, float("-inf")) if t.is_floating_point() else t,
        lambda t: t.t() if t.dim() == 2 else t,
        lambda t: t.flatten(),
        lambda t: t.long(),
        lambda t: [1, 2],
        lambda t: torch.zeros(*t.shape, 2)[..., 0],
    ]
)


@pytest.mark.parametrize("examples", FUZZ_RUNS)
def test_checkpoint_validator_fuzz(tiny_checkpoint, examples, one_thread):
    """Any tampering with a checkpoint's dict (task, arch_kwargs, weights' shapes, strides,
    values and types, entries): a model whose dry run gives one output per attribute, or one
    BiascheckError line; never an allocation the file does not justify, never another error."""
    base = torch.load(tiny_checkpoint, weights_only=True)
    names = sorted(base["state_dict"])

    @settings(max_examples=examples, deadline=None, database=None)
    @given(
        task=TASK_EDITS,
        kwargs=st.none() | st.just({"widths": [8, 8, 8, 8]}) | JSONISH,
        weights=st.dictionaries(st.sampled_from([*names, "extra.weight"]), WEIGHTS, max_size=3),
        dropped=st.lists(st.sampled_from(names), max_size=2),
        top=st.dictionaries(
            st.sampled_from(["format", "arch", "provenance", "task"]), JSONISH, max_size=1
        ),
    )
    def run(task, kwargs, weights, dropped, top) -> None:
        state = dict(base["state_dict"])
        for name, change in weights.items():
            state[name] = change(state.get(name, torch.zeros(2)))
        for name in dropped:
            state.pop(name, None)
        payload = {**base, "task": {**base["task"], **task}, "state_dict": state, **top}
        if kwargs is not None:
            payload["arch_kwargs"] = kwargs
        try:
            loaded = ready(model_from_payload(tiny_checkpoint, payload))
        except BiascheckError as exc:
            assert "\n" not in str(exc) and str(tiny_checkpoint) in str(exc), str(exc)
            return
        with torch.no_grad():
            out = loaded.module(torch.zeros(1, *loaded.spec.input_size))
        assert out.shape == (1, len(loaded.spec.attributes))

    files.set_limits({"input_pixels": 64 * 64})  # allowed inputs stay quick to run
    try:
        run()
    finally:
        files.set_limits({})
