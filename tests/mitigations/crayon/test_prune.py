"""Crayon-Pruning inside the saved architecture: the head is found for both fixture heads, a pruned
channel stops influencing the task output (and only it, for a pool + linear head) through any
number of optimiser steps, and only the head trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mitigations.crayon.prune import cut, find_head, hold_pruned, prune_mask, train_only_head
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import ModelSpec
from pytest_biascheck.nets import SmallResNet

SPEC = ModelSpec(attributes=("a", "b", "c"), input_size=(3, 32, 32), target_layer="layer4")


def net(head: str) -> SmallResNet:
    torch.manual_seed(0)
    return SmallResNet(3, widths=(8, 8, 8, 8), head=head, hidden=6).eval()


def test_head_of_a_pool_linear_and_of_an_mlp_model():
    linear = net("linear")
    head = find_head(linear, SPEC)
    assert head.reader is linear.fc and head.gives_logits
    assert head.parameters == (linear.fc.weight, linear.fc.bias)
    mlp = net("mlp")
    head = find_head(mlp, SPEC)
    assert head.reader is mlp.fc[0] and not head.gives_logits
    assert len(head.parameters) == 4


def test_a_layer_whose_channels_reach_the_head_through_convolutions_is_refused():
    spec = ModelSpec(attributes=("a", "b", "c"), input_size=(3, 32, 32), target_layer="layer3")
    with pytest.raises(BiascheckError, match="use --mode attention"):
        find_head(net("linear"), spec)


def test_masks_cut_the_task_row_or_every_row():
    pruned = torch.tensor([True, False] * 4)
    linear = prune_mask(find_head(net("linear"), SPEC), pruned, [1])
    assert linear[1].tolist() == [0.0, 1.0] * 4 and linear[[0, 2]].eq(1).all()
    mlp = prune_mask(find_head(net("mlp"), SPEC), pruned, [1])
    assert mlp.shape == (6, 8) and (mlp == torch.tensor([0.0, 1.0] * 4)).all()


def _layer4_scaled(model, images, factors):
    """Logits with layer4's channels multiplied by ``factors`` (how much each channel matters)."""
    handle = model.layer4.register_forward_hook(
        lambda m, a, out: out * factors[None, :, None, None]
    )
    try:
        return model(images)
    finally:
        handle.remove()


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_pruned_channels_stay_cut_through_training(head_kind):
    model = net(head_kind)
    head = find_head(model, SPEC)
    pruned = torch.tensor([True, True, False, False, True, False, False, False])
    mask = prune_mask(head, pruned, [1])
    hold_pruned(head, mask)
    train_only_head(model, head)
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc")}
    before = [p.clone() for p in head.parameters]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 0.05,
                                 weight_decay=0.1)  # fmt: skip
    images = torch.randn(4, 3, 32, 32)
    for _ in range(3):
        cut(head, mask)
        loss = F.binary_cross_entropy_with_logits(model(images), torch.ones(4, 3))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert head.reader.weight[mask == 0].eq(0).all()
    assert all(not torch.equal(p, q) for p, q in zip(head.parameters, before, strict=True))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trunk.items())
    # scaling a pruned channel changes nothing for the task output; a kept one does
    with torch.no_grad():
        plain = model(images)
        boost = 1 + 4 * pruned.float()
        scaled = _layer4_scaled(model, images, boost)
        torch.testing.assert_close(scaled[:, 1], plain[:, 1])
        if head_kind == "linear":  # the other outputs still read the pruned channels
            assert not torch.allclose(scaled[:, 0], plain[:, 0])
        kept = _layer4_scaled(model, images, 1 + 4 * (~pruned).float())
        assert not torch.allclose(kept[:, 1], plain[:, 1])
