"""Crayon's annotation sessions: answers, undo and resume through the file, refusals of files made
for something else, the simulated annotator's thresholds and the per-neuron majority."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mitigations.crayon import answers as notes
from pytest_biascheck.errors import BiascheckError

IDENTITY = {
    "attribute": "Smiling",
    "target": "label",
    "model": {"path": "m.pt", "sha256": "abc"},
    "data": "synthfaces:n=4",
    "n_images": 4,
}


def session(items=(2, 0, 3, 1)) -> notes.Annotations:
    return notes.Annotations(kind="maps", items=list(items), question="Smiling?", **IDENTITY)


def test_answers_undo_and_the_next_open_item():
    s = session()
    assert s.next_open() == 0 and s.undo() is None
    s.answer(0, "yes")
    s.answer(1, "no")
    s.answer(0, "maybe")  # answering again replaces, and becomes the latest answer
    assert s.answers == ["maybe", "no", None, None] and s.history == [1, 0]
    assert s.counts() == {"yes": 0, "no": 1, "maybe": 1, "open": 2}
    assert s.next_open() == 2
    assert s.undo() == 0 and s.answers[0] is None and s.next_open() == 0
    # positions 0..3 show images 2, 0, 3, 1: image 0 (position 1) is the one answered "no"
    assert s.codes_for([3, 1, 0]).tolist() == [notes.MAYBE, notes.MAYBE, notes.NO]
    with pytest.raises(ValueError, match="answer must be one of"):
        s.answer(0, "perhaps")
    with pytest.raises(ValueError, match="item 4 is outside"):
        s.answer(4, "yes")


def test_file_round_trip_resumes_answers_and_undo(tmp_path):
    path = tmp_path / "a.json"
    s = session()
    s.answer(1, "no")
    s.answer(3, "yes")
    s.save(path)
    assert not list(tmp_path.glob(".*.tmp"))  # written by rename, no temporary left
    back = notes.load(path)
    assert back.to_dict() == s.to_dict()
    assert json.loads(path.read_text())["counts"] == {"yes": 1, "no": 1, "maybe": 0, "open": 2}
    assert back.undo() == 3  # the history survives a restart
    assert back.next_open() == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "cannot be read"),
        ('{"format": "other"}', "is not a Crayon annotation file"),
        ('{"format": "crayon-annotations/1", "kind": "maps"}', "lacks"),
    ],
)
def test_load_refuses_what_is_not_an_annotation_file(tmp_path, content, message):
    path = tmp_path / "a.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BiascheckError, match=message) as info:
        notes.load(path)
    assert "\n" not in str(info.value) and "crayon annotate" in str(info.value)


def test_load_refuses_answers_that_do_not_fit_the_items(tmp_path):
    path = tmp_path / "a.json"
    data = session().to_dict()
    data["answers"] = ["yes", "sure", None, None]
    path.write_text(json.dumps(data))
    with pytest.raises(BiascheckError, match="one answer"):
        notes.load(path)


def test_check_matches_names_what_differs(tmp_path):
    s = session()
    notes.check_matches(s, tmp_path, {"kind": "maps", **IDENTITY}, [0, 1, 2, 3])  # any order
    other = {**IDENTITY, "model": {"path": "m.pt", "sha256": "def"}}
    with pytest.raises(BiascheckError, match="was made with model"):
        notes.check_matches(s, tmp_path, other, [0, 1, 2, 3])
    with pytest.raises(BiascheckError, match="judges other maps"):
        notes.check_matches(s, tmp_path, IDENTITY, [0, 1, 2, 4])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=30),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_simulated_answers_follow_the_thresholds(scores, a, b):
    no_at, yes_at = sorted((a, b))
    if no_at == yes_at:
        return
    codes = notes.simulate(torch.tensor(scores, dtype=torch.float64), yes_at, no_at)
    for score, code in zip(scores, codes.tolist(), strict=True):
        expected = notes.YES if score >= yes_at else notes.NO if score <= no_at else notes.MAYBE
        assert code == expected


def test_simulated_thresholds_must_be_ordered():
    with pytest.raises(BiascheckError, match="must lie below"):
        notes.simulate(torch.zeros(3), 0.2, 0.2)


def test_a_neuron_is_pruned_when_most_of_its_patches_are_irrelevant():
    y, n, m = notes.YES, notes.NO, notes.MAYBE
    three = torch.tensor([[n, n, y], [n, m, m], [n, n, n], [y, n, m], [y, y, y]])
    assert notes.neuron_pruned(three).tolist() == [True, False, True, False, False]
    two = torch.tensor([[n, n], [n, y], [n, m]])
    assert notes.neuron_pruned(two).tolist() == [True, False, False]  # a tie keeps the neuron
