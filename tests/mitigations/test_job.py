"""A recipe run's inputs: training data joins the config's metadata CSV like the gate's, and a
source with no held-out split cannot train on the images the checks evaluate unless told to."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pytest_biascheck.model import ModelSpec, save_checkpoint
from pytest_biascheck.nets import SmallResNet


def _user_data(folder) -> None:
    """A CSV of 24 images with no split column, a 0/1 metadata group, and a 32 px model."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir()
    rows, meta = ["image,Smiling"], ["image_id,dark"]
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"img/{i}.png"
        )
        rows.append(f"img/{i}.png,{i % 2}")
        meta.append(f"img/{i}.png,{(i // 2) % 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    (folder / "groups.csv").write_text("\n".join(meta) + "\n")
    (folder / "biascheck.toml").write_text(
        'data = "csv:labels.csv"\nmetadata = "groups.csv"\n[models.net]\nprotected = ["dark"]\n'
    )
    spec = ModelSpec(("Smiling",), (3, 32, 32))
    save_checkpoint(SmallResNet(1, widths=(8,) * 4), spec, folder / "net.pt", "biascheck.small_resnet",
                    {"widths": [8] * 4})  # fmt: skip


def test_no_held_out_split_refuses_training_on_the_evaluated_images(cli, tmp_path, capsys):
    _user_data(tmp_path)
    argv = ["rebalance", "--model", "net.pt", "--out", "new.pt", "--attribute", "Smiling",
            "--protected", "dark", "--batch-size", "8", "--max-steps", "1"]  # fmt: skip
    assert cli(*argv) == 2
    message = capsys.readouterr().err
    assert "holds 24 of the 24 images the checks evaluate" in message
    assert "nothing held out (labels.csv has no split column)" in message
    assert "--train-on-eval-images" in message and not (tmp_path / "new.pt").exists()
    # told to, it trains; the protected group comes from the joined metadata CSV, as in the gate
    assert cli(*argv, "--train-on-eval-images") == 0
    report = json.loads((tmp_path / "new.report.json").read_text())
    assert any(row["item"].endswith("[Smiling-dark]") for row in report["checks"])
