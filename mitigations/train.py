"""The training loop every recipe shares: CUDA with AMP when present, data parallel under torchrun,
tqdm progress, seeded batch order, atomic resumable checkpoints.

The maths does not depend on how a step is split: each step takes one global batch (a seeded
permutation per epoch), every process takes ``batch[rank::world]`` in micro-batches, the per-image
losses are summed and divided by the global batch size, and gradients are summed over processes
before the optimiser step. A fine-tune keeps batch norm in eval mode (frozen statistics), so one
process or several, one micro-batch or many, give the same weights within float rounding.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mitigations.recipe import Defaults, Setup
from pytest_biascheck import files
from pytest_biascheck.atomic import atomic_open
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import ModelSpec

RESUME_FORMAT = "mitigations-resume/1"


@dataclass(frozen=True)
class TrainConfig(Defaults):
    """Optimiser, schedule and batching of one run: the paper's settings a recipe declares as
    ``Defaults`` (overridden by the options), plus the loop's own."""

    max_steps: int | None = None
    micro_batch: int | None = None
    scheduler: str = "constant"
    seed: int = 0
    amp: str = "auto"
    checkpoint_every: int = 50
    workers: int = 0


@dataclass(frozen=True)
class Trained:
    """What a finished run reports: its steps in all, the images this session trained on and the
    wall time it took (less after a resume), and the last step's losses."""

    steps: int
    images: int
    seconds: float
    losses: dict[str, float]

    @property
    def images_per_second(self) -> float:
        """Training throughput of this session."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def global_batches(n: int, config: TrainConfig) -> list[np.ndarray]:
    """The positions (into the training subset) of every step's global batch: epoch ``e`` is a
    permutation seeded by ``(seed, e)``, cut into ``batch_size`` pieces (the last may be short)."""
    if n < 1:
        raise BiascheckError("the training set is empty; choose data or options that keep images")
    batches: list[np.ndarray] = []
    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        batches.extend(np.array_split(order, range(config.batch_size, n, config.batch_size)))
        if config.max_steps is not None and len(batches) >= config.max_steps:
            return batches[: config.max_steps]
    return batches


def fingerprint(facts: Mapping[str, Any]) -> str:
    """A stable digest of everything that shapes the weights, so --resume refuses other settings."""
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the GPU has it, else fp16 (with loss scaling); None on CPU/off."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def parameter_groups(
    named: Sequence[tuple[str, nn.Parameter]], lr: float, factors: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Optimiser groups of the trainable parameters: ``lr`` times the factor of the longest name
    prefix that matches whole dotted parts (``fc`` matches ``fc.weight``, not ``fc2.weight``)."""
    groups: dict[float, list[nn.Parameter]] = {}
    used: set[str] = set()
    for name, p in named:
        matches = [k for k in factors if name == k or name.startswith(f"{k}.")]
        used.update(matches)
        if p.requires_grad:
            factor = factors[max(matches, key=len)] if matches else 1.0
            groups.setdefault(factor, []).append(p)
    unused = sorted(set(factors) - used)
    if unused:
        raise ValueError(f"lr_factors name no parameter: {', '.join(unused)}")
    return [{"params": params, "lr": lr * factor} for factor, params in groups.items()]


def make_optimizer(
    config: TrainConfig, params: Sequence[nn.Parameter] | Sequence[dict[str, Any]]
) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, as the recipe's paper trained (``params``: parameters or
    parameter groups with their own ``lr``)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")


def make_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant learning rate (the papers') or cosine decay to zero over the run."""
    if config.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        )
    raise ValueError(f"scheduler must be 'constant' or 'cosine', got {config.scheduler!r}")


def reinitialise(module: nn.Module, seed: int) -> None:
    """Fresh weights for every layer that can reset itself, drawn from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
            if hasattr(layer, "reset_running_stats"):
                layer.reset_running_stats()


def train(
    module: nn.Module,
    spec: ModelSpec,
    data: BiasDataset,
    setup: Setup,
    config: TrainConfig,
    device: torch.device,
    *,
    resume_path: Path,
    resume: bool = False,
    run_id: str = "",
    progress: bool = False,
) -> Trained:
    """Train ``module`` in place with ``setup.loss`` and return what the run did; every
    ``checkpoint_every`` steps the full state goes to ``resume_path`` (atomically, rank 0), and
    ``resume=True`` continues from there when the file exists (same ``run_id`` required)."""
    rank, world = _rank_world()
    module.to(device)
    if setup.reinitialise:
        reinitialise(module, config.seed)
    module.train(setup.reinitialise)
    named = list(module.named_parameters())
    if setup.extra is not None:
        setup.extra.to(device).train()
        named += list(setup.extra.named_parameters(prefix="extra"))
    params = [p for _, p in named if p.requires_grad]
    indices = np.arange(len(data)) if setup.indices is None else np.asarray(setup.indices)
    batches = global_batches(len(indices), config)
    optimizer = make_optimizer(config, parameter_groups(named, config.lr, setup.lr_factors))
    scheduler = make_scheduler(config, optimizer, len(batches))
    dtype = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    torch.manual_seed(config.seed)
    start = 0
    if resume and resume_path.exists():
        start = _load_state(resume_path, run_id, module, setup.extra, optimizer, scheduler, scaler)
    pieces = [_micro_batches(indices[b][rank::world], config.micro_batch) for b in batches]
    loader = DataLoader(
        data,
        batch_sampler=[chunk for step in pieces[start:] for chunk in step],
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
    chunks = iter(loader)
    losses: dict[str, float] = {}
    seen, began = 0, time.perf_counter()
    bar = tqdm(
        total=len(batches),
        initial=start,
        desc="train",
        unit="step",
        disable=not progress,
        mininterval=1 if sys.stderr.isatty() else 30,
    )
    for step in range(start, len(batches)):
        tick = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for _ in pieces[step]:
            batch = {k: v.to(device, non_blocking=True) for k, v in next(chunks).items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                parts = setup.loss(module, spec.normalize(batch["image"]), batch)
            scaler.scale(parts["loss"].float().sum() / len(batches[step])).backward()
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach().float().sum())
        _sum_gradients(params)
        if config.clip_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses = _mean_over_processes(sums, len(batches[step]))
        if not math.isfinite(losses.get("loss", 0.0)):
            raise BiascheckError(
                f"training diverged at step {step + 1} (loss {losses['loss']}); nothing was "
                "saved: lower --lr or set --clip-grad-norm"
            )
        seen += len(batches[step])
        bar.set_postfix(
            {k: f"{v:.4f}" for k, v in losses.items()}
            | {"img/s": f"{len(batches[step]) / (time.perf_counter() - tick):.0f}"}
        )
        bar.update()
        done = step + 1
        if done % config.checkpoint_every == 0 and done < len(batches):
            if rank == 0:
                _save_state(
                    resume_path, run_id, done, module, setup.extra, optimizer, scheduler, scaler
                )
            if world > 1:
                dist.barrier()
    bar.close()
    module.eval()
    if setup.extra is not None:
        setup.extra.eval()
    return Trained(len(batches), seen, time.perf_counter() - began, losses)


def config_facts(config: TrainConfig) -> dict[str, Any]:
    """The settings that shape the weights (not workers or checkpoint frequency)."""
    facts = asdict(config)
    for key in ("workers", "checkpoint_every", "micro_batch"):
        facts.pop(key)
    return facts


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _micro_batches(share: np.ndarray, size: int | None) -> list[list[int]]:
    """This process's part of a global batch, in chunks of at most ``size`` (no empty chunk)."""
    step = len(share) if size is None else size
    return [share[i : i + step].tolist() for i in range(0, len(share), max(step, 1))]


def _sum_gradients(params: Sequence[nn.Parameter]) -> None:
    """Give every trainable parameter a gradient (zero if unused, so one process and several
    step the same way) and sum them over processes in one flat all-reduce."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if _rank_world()[1] == 1:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad.copy_(g.view_as(p))


def _mean_over_processes(sums: dict[str, float], n: int) -> dict[str, float]:
    """Per-image means of the logged losses over the whole global batch (a process whose share
    of a short last batch is empty contributes nothing)."""
    shards = [sums]
    if _rank_world()[1] > 1:
        shards = [{}] * dist.get_world_size()
        dist.all_gather_object(shards, sums)
    names = sorted({k for shard in shards for k in shard})
    return {k: sum(shard.get(k, 0.0) for shard in shards) / n for k in names}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _save_state(
    path: Path,
    run_id: str,
    step: int,
    module: nn.Module,
    extra: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    """Everything needed to continue exactly: weights (and the extra modules'), optimiser,
    schedule, loss scale, RNGs."""
    payload = {
        "format": RESUME_FORMAT,
        "run_id": run_id,
        "step": step,
        "model": module.state_dict(),
        "extra": None if extra is None else extra.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": _rng_state(),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)


def _load_state(
    path: Path,
    run_id: str,
    module: nn.Module,
    extra: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> int:
    """Restore a state written by ``_save_state`` and return the step to continue from."""
    files.check_file(path, "model", "resume file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file makes torch.load raise many types
        raise BiascheckError(
            f"resume file {path} cannot be read ({type(exc).__name__}); delete it to start over"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT:
        raise BiascheckError(f"{path} is not a mitigations resume file; delete it to start over")
    if payload["run_id"] != run_id:
        raise BiascheckError(
            f"resume file {path} was written by a run with other settings or another model; "
            "rerun with the same options, or delete it to start over"
        )
    module.load_state_dict(payload["model"])
    if extra is not None:
        extra.load_state_dict(payload["extra"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng"]["torch"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return int(payload["step"])
