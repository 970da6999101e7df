"""The accumulator base class: states declared once, so merging, saving and distributed reduction
follow from each state's reduce rule instead of being re-implemented by every metric."""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from pytest_biascheck.errors import BiascheckError

Reduce = Literal["sum", "max", "min", "cat"]
_REDUCES = ("sum", "max", "min", "cat")
_DIST_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


class Accumulator:
    """A metric that is updated batch by batch and computed once.

    Subclasses declare their states with :meth:`add_state` in ``__init__``, fold each batch in with
    :meth:`accumulate` in ``update``, and read states with :meth:`state` in ``compute``. States live on
    the CPU whatever device the batches come from. "sum" states are float64, so results do not depend
    on batch size or sharding; "cat" states keep one row per image and are re-ordered by the image
    index in ``compute``, so merge order never changes a result.
    """

    def __init__(self) -> None:
        self._defaults: dict[str, Tensor] = {}
        self._reduces: dict[str, str] = {}
        self._states: dict[str, Tensor | list[Tensor]] = {}

    def add_state(self, name: str, default: Tensor, reduce: Reduce) -> None:
        """Declare a state: its initial value (for "cat", an empty ``[0, ...]`` tensor) and reduce rule."""
        if reduce not in _REDUCES:
            raise ValueError(
                f"add_state({name!r}): reduce must be one of {_REDUCES}, not {reduce!r}"
            )
        if reduce == "sum" and default.dtype != torch.float64:
            raise ValueError(
                f"add_state({name!r}): sum states must be float64, not {default.dtype}"
            )
        if reduce == "cat" and (default.ndim == 0 or default.shape[0] != 0):
            raise ValueError(
                f"add_state({name!r}): a cat state's default must be empty along dim 0"
            )
        self._defaults[name] = default.detach().to("cpu").clone()
        self._reduces[name] = reduce
        self._states[name] = self._initial(name)

    def _initial(self, name: str) -> Tensor | list[Tensor]:
        return [] if self._reduces[name] == "cat" else self._defaults[name].clone()

    def accumulate(self, name: str, value: Tensor) -> None:
        """Fold ``value`` into state ``name`` by its rule: add, elementwise max/min, or append rows."""
        default, rule = self._defaults[name], self._reduces[name]
        value = value.detach().to(device=default.device, dtype=default.dtype)
        rows_ok = rule != "cat" or value.ndim == default.ndim
        if not rows_ok or _batch_shape(value, rule) != _batch_shape(default, rule):
            raise ValueError(
                f"{type(self).__name__}.{name}: value of shape {tuple(value.shape)} does not match "
                f"the declared state shape {tuple(default.shape)}"
            )
        if rule == "cat":
            self._states[name].append(value)
        elif rule == "sum":
            self._states[name] = self._states[name] + value
        elif rule == "max":
            self._states[name] = torch.maximum(self._states[name], value)
        else:
            self._states[name] = torch.minimum(self._states[name], value)

    def state(self, name: str) -> Tensor:
        """Current value of a state; "cat" states come back as one tensor in arrival order."""
        value = self._states[name]
        if isinstance(value, Tensor):
            return value
        if not value:
            return self._defaults[name].clone()
        joined = torch.cat(value)
        self._states[name] = [joined]
        return joined

    def image_order(self) -> Tensor:
        """Permutation sorting the per-image ("cat") states by the "index" state, so results never
        depend on arrival, merge or shard order; an image seen twice is an error."""
        index = self.state("index")
        if index.numel() == 0:
            raise ValueError(f"{type(self).__name__}.compute() called before any update")
        if torch.unique(index).numel() != index.numel():
            raise BiascheckError(
                f"{type(self).__name__}: an image index was added twice (a shard merged twice, or a "
                "sampler that pads shards with repeats); evaluate each image exactly once"
            )
        return torch.argsort(index, stable=True)

    def update(self, *args, **kwargs) -> None:
        """Fold one batch in (implemented by each metric)."""
        raise NotImplementedError

    def compute(self) -> object:
        """The metric's result from the states seen so far (implemented by each metric)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything seen: every state back to its default."""
        for name in self._defaults:
            self._states[name] = self._initial(name)

    def merge(self, other: Accumulator) -> Accumulator:
        """Fold another accumulator of the same kind and configuration into this one; returns self."""
        self._check_same_kind(other)
        for name in self._defaults:
            self.accumulate(name, other.state(name))
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors (copies), so a shard's state can be saved with ``torch.save`` and merged later."""
        return {name: self.state(name).clone() for name in self._defaults}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace every state with the saved one; names and shapes must match this configuration."""
        kind = type(self).__name__
        if set(state) != set(self._defaults):
            missing = sorted(set(self._defaults) - set(state))
            extra = sorted(set(state) - set(self._defaults))
            raise BiascheckError(
                f"{kind} state does not match this metric (missing {missing}, unexpected {extra}); "
                f"save it with {kind}.state_dict() from an accumulator built with the same arguments"
            )
        self.reset()
        for name in self._defaults:
            try:
                self.accumulate(name, state[name])
            except ValueError as error:
                raise BiascheckError(
                    f"{kind} state {name!r} has shape {tuple(state[name].shape)}, not the declared "
                    f"{tuple(self._defaults[name].shape)}; build the {kind} with the arguments "
                    "the state was saved with"
                ) from error

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        """Reduce every state over the processes of ``group`` (no-op unless torch.distributed is
        initialised); afterwards every process holds the global state. Call it once, before compute."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        comm = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend(group) == "nccl"
            else torch.device("cpu")
        )
        for name, rule in self._reduces.items():
            local = self.state(name)
            if rule == "cat":
                gathered = _all_gather_rows(local, comm, group)
                self._states[name] = [part.to(local.dtype).cpu() for part in gathered]
            else:
                buffer = local.to(comm)
                dist.all_reduce(buffer, op=getattr(dist.ReduceOp, _DIST_OPS[rule]), group=group)
                self._states[name] = buffer.cpu()

    def _check_same_kind(self, other: Accumulator) -> None:
        if type(other) is not type(self):
            raise ValueError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if self._layout() != other._layout():
            raise ValueError(
                f"cannot merge {type(self).__name__} accumulators built with different arguments"
            )

    def _layout(self) -> dict[str, tuple]:
        return {n: (r, _batch_shape(self._defaults[n], r)) for n, r in self._reduces.items()}


def _batch_shape(tensor: Tensor, rule: str) -> tuple[int, ...]:
    """The shape a state's values must have: the whole shape, or all but the rows for "cat"."""
    return tuple(tensor.shape[1:] if rule == "cat" else tensor.shape)


def _all_gather_rows(local: Tensor, comm: torch.device, group: dist.ProcessGroup | None) -> list:
    """Gather a tensor whose first dimension differs between processes: pad to the longest, trim."""
    world = dist.get_world_size(group)
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=comm)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = int(max(s.item() for s in sizes))
    if longest == 0:
        return []
    wire = local.to(torch.uint8) if local.dtype == torch.bool else local
    padded = torch.zeros((longest, *local.shape[1:]), dtype=wire.dtype, device=comm)
    padded[: local.shape[0]] = wire.to(comm)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return [part[: int(s.item())] for part, s in zip(parts, sizes, strict=True)]
