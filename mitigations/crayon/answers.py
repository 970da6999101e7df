"""Crayon's yes / no / maybe annotations: the JSON file the annotation page writes (one answer per
item, saved atomically after every click), the mask-based simulated annotator for unattended
runs, and the per-neuron verdict from its patches' answers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pytest_biascheck import files
from pytest_biascheck.atomic import atomic_write_text
from pytest_biascheck.errors import BiascheckError

FORMAT = "crayon-annotations/1"
KINDS = ("maps", "neurons")
ANSWERS = ("yes", "no", "maybe")
#: Answer codes in tensors: relevant, irrelevant, ignored (maybe or not answered).
YES, NO, MAYBE = 1, 0, -1
CODES = {"yes": YES, "no": NO, "maybe": MAYBE, None: MAYBE}
ANNOTATE_HINT = "annotate it with python -m mitigations crayon annotate"


@dataclass
class Annotations:
    """One annotation session: what is judged (``items``: image positions for maps, patches
    ``{"image", "cell", "neurons"}`` for neurons), for which model and data, and the answers."""

    kind: str
    attribute: str
    target: str
    model: dict[str, str]
    data: str
    n_images: int
    items: list[Any]
    question: str
    annotator: str = "human (annotation page)"
    answers: list[str | None] = field(default_factory=list)
    history: list[int] = field(default_factory=list)
    """Item positions in the order they were answered (undo takes the last one back)."""

    def __post_init__(self) -> None:
        if not self.answers:
            self.answers = [None] * len(self.items)

    def answer(self, position: int, value: str) -> None:
        """Record ``value`` for item ``position`` (answering again replaces the earlier answer)."""
        if value not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {value!r}")
        if not 0 <= position < len(self.items):
            raise ValueError(f"item {position} is outside 0..{len(self.items) - 1}")
        self.answers[position] = value
        self.history = [p for p in self.history if p != position] + [position]

    def undo(self) -> int | None:
        """Take back the last answer; returns its item position (None when nothing is answered)."""
        if not self.history:
            return None
        position = self.history.pop()
        self.answers[position] = None
        return position

    def next_open(self) -> int:
        """The first item without an answer (``len(items)`` when all are answered)."""
        return next((i for i, a in enumerate(self.answers) if a is None), len(self.items))

    def counts(self) -> dict[str, int]:
        """How many items got each answer, and how many are still open."""
        out = {a: self.answers.count(a) for a in ANSWERS}
        return out | {"open": self.answers.count(None)}

    def codes_for(self, items: Sequence[Any]) -> Tensor:
        """Answer codes of ``items`` in that order (YES, NO, MAYBE; an open item counts as
        maybe); each must be one of the session's items."""
        by_key = {item_key(i): CODES[a] for i, a in zip(self.items, self.answers, strict=True)}
        return torch.tensor([by_key[item_key(i)] for i in items], dtype=torch.int8)

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON content."""
        return {
            "format": FORMAT, "kind": self.kind, "attribute": self.attribute,
            "target": self.target, "model": self.model, "data": self.data,
            "n_images": self.n_images, "annotator": self.annotator, "question": self.question,
            "counts": self.counts(), "items": self.items, "answers": self.answers,
            "history": self.history,
        }  # fmt: skip

    def save(self, path: Path) -> None:
        """Write the whole session atomically (temp file + rename): a kill never leaves half."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def load(path: Path) -> Annotations:
    """Read an annotation file; a clear error for a file that is not one."""
    data = files.read_bytes(path, "answers", "annotation file", ANNOTATE_HINT)
    try:
        raw = json.loads(data)
    except ValueError as exc:  # not UTF-8, or not JSON
        raise BiascheckError(
            f"annotation file {path} cannot be read ({type(exc).__name__}); {ANNOTATE_HINT}"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("kind") not in KINDS:
        raise BiascheckError(f"{path} is not a Crayon annotation file; {ANNOTATE_HINT}")
    fields = ("kind", "attribute", "target", "model", "data", "n_images", "items", "question")
    try:
        session = Annotations(
            **{k: raw[k] for k in fields},
            annotator=raw.get("annotator", "unknown"),
            answers=list(raw["answers"]),
            history=[int(p) for p in raw.get("history", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BiascheckError(f"annotation file {path} lacks {exc}; {ANNOTATE_HINT}") from None
    if len(session.answers) != len(session.items) or any(
        a not in (*ANSWERS, None) for a in session.answers
    ):
        raise BiascheckError(
            f"annotation file {path} needs one answer (yes, no, maybe or null) per item; "
            f"{ANNOTATE_HINT}"
        )
    return session


def check_matches(
    session: Annotations, path: Path, expected: Mapping[str, Any], items: Sequence[Any]
) -> None:
    """Refuse annotations made for another model, data, attribute, target or set of items: the
    answers judge maps or patches that only the same model on the same data reproduces."""
    for key, value in expected.items():
        if getattr(session, key) != value:
            raise BiascheckError(
                f"annotation file {path} was made with {key} {getattr(session, key)!r}, this run "
                f"has {value!r}; rerun with the same {key} or {ANNOTATE_HINT}"
            )
    if sorted(map(item_key, session.items)) != sorted(map(item_key, items)):
        raise BiascheckError(
            f"annotation file {path} judges other {session.kind} than this model shows on this "
            f"data; {ANNOTATE_HINT}"
        )


def item_key(item: Any) -> str:
    """A hashable, order-independent form of one item (an image position or a patch dict)."""
    return json.dumps(item, sort_keys=True)


def simulate(scores: Tensor, yes_at: float, no_at: float) -> Tensor:
    """The mask-based annotator's codes: YES where ``score >= yes_at``, NO where
    ``score <= no_at``, else MAYBE (a person unsure; ignored by the losses)."""
    if not no_at < yes_at:
        raise BiascheckError(
            f"simulated annotator: the 'no' threshold {no_at} must lie below the 'yes' "
            f"threshold {yes_at}"
        )
    codes = torch.full(scores.shape, MAYBE, dtype=torch.int8)
    codes[scores >= yes_at] = YES
    codes[scores <= no_at] = NO
    return codes


def neuron_pruned(slot_codes: Tensor) -> Tensor:
    """Channels ``[C]`` to prune: those where more than half of the patches ``[C, k]`` were
    judged irrelevant (the paper's majority; maybe and open count against pruning)."""
    return (slot_codes == NO).sum(1) * 2 > slot_codes.shape[1]
