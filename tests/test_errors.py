"""BiascheckError's text is one line, also when a DataLoader worker re-raises it."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from pytest_biascheck.errors import BiascheckError


class Broken(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise BiascheckError("data/list.csv line 3: image data/1.png cannot be decoded; replace it")


def test_an_error_from_a_dataloader_worker_keeps_only_its_message():
    with pytest.raises(BiascheckError) as caught:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Traceback" in caught.value.args[0]  # the worker's wrapper, as torch raises it
    assert (
        str(caught.value) == "data/list.csv line 3: image data/1.png cannot be decoded; replace it"
    )


def test_line_breaks_in_quoted_input_become_spaces():
    assert str(BiascheckError("bad value 'a\nb'\n  in x.toml")) == "bad value 'a b' in x.toml"
