"""safetensors checkpoints: what this reader and writer do agrees with the safetensors library,
the gate loads them, and a damaged or hostile header is one line before any weight is read."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import ModelSpec, load_checkpoint, save_checkpoint
from pytest_biascheck.nets import SmallResNet
from pytest_biascheck.safetensors_io import is_safetensors, load, save

safetensors_torch = pytest.importorskip("safetensors.torch")

SPEC = ModelSpec(attributes=("a", "b"), input_size=(3, 32, 32), target_layer="layer4")
KWARGS = {"widths": [8, 8, 8, 8]}


@pytest.fixture(scope="module")
def net() -> SmallResNet:
    torch.manual_seed(0)
    return SmallResNet(2, widths=(8, 8, 8, 8)).eval()


def test_checkpoint_round_trip_is_readable_by_the_library_and_loads_in_the_gate(tmp_path, net):
    path = save_checkpoint(net, SPEC, tmp_path / "m.safetensors", "biascheck.small_resnet", KWARGS)
    reference = safetensors_torch.load_file(path)
    assert reference.keys() == net.state_dict().keys()
    assert all(torch.equal(reference[k], v) for k, v in net.state_dict().items())
    from safetensors import safe_open

    with safe_open(path, "pt") as fh:
        metadata = fh.metadata()
    assert json.loads(metadata["task"]) == SPEC.to_dict()
    assert metadata["format"] == "biascheck/1" and metadata["arch"] == "biascheck.small_resnet"
    loaded = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), net(x))
    assert loaded.arch_kwargs == KWARGS and loaded.spec == SPEC


def test_reads_what_the_library_writes_in_every_dtype(tmp_path):
    tensors = {
        "f64": torch.randn(3, dtype=torch.float64),
        "bf16": torch.randn(2, 3).to(torch.bfloat16),
        "f16": torch.randn(5).half(),
        "i64": torch.arange(4),
        "i8": torch.tensor([-3, 7], dtype=torch.int8),
        "u8": torch.tensor([1, 2, 3], dtype=torch.uint8),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "lib.safetensors"
    safetensors_torch.save_file(tensors, path, metadata={"note": "library"})
    ours, metadata = load(path)
    assert metadata == {"note": "library"}
    assert ours.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


def test_what_we_write_equals_what_the_library_writes(tmp_path):
    tensors = {"w": torch.randn(4, 3), "b": torch.arange(3, dtype=torch.int32)}
    save(tensors, {"k": "v"}, tmp_path / "ours.safetensors")
    back = safetensors_torch.load_file(tmp_path / "ours.safetensors")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_an_unaligned_tensor_from_a_foreign_writer_is_copied_correctly(tmp_path):
    """The format does not require alignment: a float after three bytes still reads."""
    values = torch.tensor([1.5, -2.0])
    header = {
        "u": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "f": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    text = json.dumps(header).encode()
    body = bytes([7, 8, 9]) + values.numpy().tobytes()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    tensors, _ = load(path)
    assert torch.equal(tensors["f"], values) and tensors["u"].tolist() == [7, 8, 9]


def _file(tmp_path: Path, header: object, body: bytes = b"", length: int | None = None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    size = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + text + body)
    return path


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "body", "length", "expected"),
    [
        ({"w": ENTRY}, b"\0" * 8, 10**12, "header length"),
        (b"{not json", b"", None, "is not JSON"),
        (b"[1, 2]", b"", None, "not an object"),
        ({"w": {**ENTRY, "dtype": "F128"}}, b"\0" * 8, None, "unknown dtype 'F128'"),
        ({"w": {**ENTRY, "shape": [3]}}, b"\0" * 8, None, "needs 12 bytes"),
        ({"w": {**ENTRY, "shape": [-2]}}, b"\0" * 8, None, "not whole numbers"),
        ({"w": ENTRY, "v": ENTRY}, b"\0" * 8, None, "gap or overlap"),
        ({"w": ENTRY}, b"\0" * 16, None, "describes 8 bytes"),
        ({"__metadata__": {"a": 1}, "w": ENTRY}, b"\0" * 8, None, "table of strings"),
    ],
)
def test_hostile_headers_are_one_line_refusals(tmp_path, header, body, length, expected):
    path = _file(tmp_path, header, body, length)
    with pytest.raises(BiascheckError) as refused:
        load(path)
    message = str(refused.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_the_gate_reads_a_file_starting_like_safetensors_as_one(tmp_path):
    path = _file(tmp_path, {"w": {**ENTRY, "dtype": "F128"}}, b"\0" * 8)
    assert is_safetensors(path)
    with pytest.raises(BiascheckError, match="unknown dtype 'F128'"):
        load_checkpoint(path)


def test_bare_weights_point_to_convert(tmp_path, net):
    path = tmp_path / "weights.safetensors"
    safetensors_torch.save_file(net.state_dict(), path)
    with pytest.raises(BiascheckError, match="python -m pytest_biascheck convert"):
        load_checkpoint(path)
