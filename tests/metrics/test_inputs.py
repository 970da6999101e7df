"""Input checks and the level one-hot layout shared by the accumulators."""

from __future__ import annotations

import pytest
import torch

from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.metrics.inputs import (
    as_binary,
    check_levels,
    level_onehot,
    level_table,
    stack_groups,
)


def test_level_onehot_lays_groups_end_to_end() -> None:
    levels = {"Male": 2, "age": 3}
    values = stack_groups(
        {"age": torch.tensor([2, 0]), "Male": torch.tensor([1, 0])}, levels, batch=2
    )
    assert values.tolist() == [[1, 2], [0, 0]]
    assert level_onehot(values, levels).tolist() == [[0, 1, 0, 0, 1], [1, 0, 1, 0, 0]]
    assert level_table(levels) == (["Male", "Male", "age", "age", "age"], [0, 1, 0, 1, 2])


def test_bad_inputs_name_the_argument_and_the_fix() -> None:
    assert as_binary(torch.tensor([[True, False]]), "labels", (1, 2)).tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="labels must have shape"):
        as_binary(torch.zeros(3), "labels", (1, 3))
    with pytest.raises(ValueError, match="threshold"):
        as_binary(torch.tensor([0.2]), "predictions", (1,))
    with pytest.raises(BiascheckError) as error:
        stack_groups({"Male": torch.tensor([0, 2])}, {"Male": 2}, batch=2)
    assert "'Male'" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="integer"):
        stack_groups({"Male": torch.tensor([0.0, 1.0])}, {"Male": 2}, batch=2)
    with pytest.raises(ValueError, match="number of values"):
        check_levels({"Male": 0})
