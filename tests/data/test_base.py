"""Protected groups of the dataset schema: labels, group columns and their intersections, coded in
mixed radix with names that list every combination, and the one-line errors for bad names."""

from __future__ import annotations

import itertools

import pytest
import torch

from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.planning import group_levels


class Stub(BiasDataset):
    """Labels Male and Young, a three-valued group tone and a two-valued group place."""

    attributes = ("Male", "Young")
    group_names = ("tone", "place")
    group_levels = {"tone": ("I", "II", "III")}  # noqa: RUF012 - test fixture

    def __len__(self) -> int:
        return 24


def batch() -> dict[str, torch.Tensor]:
    """Every combination of the four columns once (2 * 2 * 3 * 2 = 24 images)."""
    rows = torch.tensor(list(itertools.product((0, 1), (0, 1), (0, 1, 2), (0, 1))))
    return {"labels": rows[:, :2].float(), "groups": rows[:, 2:]}


def names_of(data: Stub, values: dict[str, torch.Tensor], name: str) -> list[str]:
    """The value names of each image built directly from its columns (the independent reference)."""
    tone = data.group_levels["tone"]
    words = {
        "Male": [str(int(v)) for v in values["labels"][:, 0]],
        "Young": [str(int(v)) for v in values["labels"][:, 1]],
        "tone": [tone[v] for v in values["groups"][:, 0]],
        "place": [str(int(v)) for v in values["groups"][:, 1]],
    }
    parts = name.split("*")
    return ["*".join(words[p][i] for p in parts) for i in range(len(words["Male"]))]


@pytest.mark.parametrize("name", ["Male", "tone", "Male*Young", "tone*Male*place", "Young * tone"])
def test_codes_index_the_level_names(name) -> None:
    data, values = Stub(), batch()
    levels = data.protected_levels(name)
    codes = data.protected_values(values, name)
    assert [levels[c] for c in codes.tolist()] == names_of(data, values, name.replace(" ", ""))
    assert codes.dtype == torch.int64 and sorted(set(codes.tolist())) == list(range(len(levels)))


def test_levels_list_every_combination_first_part_slowest() -> None:
    data = Stub()
    assert data.protected_levels("Male*tone") == ("0*I", "0*II", "0*III", "1*I", "1*II", "1*III")
    assert data.protected_levels("place") == ("0", "1")  # undeclared group column: 0 and 1
    assert group_levels(data, ["Male*Young", "tone*place", "tone"]) == {
        "Male*Young": 4, "tone*place": 6, "tone": 3
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Male*Hat", r"protected group 'Male\*Hat': 'Hat' is neither a label nor a group of the data; choose from Male, Young, tone, place"),
        ("Male*Male", r"not a name or an intersection of distinct names"),
        ("Male*", r"not a name or an intersection of distinct names"),
    ],
)  # fmt: skip
def test_bad_names_are_one_line_errors(name, expected) -> None:
    with pytest.raises(BiascheckError, match=expected) as error:
        Stub().protected_levels(name)
    assert "\n" not in str(error.value)


def test_intersections_with_too_many_values_are_refused() -> None:
    class Wide(Stub):
        group_levels = {"tone": tuple(range(100)), "place": tuple(range(50))}  # noqa: RUF012

    with pytest.raises(BiascheckError, match="more than 4096 values; intersect fewer"):
        Wide().protected_levels("tone*place")


def test_image_ids_default_to_the_index() -> None:
    assert Stub().image_ids().tolist() == [str(i) for i in range(24)]
