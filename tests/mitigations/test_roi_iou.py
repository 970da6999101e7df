"""ROI-IoU: the IoU loss against set IoU and hand values, the two variants' gradients, regions on
the CAM grid, the E1/E2 evaluation, and a short fine-tune that lowers its own loss."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mitigations.recipe import Job
from mitigations.roi_iou import e1_e2, iou_loss, prepare, region_on_grid
from mitigations.train import TrainConfig, train
from pytest_biascheck.config import Settings
from pytest_biascheck.data.regions import resolve_region, template_box_mask
from pytest_biascheck.data.synth_faces import SynthFaces
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results
from pytest_biascheck.metrics.maps import mask_to_cam
from pytest_biascheck.model import load_checkpoint
from pytest_biascheck.planning import plan_for


def test_hard_loss_hand_computed():
    cam = torch.tensor([[[1.0, 0.6], [0.2, 0.0]]])
    region = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # G = cam above 0.5 = [[1, 0.6], [0, 0]]; |G ∩ S| = 1; |G ∪ S| = 1 + 0.6 = 1.6
    loss = iou_loss(cam, region, "hard")
    assert float(loss) == pytest.approx(math.log(1.6), rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.booleans(), min_size=16, max_size=16),
    st.lists(st.booleans(), min_size=16, max_size=16),
)
def test_binary_maps_give_minus_log_set_iou(cells, region_cells):
    cam = torch.tensor(cells, dtype=torch.float32).view(1, 4, 4)
    region = torch.tensor(region_cells, dtype=torch.float32).view(1, 4, 4)
    g = {i for i, v in enumerate(cells) if v}
    s = {i for i, v in enumerate(region_cells) if v}
    if not g & s:
        return
    expected = -math.log(len(g & s) / len(g | s))
    assert float(iou_loss(cam, region, "hard")) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert float(iou_loss(cam, region, "soft", tau=0.01)) == pytest.approx(expected, abs=1e-3)


def test_soft_variant_pulls_region_cells_up_where_the_hard_one_cannot():
    cam = torch.tensor([[[1.0, 0.3], [0.2, 0.0]]], requires_grad=True)
    region = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # attention misses the region entirely
    (hard,) = torch.autograd.grad(iou_loss(cam, region, "hard").sum(), cam)
    (soft,) = torch.autograd.grad(iou_loss(cam, region, "soft").sum(), cam)
    assert hard[0, 0, 1] == 0  # below the threshold: no gradient into the region in the paper's set
    assert soft[0, 0, 1] < 0  # the soft step raises the region cell (loss falls as it grows)
    assert soft[0, 0, 0] > 0 and hard[0, 0, 0] > 0  # both lower the wrong cell


def test_regions_resolve_like_the_gate():
    names = SynthFaces(n=4, image_size=32).region_names
    assert resolve_region("mouth", names, "--region") == ("mask", "mouth")
    assert resolve_region("box:mouth", names, "--region") == ("box", "mouth")
    with pytest.raises(BiascheckError, match=r"no region 'chin' .*name it box:chin"):
        resolve_region("chin", names, "--region")  # a box only when asked for
    with pytest.raises(BiascheckError, match=r"--region 'elbow'.*box:chin"):
        resolve_region("elbow", names, "--region")


def test_region_on_grid():
    data = SynthFaces(n=2, image_size=32)
    batch = data.render([0, 1])
    box = region_on_grid("box", "nose", batch, data, (4, 4))
    assert torch.equal(box, template_box_mask("nose", 4, 4).float().expand(2, -1, -1))
    mouth = batch["masks"][:, data.region_names.index("mouth")]
    region = region_on_grid("mask", "mouth", batch, data, (4, 4))
    gate = mask_to_cam(batch["masks"], (4, 4))[:, data.region_names.index("mouth")]
    torch.testing.assert_close(region, gate)  # the same S as the gate's mask score
    for image in range(2):
        ys, xs = torch.nonzero(mouth[image], as_tuple=True)
        centre = (int(ys.float().mean()) // 8, int(xs.float().mean()) // 8)
        assert region[image].amax() == 1 and region[image][centre] > 0.5
    batch["masks"][:] = False
    assert region_on_grid("mask", "mouth", batch, data, (4, 4)).eq(0).all()


def test_e1_e2_hand_computed():
    frame = pd.DataFrame(
        {
            "index": range(8),
            "y:Smiling": [1, 1, 1, 1, 1, 0, 0, 1],
            "z:Smiling": [2.0, -1.0, 0.5, 3.0, -2.0, 1.0, -1.0, 0.1],
            "g:Black_Hair": [1, 1, 1, 0, 0, 0, 1, 0],
        }
    )
    results = Results("m", "0", "data", ("Smiling",), frame)
    out = e1_e2(results, "Smiling", "Black_Hair")
    # E1 (smiling, black hair) = images 0, 1, 2: correct 0 and 2; E2 = images 3, 4, 7: correct 3, 7
    assert out["E1_n"] == 3 and out["E1"] == pytest.approx(2 / 3)
    assert out["E2_n"] == 3 and out["E2"] == pytest.approx(2 / 3)
    frame["g:Black_Hair"] = 0
    assert np.isnan(e1_e2(results, "Smiling", "Black_Hair")["E1"])


def _job(checkpoint: Path, n: int = 32) -> Job:
    model = load_checkpoint(checkpoint)
    data = SynthFaces(n=n, split="train", image_size=32)
    scope, plan = plan_for(model, SynthFaces(n=8, image_size=32), Settings())
    return Job(model, data, "synthfaces", scope, plan, torch.device("cpu"))


def _args(**overrides) -> argparse.Namespace:
    values = dict(attribute="Smiling", region="mouth", wa=1.0, wg=5.0, iou="soft", tau=0.1,
                  cam_target="predicted", pair=None)  # fmt: skip
    return argparse.Namespace(**{**values, **overrides})


def test_prepare_refuses_bad_input(tiny_checkpoint):
    job = _job(tiny_checkpoint)
    with pytest.raises(BiascheckError, match="does not predict 'Eyeglasses'"):
        prepare(_args(attribute="Eyeglasses"), job)
    with pytest.raises(BiascheckError, match="region 'elbow'"):
        prepare(_args(region="elbow"), job)
    assert job.scope.protected[0] == "Male"  # the full scan: Male, Young, Black_Hair
    assert prepare(_args(), job).protected == ("Male",)  # E1/E2 pair: the first protected group
    assert prepare(_args(pair="Black_Hair"), job).protected == ("Black_Hair",)


@pytest.mark.parametrize("variant", ["soft", "hard"])
def test_fine_tuning_lowers_the_iou_loss(tiny_checkpoint, tmp_path, variant):
    job = _job(tiny_checkpoint)
    setup = prepare(_args(iou=variant, wa=0.0), job)
    batch = job.train_data.render(range(32))
    inputs = job.model.spec.normalize(batch["image"])
    before = setup.loss(job.model.module, inputs, batch)["iou"].mean()
    config = TrainConfig(lr=0.05, batch_size=32, epochs=8)
    train(job.model.module, job.model.spec, job.train_data, setup, config, job.device,
          resume_path=tmp_path / "state")  # fmt: skip
    after = setup.loss(job.model.module, inputs, batch)["iou"].mean()
    assert after < before - 0.05


#: The checks the end-to-end runs read, energies included (they are not on by default).
CHECKS = 'checks = ["accuracy", "mask_score", "majority_energy", "minority_energy"]\n'


@pytest.mark.slow
def test_fixture_roi_iou_raises_mask_score_and_mouth_energy(run_on_fixture):
    rows, report = run_on_fixture(
        "roi-iou", "--attribute", "Smiling", "--region", "mouth", "--batch-size", "32",
        "--max-steps", "100", "--lr", "0.001", "--pair", "Black_Hair", config=CHECKS,
    )  # fmt: skip
    mask = rows["mask_score[Smiling-mouth]"]
    assert mask["before"]["status"] == "FAILED" and mask["after"]["status"] == "passed"
    assert mask["change"] > 0.15  # measured 0.042 -> 0.284
    # the minority-class mouth energy grows (measured 0.008 -> 0.041); the majority one barely
    # moves in 100 steps (0.029 -> 0.034), so it is not asserted (docs/mitigations.md)
    assert rows["minority_energy[Smiling-mouth]"]["change"] > 0.02
    assert rows["accuracy[Smiling]"]["change"] > 0.1  # measured 0.709 -> 0.883
    e1_e2 = report["measures"]  # E2: smiling faces without black hair, measured 0.365 -> 0.955
    assert e1_e2["after"]["e1_e2"]["E2"] > e1_e2["before"]["e1_e2"]["E2"] + 0.3
