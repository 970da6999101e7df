"""One ``--cam-target`` vocabulary: the signs by hand, the multiclass rule, and ROI-IoU's maps equal to
Crayon's for each target (the same word explains the same score in both recipes)."""

from __future__ import annotations

import pytest
import torch

from mitigations.__main__ import build_parser
from mitigations.cam_target import CAM_TARGETS, resolve_cam_target, score_sign, signed_cams
from mitigations.crayon.explain import original_maps
from mitigations.recipe import Job
from mitigations.registry import builtin_recipes
from mitigations.roi_iou import iou_loss, region_on_grid
from pytest_biascheck.cam import normalise_maps
from pytest_biascheck.config import Settings
from pytest_biascheck.data.synth_faces import SynthFaces
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import load_checkpoint
from pytest_biascheck.planning import plan_for


def test_signs_and_signed_maps_by_hand():
    logits, labels = torch.tensor([2.0, -0.5, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    assert score_sign(logits, labels, "label").tolist() == [-1, -1, 1]
    assert score_sign(logits, labels, "predicted").tolist() == [1, -1, 1]
    assert score_sign(logits, None, "positive").tolist() == [1, 1, 1]
    raw = torch.tensor([[[1.0, -2.0], [3.0, 0.0]]])
    assert signed_cams(raw, torch.tensor([-1.0])).tolist() == [[[0.0, 2.0], [0.0, 0.0]]]
    with pytest.raises(ValueError, match="target must be one of"):
        score_sign(logits, labels, "class")


def test_unset_is_the_recipes_default_and_a_multiclass_head_maps_its_class_logit():
    assert resolve_cam_target(None, "label", "multilabel") == "label"
    assert resolve_cam_target("positive", "label", "multilabel") == "positive"
    assert resolve_cam_target(None, "label", "multiclass") == "positive"
    assert resolve_cam_target("positive", "predicted", "multiclass") == "positive"
    with pytest.raises(BiascheckError, match="leave --cam-target unset or pass positive"):
        resolve_cam_target("predicted", "label", "multiclass")


@pytest.fixture
def job(tiny_checkpoint) -> Job:
    model = load_checkpoint(tiny_checkpoint)
    data = SynthFaces(n=12, split="train", image_size=32)
    scope, plan = plan_for(model, SynthFaces(n=8, image_size=32), Settings())
    return Job(model, data, "synthfaces", scope, plan, torch.device("cpu"))


def test_roi_iou_and_crayon_maps_explain_the_same_score_for_each_target(job):
    recipes, parser = builtin_recipes(), build_parser(builtin_recipes())
    data, module, spec = job.train_data, job.model.module.eval(), job.model.spec
    batch = data.render(range(len(data)))
    inputs = spec.normalize(batch["image"])
    output, column = spec.attributes.index("Smiling"), data.attributes.index("Smiling")
    losses = {}
    for target in CAM_TARGETS:
        argv = ["roi-iou", "--model", "m", "--out", "o", "--attribute", "Smiling", "--region",
                "mouth", "--cam-target", target]  # fmt: skip
        setup = recipes["roi-iou"].prepare(parser.parse_args(argv), job)
        losses[target] = setup.loss(module, inputs, batch)["iou"].detach()
        crayon, _ = original_maps(module, spec, data, output, column, target=target)
        region = region_on_grid("mask", "mouth", batch, data, tuple(crayon.shape[-2:]))
        expected = iou_loss(normalise_maps(crayon, "minmax"), region)
        expected = expected * (region.sum((-2, -1)) > 0)
        torch.testing.assert_close(losses[target], expected, rtol=1e-4, atol=1e-5)
    # the three words are three different scores on this model and data
    assert not torch.allclose(losses["label"], losses["predicted"])
    assert not torch.allclose(losses["positive"], losses["predicted"])
