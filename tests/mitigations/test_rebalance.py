"""Rebalance: the subgroup solver against scipy's trust-constr (the paper's solver), rounding,
seeded subsampling, and the recipe's setup."""

from __future__ import annotations

import argparse
import functools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

from mitigations.rebalance import objective, prepare, round_counts, solve_subgroups, subsample
from mitigations.recipe import Job
from pytest_biascheck.config import Settings
from pytest_biascheck.data.synth_faces import SynthFaces
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.metrics.mcc import mcc_from_counts
from pytest_biascheck.model import load_checkpoint
from pytest_biascheck.planning import plan_for


def mcc(groups: np.ndarray) -> float:
    return float(mcc_from_counts(torch.as_tensor(np.reshape(groups, (2, 2)))))


def scipy_subgroups(original, target: float, total: float | None):
    """The paper's solver: trust-constr from the original sizes, bounds 0..original."""
    start = np.asarray(original, dtype=np.float64).reshape(4)
    constraints = [optimize.NonlinearConstraint(mcc, target, target)]
    if total is not None:
        constraints.append(optimize.LinearConstraint([[1, 1, 1, 1]], total, total))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optimize.minimize(
            functools.partial(objective, original=start), start, method="trust-constr",
            constraints=constraints, bounds=optimize.Bounds(0, start), tol=1e-6,
            options={"maxiter": 20000},
        )  # fmt: skip


CASES = [
    ([[1900, 100], [100, 1900]], 0.0, None),
    ([[1900, 100], [100, 1900]], 0.5, None),
    ([[3000, 800], [500, 1200]], 0.1, None),
    ([[3000, 800], [500, 1200]], 0.1, 3000),
    ([[500, 1500], [1200, 300]], -0.2, 2000),
    ([[1000, 1000], [1000, 1000]], 0.3, 3000),
    ([[4000, 300], [2500, 900]], 0.05, 4000),
]


@pytest.mark.parametrize(("original", "target", "total"), CASES)
def test_solver_is_at_least_as_good_as_scipy(original, target, total):
    ours = solve_subgroups(np.array(original), target, total).reshape(4)
    bound = np.array(original, dtype=np.float64).reshape(4)
    assert mcc(ours) == pytest.approx(target, abs=1e-6)
    assert (ours >= 0).all() and (ours <= bound + 1e-6).all()
    if total is not None:
        assert ours.sum() == pytest.approx(total, rel=1e-9)
    reference = scipy_subgroups(original, target, total)
    if reference.success and reference.constr_violation < 1e-6:
        assert objective(ours, bound) <= reference.fun * (1 + 1e-6) + 1e-9
        if objective(ours, bound) > reference.fun * (1 - 1e-4):  # the same optimum: same sizes
            np.testing.assert_allclose(ours, reference.x, atol=0.5)


def test_solver_agrees_with_scipy_on_the_biased_faces_counts():
    original = np.array([[1850, 110], [95, 1945]])
    ours = solve_subgroups(original, 0.0)
    reference = scipy_subgroups(original, 0.0, None)
    assert reference.success
    np.testing.assert_allclose(ours.reshape(4), reference.x, atol=0.5)


def test_unreachable_size_is_refused():
    with pytest.raises(BiascheckError, match=r"no subset of the training data reaches MCC 0\.0"):
        solve_subgroups(np.array([[1900, 10], [10, 1900]]), 0.0, 3000)
    with pytest.raises(BiascheckError, match="--mcc must be strictly between"):
        solve_subgroups(np.array([[10, 10], [10, 10]]), 1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 500), min_size=4, max_size=4), st.integers(0, 5))
def test_rounding_keeps_the_total_and_the_bounds(values, extra):
    groups = np.array(values).reshape(2, 2)
    original = np.ceil(groups).astype(np.int64) + extra
    total = int(np.floor(groups.sum()))
    counts = round_counts(groups, original, total)
    assert counts.sum() == total
    assert (counts <= original).all() and (np.abs(counts - groups) < 1 + 1e-9).all()


def test_subsample_takes_exact_counts_deterministically():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 2, 500))
    protected = torch.from_numpy(rng.integers(0, 2, 500))
    counts = np.array([[20, 30], [40, 5]])
    picked = subsample(target, protected, counts, seed=1)
    cells = np.bincount((2 * target + protected).numpy()[picked], minlength=4)
    assert cells.tolist() == [20, 30, 40, 5]
    assert len(set(picked.tolist())) == len(picked) and (np.diff(picked) > 0).all()
    assert np.array_equal(picked, subsample(target, protected, counts, seed=1))
    assert not np.array_equal(picked, subsample(target, protected, counts, seed=2))


def test_prepare_reaches_the_requested_mcc(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    data = SynthFaces(
        n=2000,
        split="train",
        image_size=32,
        correlations={("Smiling", "Black_Hair"): 0.9},
        frequencies={"Black_Hair": 0.5},
    )
    scope, plan = plan_for(model, SynthFaces(n=8, image_size=32), Settings())
    job = Job(model, data, "synthfaces", scope, plan, torch.device("cpu"))
    args = argparse.Namespace(attribute="Smiling", protected="Black_Hair", mcc=0.0, size=None,
                              retrain=False, pos_weight="attribute", seed=0)  # fmt: skip
    setup = prepare(args, job)
    smiling = data.labels[:, data.attributes.index("Smiling")].long()
    black = data.labels[:, data.attributes.index("Black_Hair")].long()
    picked = np.asarray(setup.indices)
    counts = np.bincount((2 * smiling + black).numpy()[picked], minlength=4).reshape(2, 2)
    assert counts.tolist() == setup.facts["counts"]
    assert abs(mcc(counts)) < 0.01 and setup.facts["original_mcc"] > 0.5
    assert counts.sum() > 100
    with pytest.raises(BiascheckError, match="'Hair_Colour' is neither a label nor a group"):
        prepare(argparse.Namespace(**{**vars(args), "protected": "Hair_Colour"}), job)
    # pos_weight = (1 - p) / p from the subset: on Smiling only, on every output, or none.
    rate = data.labels[picked][:, [data.attributes.index(a) for a in model.spec.attributes]]
    paper = ((1 - rate.double().mean(0)) / rate.double().mean(0)).tolist()
    weights = {
        mode: prepare(argparse.Namespace(**{**vars(args), "pos_weight": mode}), job).facts
        for mode in ("attribute", "all", "none")
    }
    assert weights["all"]["pos_weight"] == pytest.approx(paper)
    for name, w, w_all in zip(
        model.spec.attributes, weights["attribute"]["pos_weight"], paper, strict=True
    ):
        assert w == pytest.approx(w_all if name == "Smiling" else 1.0)
    assert weights["none"]["pos_weight"] is None


@pytest.mark.slow
def test_fixture_rebalance_raises_worst_group_accuracy(run_on_fixture):
    rows, report = run_on_fixture(
        "rebalance", "--attribute", "Smiling", "--protected", "Black_Hair", "--mcc", "0"
    )
    assert report["facts"]["original_mcc"] > 0.8 and abs(report["facts"]["mcc"]) < 0.01
    worst = rows["worst_group_accuracy[Smiling-Black_Hair]"]
    assert worst["before"]["status"] == "FAILED" and worst["after"]["status"] == "passed"
    assert worst["change"] > 0.2
    assert rows["accuracy[Smiling]"]["change"] > -0.02


def test_retrain_starts_from_fresh_weights(cli, tmp_path):
    from tests.conftest import make_tiny

    outs = []
    for seed in (0, 1):  # two parents with different weights
        parent = make_tiny(tmp_path / f"parent{seed}.pt", seed=seed)
        outs.append(tmp_path / f"retrained{seed}.pt")
        assert cli("rebalance", "--model", parent, "--out", outs[-1], "--attribute", "Smiling",
                   "--protected", "Black_Hair", "--mcc", "0.3", "--retrain", "--epochs", "1",
                   "--batch-size", "16", "--data", "synthfaces:preset=biased,n=400",
                   "--skip-checks") == 0  # fmt: skip
    first, second = (torch.load(o, weights_only=True)["state_dict"] for o in outs)
    parent = torch.load(tmp_path / "parent0.pt", weights_only=True)["state_dict"]
    for key in first:
        torch.testing.assert_close(first[key], second[key], msg=key)  # the parent did not matter
    assert not torch.equal(first["fc.weight"], parent["fc.weight"])
    assert not torch.equal(first["layer1.bn1.running_mean"], parent["layer1.bn1.running_mean"])
