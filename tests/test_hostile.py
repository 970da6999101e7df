"""The corpus of hostile and broken inputs (issue 14), tried as a new user and an attacker would
through every front end: the gate (``pytest --biascheck``), ``python -m pytest_biascheck layers``
and ``evaluate``, and ``python -m mitigations roi-iou``. Each input is built in a temporary folder
by the test (nothing harmful is committed) and must give exactly one line and the usage exit code,
with no traceback, no hang (the timeout fails the test instead) and nothing written."""

from __future__ import annotations

import json
import os
import re
import struct
import tomllib
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from pytest_biascheck.__main__ import main as biascheck_main
from pytest_biascheck.model import save_torchscript
from pytest_biascheck.nets import SmallResNet
from tests.conftest import TINY_ATTRIBUTES, make_tiny

ROOT = Path(__file__).resolve().parents[1]
#: Every check but accuracy is switched off, so the gate's runs stay small.
BASE_CONFIG = 'checks = ["accuracy"]\n'
SYNTHETIC = "synthfaces:n=16"
ENDS = ("gate", "layers", "evaluate", "recipe")


@dataclass
class Built:
    """What a case left in the folder: the model file, the data spec, extra config text."""

    model: str = "model.pt"
    data: str = SYNTHETIC
    config: str = ""


@dataclass(frozen=True)
class Case:
    """One hostile input: how to build it, a regex its one line must match, the front ends."""

    name: str
    build: Callable[[Path], Built]
    expect: str
    ends: tuple[str, ...] = ENDS


def tiny(folder: Path) -> Path:
    return make_tiny(folder / "model.pt")


def payload(folder: Path) -> dict:
    """The tiny checkpoint's dict, to be tampered with and saved again."""
    return torch.load(tiny(folder), weights_only=True)


def tampered(change: Callable[[dict], None]) -> Callable[[Path], Built]:
    def build(folder: Path) -> Built:
        doc = payload(folder)
        change(doc)
        torch.save(doc, folder / "model.pt")
        return Built()

    return build


def fifo(folder: Path) -> Built:
    os.mkfifo(folder / "model.pt")
    return Built()


def dev_zero(folder: Path) -> Built:
    (folder / "model.pt").symlink_to("/dev/zero")
    return Built()


def zeros_2gb(folder: Path) -> Built:
    with open(folder / "model.pt", "wb") as fh:
        fh.truncate(2 << 30)  # sparse: takes no disk space
    return Built()


def a_folder(folder: Path) -> Built:
    (folder / "model.pt").mkdir()
    return Built()


def huge_view(doc: dict) -> None:
    doc["state_dict"]["fc.bias"] = torch.zeros(1).expand(2**40)


def stride_zero(doc: dict) -> None:
    doc["state_dict"]["fc.bias"] = torch.zeros(1).expand(len(TINY_ATTRIBUTES))


def torchscript(folder: Path) -> Built:
    spec_doc = payload(folder)["task"]
    from pytest_biascheck.model import ModelSpec

    save_torchscript(
        SmallResNet(3, widths=(8, 8, 8, 8)), ModelSpec(**spec_doc), folder / "model.pt"
    )
    return Built()


def code_but_no_torchscript(folder: Path) -> Built:
    path = tiny(folder)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("tiny/code/__torch__/x.py", "print('never run')\n")
    return Built()


def configured(text: str) -> Callable[[Path], Built]:
    def build(folder: Path) -> Built:
        tiny(folder)
        (folder / "afile").write_text("not a folder\n")
        return Built(config=text)

    return build


def png(path: Path, colour: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (colour, 0, 0)).save(path)


def csv_data(folder: Path, names: list[str] | None = None) -> str:
    """A CSV of four 32x32 images labelled with the tiny model's attributes."""
    names = names or [f"{i}.png" for i in range(4)]
    for i in range(4):
        png(folder / "data" / f"{i}.png", 60 * i)
    rows = "".join(f"{name},{i % 2},1,0\n" for i, name in enumerate(names))
    (folder / "data" / "list.csv").write_text(f"image,{','.join(TINY_ATTRIBUTES)}\n{rows}")
    return "data/list.csv"


def data_case(prepare: Callable[[Path], str]) -> Callable[[Path], Built]:
    def build(folder: Path) -> Built:
        tiny(folder)
        return Built(data=prepare(folder))

    return build


def nul_in_cell(folder: Path) -> str:
    spec = csv_data(folder)
    path = folder / spec
    path.write_bytes(path.read_bytes().replace(b"2.png", b"2\x00.png"))
    return spec


def outside(folder: Path) -> str:
    png(folder / "outside.png")
    return csv_data(folder, ["0.png", "1.png", "../outside.png", "3.png"])


def linked_outside(folder: Path) -> str:
    png(folder / "outside.png")
    spec = csv_data(folder)
    (folder / "data" / "2.png").unlink()
    (folder / "data" / "2.png").symlink_to(folder / "outside.png")
    return spec


def declared_size(folder: Path) -> str:
    """A 1x1 PNG whose header says 20000 x 20000 (CRC fixed): a decompression bomb's header."""
    spec = csv_data(folder)
    path = folder / "data" / "2.png"
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return spec


def truncated_image(folder: Path) -> str:
    spec = csv_data(folder)
    path = folder / "data" / "2.png"
    path.write_bytes(path.read_bytes()[:60])
    return spec


def data_row(name: str, prepare: Callable[[Path], str], expect: str) -> Case:
    """A case of broken data: the model is fine, the data spec ``prepare`` returns is not."""
    return Case(name, data_case(prepare), expect, ("gate", "evaluate", "recipe"))


CASES = (
    Case("fifo", fifo, r"model.pt is a FIFO \(named pipe\), not a regular file"),
    Case("dev-zero-link", dev_zero, r"is a character device \(a link to /dev/zero\)"),
    Case("2gb-of-zeros", zeros_2gb, r"is not a torch checkpoint"),
    Case("folder", a_folder, r"model.pt is a folder; give the path of a file inside it"),
    Case("stride-0-2**40", tampered(huge_view), r"fc.bias \[1099511627776\] vs \[3\]"),
    Case("stride-0-fitting", tampered(stride_zero), r"not stored densely \(fc.bias"),
    Case(
        "input-size-checkpoint",
        tampered(lambda d: d["task"].update(input_size=[3, 100000, 100000])),
        r"input_size \[3, 100000, 100000\] has 10000000000 pixels, over the limit",
    ),
    Case(
        "input-size-config",
        configured("[models.model]\ntask = { input_size = [3, 100000, 100000] }\n"),
        r"has 10000000000 pixels, over the limit",
    ),
    Case(
        "arch-kwargs-width",
        tampered(lambda d: d["arch_kwargs"].update(widths=[2**20] * 4)),
        r"arch_kwargs.widths.0 is 1048576, outside \[-65536, 65536\]",
    ),
    Case(
        "nan-mean",
        tampered(lambda d: d["task"].update(mean=[float("nan")] * 3)),
        r"task.mean must be finite numbers",
    ),
    Case(
        "inf-std",
        tampered(lambda d: d["task"].update(std=[0.5, float("inf"), 0.5])),
        r"task.std must be finite numbers",
    ),
    Case("torchscript", torchscript, r"is a TorchScript archive .*layers cannot be hooked"),
    Case("code-but-no-torchscript", code_but_no_torchscript, r"is a TorchScript archive"),
    Case("batch-size-0", configured("batch_size = 0\n"), r"batch_size must be an integer in \["),
    Case("batch-size-neg", configured("batch_size = -1\n"), r"batch_size must be an integer"),
    Case("bootstrap-0", configured("bootstrap = 0\n"), r"bootstrap must be an integer in \["),
    Case("bootstrap-neg", configured("bootstrap = -5\n"), r"bootstrap must be an integer"),
    Case("device-bogus", configured('device = "bogus"\n'), r"'bogus' is not a torch device"),
    Case("device-cuda-7", configured('device = "cuda:7"\n'), r"device 'cuda:7'"),
    Case("report-is-a-file", configured('report = "afile"\n'), r"afile is a file"),
    Case(
        "threshold-negative",
        configured("[thresholds]\naccuracy = -1\n"),
        r"thresholds.accuracy must lie in \[0, 1\], the range of accuracy, got -1",
    ),
    Case("threshold-inf", configured("[thresholds]\naccuracy = inf\n"), r"must be a finite"),
    Case("threshold-neg-inf", configured("[thresholds]\naccuracy = -inf\n"), r"must be a finite"),
    Case("threshold-nan", configured("[thresholds]\naccuracy = nan\n"), r"must be a finite"),
    data_row("nul-inside-csv-path", lambda f: csv_data(f).replace("list", "li\0st"), "a NUL byte"),
    data_row("nul-ending-csv-path", lambda f: csv_data(f) + "\0", "contains a NUL byte"),
    data_row("nul-in-csv-cell", nul_in_cell, r"list.csv line 4: a NUL byte"),
    data_row(
        "image-outside", outside, r"line 4: image path '../outside.png' leaves the data folder"
    ),
    data_row("image-linked-outside", linked_outside, r"2.png is a link to .*outside.png, outside"),
    data_row("bomb", declared_size, r"line 4: image .*2.png declares 400000000 pixels, over the"),
    data_row("truncated-image", truncated_image, r"line 4: image .*2.png cannot be decoded"),
)
PARAMS = [pytest.param(case, end, id=f"{case.name}-{end}") for case in CASES for end in case.ends]


def run_end(end: str, built: Built, pytester: pytest.Pytester, capsys) -> tuple[int, list[str]]:
    """Run one front end in-process; its exit code and the non-empty lines it wrote to stderr
    (the gate's stdout is checked for tracebacks too)."""
    config = ["--config", "biascheck.toml"]
    if end == "gate":
        result = pytester.runpytest(
            "--biascheck", built.model, "--biascheck-data", built.data, "-p", "no:cacheprovider"
        )
        text = result.stdout.str()
        assert "Traceback" not in text and "INTERNALERROR" not in text, text
        return int(result.ret), [line for line in result.stderr.lines if line.strip()]
    if end == "recipe":
        from mitigations.__main__ import main as recipe_main

        # one folder serves as training and evaluation data: the split rule is tested elsewhere
        code = recipe_main(
            ["roi-iou", "--model", built.model, "--out", "out.pt", "--data", built.data,
             "--eval-data", built.data, "--attribute", "Smiling", "--region", "box:mouth",
             "--max-steps", "1", "--batch-size", "4", "--train-on-eval-images", *config]
        )  # fmt: skip
    elif end == "layers":
        code = biascheck_main(["layers", built.model, *config])
    else:
        code = biascheck_main(
            ["evaluate", "--model", built.model, "--data", built.data, "--out", "out.json", *config]
        )
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("case", "end"), PARAMS)
def test_hostile_input_is_one_line_and_a_usage_error(case, end, pytester, capsys):
    built = case.build(pytester.path)
    (pytester.path / "biascheck.toml").write_text(BASE_CONFIG + built.config)
    before = set(pytester.path.rglob("*"))
    capsys.readouterr()
    code, lines = run_end(end, built, pytester, capsys)
    assert code == (2 if end == "recipe" else 4), lines
    assert len(lines) == 1, lines
    prefix = {"gate": "ERROR: ", "recipe": "mitigations: error: "}.get(end, "biascheck: error: ")
    assert lines[0].startswith(prefix) and "Traceback" not in lines[0]
    assert re.search(case.expect, lines[0]), lines[0]
    written = [p for p in set(pytester.path.rglob("*")) - before if p.is_file()]
    assert [p for p in written if not p.name.endswith(".lock")] == []  # no out.pt, report...


@pytest.mark.timeout(120)
def test_truncated_cache_entry_is_recomputed_with_one_warning(pytester, tiny_checkpoint):
    """Not a usage error: the damaged entry is discarded, the run evaluates again and passes."""
    (pytester.path / "model.pt").write_bytes(tiny_checkpoint.read_bytes())
    (pytester.path / "biascheck.toml").write_text(BASE_CONFIG + "[thresholds]\naccuracy = 0\n")
    args = ("--biascheck", "model.pt", "--biascheck-data", SYNTHETIC, "-p", "no:cacheprovider")
    pytester.runpytest(*args).assert_outcomes(passed=3)  # accuracy of Smiling, Male, Young
    (entry,) = (pytester.path / "reports" / ".cache").glob("*.json")
    whole = entry.read_bytes()
    entry.write_bytes(whole[: len(whole) // 3])
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=3)
    warned = [line for line in result.stdout.lines if "cache entry" in line]
    assert len(warned) == 1 and "is not JSON" in warned[0] and "evaluating again" in warned[0]
    assert entry.read_bytes() == whole


def test_torch_floor_closes_the_weights_only_bypass():
    """weights_only=True can be bypassed in torch <= 2.5.1 (CVE-2025-32434)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_requirement,) = [d for d in project["dependencies"] if d.startswith("torch>")]
    floor = torch_requirement.split(">=")[1].split(",")[0]
    assert tuple(map(int, floor.split("."))) >= (2, 6)
    assert "CVE-2025-32434" in (ROOT / "pyproject.toml").read_text()
    assert json.dumps(torch_requirement)  # a plain string, as pip reads it
