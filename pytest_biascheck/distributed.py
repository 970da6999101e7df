"""Sharded evaluation under torchrun: which images each process takes, and how the shards' passes
become one full pass on every process (accumulators all-reduced, columns and map sums gathered)."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from pytest_biascheck.evaluate import Pass, resolve_device


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Image indices of process ``rank`` out of ``world``: ``rank::world``, so every image is taken
    exactly once (no padding: metrics refuse repeated images and sums would count them twice)."""
    if world < 1 or not 0 <= rank < world or n < 0:
        raise ValueError(
            f"shard_indices: need n >= 0 and 0 <= rank < world, got {n=} {rank=} {world=}"
        )
    return list(range(rank, n, world))


@contextlib.contextmanager
def process_group(device: str | None = None) -> Iterator[tuple[int, int, torch.device]]:
    """(rank, world size, device) of this process. Under torchrun (``WORLD_SIZE`` set) a process
    group is opened for the block: nccl with ``cuda:LOCAL_RANK`` when the device is CUDA, else gloo."""
    target = resolve_device(device)
    if "WORLD_SIZE" not in os.environ:
        yield 0, 1, target
        return
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), target
    finally:
        dist.destroy_process_group()


def gather_pass(state: Pass, group: dist.ProcessGroup | None = None) -> Pass:
    """The full pass from every process's shard, on every process: accumulators are all-reduced in
    place, per-image columns concatenated, map sums added. No-op without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return state
    _align_accumulators(state.accumulators, group)
    for name in sorted(state.accumulators):
        state.accumulators[name].all_reduce(group)
    columns: dict[str, list[Any]] = {}
    for shard in _all_gather(state.columns, group):
        for key, parts in shard.items():
            columns.setdefault(key, []).extend(parts)
    return Pass(state.accumulators, columns, _merge_sums(_all_gather(state.sums, group)))


def _align_accumulators(accumulators: dict[str, Any], group: dist.ProcessGroup | None) -> None:
    """Give every process the same accumulators: one made lazily on the first batch (the leakage
    probe) is missing where a shard had no images; it gets an empty copy from a process that has it."""
    names = [set(n) for n in _all_gather(sorted(accumulators), group)]
    everywhere = set.intersection(*names)
    missing = set.union(*names) - everywhere
    if not missing:
        return
    offers = {k: _empty_copy(accumulators[k]) for k in missing & set(accumulators)}
    for offer in _all_gather(offers, group):
        for key, empty in offer.items():
            accumulators.setdefault(key, empty)


def _empty_copy(accumulator: Any) -> Any:
    empty = copy.deepcopy(accumulator)
    empty.reset()
    return empty


def _merge_sums(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Add the running sums of every shard (in rank order, so every process gets the same bits)."""
    keys = list(dict.fromkeys(k for shard in shards for k in shard))
    merged = {}
    for key in keys:
        parts = [shard[key] for shard in shards if key in shard]
        merged[key] = sum(parts[1:], parts[0])
    return merged


def _all_gather(obj: Any, group: dist.ProcessGroup | None) -> list[Any]:
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, obj, group)
    return gathered
