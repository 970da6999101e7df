"""Safe model files: the ``biascheck/1`` checkpoint format, the architecture registry and ModelSpec.

A checkpoint is a plain dict written by ``torch.save`` and read with ``torch.load(weights_only=True)``,
so opening one never runs code. Pickled ``nn.Module`` files load only with an explicit trust flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import io
import json
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_biascheck.atomic import atomic_open
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.layers import candidate_layers, choose_target_layer
from pytest_biascheck.nets import small_resnet, small_vit

FORMAT = "biascheck/1"
HEADS = ("multilabel", "multiclass")
TORCHSCRIPT_SPEC = "biascheck.json"

Factory = Callable[..., nn.Module]

_ARCHITECTURES: dict[str, Factory] = {
    "biascheck.small_resnet": small_resnet,
    "biascheck.small_vit": small_vit,
}


@dataclass(frozen=True)
class ModelSpec:
    """What a model predicts and how to feed it: the ``task`` entry of a checkpoint."""

    attributes: tuple[str, ...]
    input_size: tuple[int, int, int] = (3, 64, 64)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    target_layer: str | None = None
    head: str = "multilabel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", tuple(self.attributes))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not self.attributes or not all(isinstance(a, str) and a for a in self.attributes):
            raise ValueError("task.attributes must be a non-empty list of names")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError("task.attributes has duplicate names")
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ValueError(f"task.input_size must be [C, H, W], got {list(self.input_size)}")
        channels = self.input_size[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"task.mean and task.std need {channels} values (one per channel)")
        if min(self.std) <= 0:
            raise ValueError("task.std values must be positive")
        if self.head not in HEADS:
            raise ValueError(f"task.head must be one of {HEADS}, got {self.head!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form stored in checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Build from a checkpoint's ``task`` dict, rejecting unknown keys."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown task key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Apply the model's mean/std to ``[B, C, H, W]`` images in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std


@dataclass
class LoadedModel:
    """A model ready to evaluate (eval mode), with the facts the checks and reports need."""

    module: nn.Module
    spec: ModelSpec
    path: Path
    sha256: str
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Short name used in item ids and reports (the file stem)."""
        return self.path.stem


def register_architecture(name: str, factory: Factory) -> None:
    """Make ``name`` loadable: ``factory(num_outputs, **arch_kwargs)`` must return an ``nn.Module``."""
    _ARCHITECTURES[name] = factory


def architecture_names() -> list[str]:
    """Every registered name plus torchvision's classification models (as ``torchvision.<name>``)."""
    import torchvision

    tv = [f"torchvision.{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    return sorted(_ARCHITECTURES) + tv


def resolve_architecture(
    arch: str, extra: Mapping[str, Factory] | None = None, allow_imports: Iterable[str] = ()
) -> Factory:
    """Find the factory for ``arch``: plugin/registry names, torchvision models, or an allowed import path."""
    registry = {**_ARCHITECTURES, **(extra or {})}
    if arch in registry:
        return registry[arch]
    import torchvision

    tv_name = arch.removeprefix("torchvision.")
    if tv_name in torchvision.models.list_models(module=torchvision.models):

        def build_torchvision(num_outputs: int, **kwargs: Any) -> nn.Module:
            return torchvision.models.get_model(
                tv_name, weights=None, num_classes=num_outputs, **kwargs
            )

        return build_torchvision
    if ":" in arch:
        if arch not in set(allow_imports):
            raise BiascheckError(
                f"architecture {arch!r} is an import path; allow it with "
                f'[tool.biascheck] allow_imports = ["{arch}"] if you trust that code'
            )
        module_name, _, attr = arch.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise BiascheckError(f"cannot import architecture {arch!r}: {exc}") from None
    close = difflib.get_close_matches(arch, architecture_names() + list(registry), n=3)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else "; register it with the biascheck_architectures hook"
    )
    raise BiascheckError(f"unknown architecture {arch!r}{hint}")


def save_checkpoint(
    module: nn.Module,
    spec: ModelSpec,
    path: str | Path,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``module`` in the ``biascheck/1`` format, atomically (temp file + rename)."""
    path = Path(path)
    state_dict = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    payload = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "state_dict": state_dict,
        "task": spec.to_dict(),
        "provenance": json.loads(json.dumps(dict(provenance or {}))),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def save_torchscript(module: nn.Module, spec: ModelSpec, path: str | Path) -> Path:
    """Script ``module`` and store the spec as an extra file, so the result loads without Python code."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still supported
        scripted = torch.jit.script(module.eval())
        with atomic_open(path, "wb") as fh:
            torch.jit.save(
                scripted, fh, _extra_files={TORCHSCRIPT_SPEC: json.dumps(spec.to_dict())}
            )
    return path


def load_checkpoint(
    path: str | Path,
    *,
    trust_pickle: bool = False,
    allow_imports: Iterable[str] = (),
    architectures: Mapping[str, Factory] | None = None,
    spec_overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a checkpoint, a TorchScript file or (trusted only) a pickled module, fully validated.

    A spec without ``target_layer`` gets the automatic one (``layers`` module docstring; not for
    TorchScript, whose layers cannot be hooked). Every refusal is a ``BiascheckError`` with one line
    naming the file and what to do instead.
    """
    path = Path(path)
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if _is_torchscript(data):
        module, task = _load_torchscript(path, data)
        arch, arch_kwargs, provenance = "torchscript", {}, {}
    else:
        payload = _unpickle(path, data, trust_pickle)
        if isinstance(payload, nn.Module):
            module, task, arch, arch_kwargs, provenance = payload, {}, "pickled", {}, {}
        else:
            payload = _check_payload(path, payload)
            arch, arch_kwargs = payload["arch"], dict(payload.get("arch_kwargs", {}))
            task, provenance = payload["task"], dict(payload.get("provenance", {}))
            module = None
    spec = _make_spec(path, {**task, **dict(spec_overrides or {})})
    if module is None:
        factory = resolve_architecture(arch, architectures, allow_imports)
        try:
            module = factory(len(spec.attributes), **arch_kwargs)
        except TypeError as exc:
            raise BiascheckError(
                f"{path}: arch_kwargs {arch_kwargs} do not fit {arch!r}: {exc}"
            ) from None
        _load_state(path, module, payload["state_dict"], arch)
    module.eval()
    _check_outputs(path, module, spec)
    _check_target_layer(path, module, spec)
    spec = _with_target_layer(path, module, spec)
    return LoadedModel(module, spec, path, digest, arch, arch_kwargs, provenance)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise BiascheckError(f"model file {path} does not exist; check the path")
    if path.is_dir():
        raise BiascheckError(f"model path {path} is a folder; give the checkpoint file inside it")
    data = path.read_bytes()
    if not data:
        raise BiascheckError(
            f"model file {path} is empty; re-save it with pytest_biascheck.save_checkpoint()"
        )
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise BiascheckError(
            f"model file {path} is not a torch checkpoint (truncated, or another format); "
            "re-save it with pytest_biascheck.save_checkpoint()"
        )
    return data


def _is_torchscript(data: bytes) -> bool:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return any(name.split("/", 1)[-1].startswith("code/") for name in zf.namelist())


def _load_torchscript(path: Path, data: bytes) -> tuple[nn.Module, dict]:
    extra = {TORCHSCRIPT_SPEC: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    if not extra[TORCHSCRIPT_SPEC]:
        raise BiascheckError(
            f"TorchScript file {path} has no {TORCHSCRIPT_SPEC} extra file with the task; "
            "save it with pytest_biascheck.model.save_torchscript()"
        )
    return module, json.loads(extra[TORCHSCRIPT_SPEC])


def _unpickle(path: Path, data: bytes, trust_pickle: bool) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError:
        raise BiascheckError(
            f"model file {path} holds pickled Python objects that could run code and was not loaded; "
            "re-save it with pytest_biascheck.save_checkpoint(), or pass --biascheck-trust-pickle "
            "only if you trust its source"
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BiascheckError(
            f"model file {path} could not be read ({first}); it may be truncated: copy it again"
        ) from None


def _check_payload(path: Path, payload: Any) -> dict:
    if not isinstance(payload, dict) or "format" not in payload:
        kind = "a bare state_dict" if isinstance(payload, dict) else f"a {type(payload).__name__}"
        raise BiascheckError(
            f"model file {path} is {kind}, not a biascheck checkpoint; "
            "save it with pytest_biascheck.save_checkpoint(model, spec, path, arch)"
        )
    if payload["format"] != FORMAT:
        raise BiascheckError(
            f"model file {path} has format {payload['format']!r}; this version reads {FORMAT!r}"
        )
    missing = [k for k in ("arch", "state_dict", "task") if k not in payload]
    if missing:
        raise BiascheckError(
            f"checkpoint {path} lacks {', '.join(missing)}; re-save it with save_checkpoint()"
        )
    return payload


def _make_spec(path: Path, task: Mapping[str, Any]) -> ModelSpec:
    if "attributes" not in task:
        raise BiascheckError(
            f"model {path} does not say what it predicts; set attributes under "
            f"[tool.biascheck.models.{path.stem}] or re-save it with save_checkpoint()"
        )
    try:
        return ModelSpec.from_dict(task)
    except (TypeError, ValueError) as exc:
        raise BiascheckError(f"model {path}: {exc}") from None


def _load_state(
    path: Path, module: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str
) -> None:
    bad = [
        k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        raise BiascheckError(
            f"model {path} has NaN/Inf weights in {_first(bad)}; retrain or restore an earlier checkpoint"
        )
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = [
        f"{label} {_first(items)}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape file vs arch", shapes),
        )
        if items
    ]
    if problems:
        raise BiascheckError(
            f"weights in {path} do not fit architecture {arch!r}: {'; '.join(problems)}; "
            "check arch/arch_kwargs or the number of attributes"
        )
    module.load_state_dict(state_dict)


def _check_outputs(path: Path, module: nn.Module, spec: ModelSpec) -> None:
    with torch.no_grad():
        out = module(torch.zeros(1, *spec.input_size))
    if out.ndim != 2 or out.shape[1] != len(spec.attributes):
        raise BiascheckError(
            f"model {path} outputs shape {list(out.shape)} but its task names {len(spec.attributes)} "
            "attributes; make task.attributes match the head's outputs"
        )


def _check_target_layer(path: Path, module: nn.Module, spec: ModelSpec) -> None:
    if spec.target_layer is None:
        return
    names = [n for n, _ in module.named_modules() if n]
    if spec.target_layer not in names:
        close = difflib.get_close_matches(spec.target_layer, names, n=3)
        raise BiascheckError(
            f"model {path}: target layer {spec.target_layer!r} does not exist; "
            f"close names: {', '.join(close) or ', '.join(names[-3:])}"
        )


def _with_target_layer(path: Path, module: nn.Module, spec: ModelSpec) -> ModelSpec:
    """The spec with its target layer chosen by the automatic rule when it names none."""
    if spec.target_layer is not None or isinstance(module, torch.jit.ScriptModule):
        return spec
    layer = choose_target_layer(module, candidate_layers(module, spec.input_size))
    if layer is None:
        raise BiascheckError(
            f"model {path}: no layer gives a feature map that the outputs depend on (an all-zero "
            "head, as in an untrained torchvision ViT, depends on none); set task.target_layer"
        )
    return dataclasses.replace(spec, target_layer=layer)


def _first(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
