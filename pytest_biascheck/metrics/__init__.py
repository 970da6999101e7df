"""Bias metrics as streaming accumulators: update per batch, merge shards, compute once."""

from pytest_biascheck.metrics.attention import HeatmapScore, MaskScore, attention_iou
from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.bootstrap import bootstrap_ci
from pytest_biascheck.metrics.divergence import PredictionDivergence
from pytest_biascheck.metrics.energy import ProportionalEnergy, proportional_energy
from pytest_biascheck.metrics.group import GroupRates
from pytest_biascheck.metrics.leakage import LeakageProbe, percent_unlearned
from pytest_biascheck.metrics.mcc import PairwiseMCC, mcc
from pytest_biascheck.metrics.multiclass import ClassRates

__all__ = [
    "Accumulator",
    "ClassRates",
    "GroupRates",
    "HeatmapScore",
    "LeakageProbe",
    "MaskScore",
    "PairwiseMCC",
    "PredictionDivergence",
    "ProportionalEnergy",
    "attention_iou",
    "bootstrap_ci",
    "mcc",
    "percent_unlearned",
    "proportional_energy",
]
