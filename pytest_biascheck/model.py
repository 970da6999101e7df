"""Safe model files: the ``biascheck/1`` checkpoint format, the architecture registry and ModelSpec.

A checkpoint is a plain dict written by ``torch.save`` and read with ``torch.load(weights_only=True)``,
so opening one never runs code. Pickled ``nn.Module`` files load only with an explicit trust flag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib
import json
import math
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_biascheck import files
from pytest_biascheck.atomic import atomic_open
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.layers import candidate_layers, choose_target_layer
from pytest_biascheck.nets import small_resnet, small_vit

FORMAT = "biascheck/1"
#: ``LoadedModel.arch`` of a model handed over in Python: ``live:<module>.<class>``.
LIVE = "live:"
HEADS = ("multilabel", "multiclass")
TORCHSCRIPT_SPEC = "biascheck.json"
#: Most input channels a task may declare.
MAX_CHANNELS = 64
#: Bounds on ``arch_kwargs``: every number's magnitude, every list's length, the nesting depth.
#: Beyond them a file could make the architecture allocate any amount of memory.
MAX_ARCH_NUMBER = 2**16
MAX_ARCH_ITEMS = 1024
MAX_ARCH_DEPTH = 4

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
        if isinstance(self.attributes, str) or not isinstance(self.attributes, (list, tuple)):
            raise ValueError("task.attributes must be a non-empty list of names")
        object.__setattr__(self, "attributes", tuple(self.attributes))
        object.__setattr__(self, "input_size", _integers("task.input_size", self.input_size))
        object.__setattr__(self, "mean", _finite("task.mean", self.mean))
        object.__setattr__(self, "std", _finite("task.std", self.std))
        if not self.attributes or not all(isinstance(a, str) and a for a in self.attributes):
            raise ValueError("task.attributes must be a non-empty list of names")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError("task.attributes has duplicate names")
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ValueError(f"task.input_size must be [C, H, W], got {list(self.input_size)}")
        channels, height, width = self.input_size
        if channels > MAX_CHANNELS:
            raise ValueError(f"task.input_size has {channels} channels, more than {MAX_CHANNELS}")
        if height * width > files.limit("input_pixels"):
            raise ValueError(
                f"task.input_size {list(self.input_size)} has {height * width} pixels, over the "
                f"limit of {files.limit('input_pixels')}; fix it, or raise [tool.biascheck] "
                "limits.input_pixels"
            )
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"task.mean and task.std need {channels} values (one per channel)")
        if min(self.std) <= 0:
            raise ValueError("task.std values must be positive")
        if self.target_layer is not None and not isinstance(self.target_layer, str):
            raise ValueError(f"task.target_layer must be a layer name, got {self.target_layer!r}")
        if self.head not in HEADS:
            raise ValueError(f"task.head must be one of {HEADS}, got {self.head!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form stored in checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Build from a checkpoint's ``task`` dict, rejecting unknown keys."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(map(str, set(data) - known))
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

    @property
    def live(self) -> bool:
        """Whether the model was handed over in Python (:func:`live_model`), not read from a file."""
        return self.arch.startswith(LIVE)


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
    """Find the factory for ``arch``: plugin/registry names, torchvision models
    (``torchvision.<name>``), timm models (``timm.<name>``, with ``biascheck[timm]``), or an
    allowed import path ``module:factory`` (imported from the current folder too, as ``python -m``
    does)."""
    registry = {**_ARCHITECTURES, **(extra or {})}
    if arch in registry:
        return registry[arch]
    if arch.startswith("timm."):
        return _timm_factory(arch)
    import torchvision

    tv_name = arch.removeprefix("torchvision.")
    if tv_name in torchvision.models.list_models(module=torchvision.models):

        def build_torchvision(num_outputs: int, **kwargs: Any) -> nn.Module:
            kwargs = _without_num_classes(arch, num_outputs, kwargs)
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
            with _importable_from(Path.cwd()):
                return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise BiascheckError(
                f"cannot import architecture {arch!r} ({exc}); run from the folder that holds "
                f"{module_name.split('.')[0]}, or install it"
            ) from None
    close = difflib.get_close_matches(arch, architecture_names() + list(registry), n=3)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else "; use torchvision.<name>, timm.<name>, module:factory, or register it with the "
        "pytest_biascheck_architectures hook"
    )
    raise BiascheckError(f"unknown architecture {arch!r}{hint}")


def _timm_factory(arch: str) -> Factory:
    """The factory of timm model ``timm.<name>`` (random weights: nothing is downloaded)."""
    try:
        import timm
    except ImportError:
        raise BiascheckError(
            f"architecture {arch!r} needs timm; install it with pip install 'biascheck[timm]'"
        ) from None
    name = arch.removeprefix("timm.")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(f'timm.{c}' for c in close)}?" if close else ""
        raise BiascheckError(f"timm has no model {name!r}; {hint or 'see timm.list_models()'}")

    def build_timm(num_outputs: int, **kwargs: Any) -> nn.Module:
        kwargs = _without_num_classes(arch, num_outputs, kwargs)
        return timm.create_model(name, pretrained=False, num_classes=num_outputs, **kwargs)

    return build_timm


def _without_num_classes(arch: str, num_outputs: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` less a ``num_classes`` that repeats the number of attributes (biascheck sets it);
    one that contradicts it is an error."""
    if "num_classes" not in kwargs:
        return kwargs
    if kwargs["num_classes"] != num_outputs:
        raise BiascheckError(
            f"arch_kwargs num_classes={kwargs['num_classes']} of {arch!r} contradicts the task's "
            f"{num_outputs} attributes; leave num_classes out (it is set from the attributes)"
        )
    return {k: v for k, v in kwargs.items() if k != "num_classes"}


@contextlib.contextmanager
def _importable_from(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while inside (unless it is there already)."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            sys.path.remove(entry)


def save_checkpoint(
    module: nn.Module,
    spec: ModelSpec,
    path: str | Path,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    architectures: Mapping[str, Factory] | None = None,
) -> Path:
    """Write ``module`` in the ``biascheck/1`` format, atomically (temp file + rename): a
    ``torch.save`` file, or a safetensors file when ``path`` ends in ``.safetensors``.

    Nothing is written unless the weights fit ``arch`` built with ``arch_kwargs`` for the spec's
    attributes (names and shapes, the check every load makes); ``architectures`` are plugin
    architectures, and an import path ``arch`` is the caller's own code, so it is allowed.
    """
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
    check_payload(path, payload)
    factory = resolve_architecture(arch, architectures, allow_imports=[arch])
    with torch.random.fork_rng(devices=[]):
        blueprint = _build(path, factory, spec, arch, payload["arch_kwargs"], "meta")
    check_weights(path, blueprint.state_dict(), state_dict, arch)
    if path.suffix == ".safetensors":
        from pytest_biascheck.safetensors_io import save_checkpoint_file

        return save_checkpoint_file(payload, path)
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
    outputs_only: bool = False,
) -> LoadedModel:
    """Load a checkpoint or (trusted only) a pickled module, fully validated before any weight
    is allocated; a TorchScript file only with ``outputs_only=True``: its layers cannot be
    hooked, so it gives outputs but not the maps every evaluation takes.

    The file is opened through :mod:`pytest_biascheck.files` and memory-mapped. A spec without
    ``target_layer`` gets the automatic one (``layers`` module docstring). Every refusal is a
    ``BiascheckError`` with one line naming the file and what to do instead.
    """
    from pytest_biascheck.safetensors_io import is_safetensors, read_checkpoint

    path = Path(path)
    if is_safetensors(path):
        payload = read_checkpoint(path)
        loaded = model_from_payload(path, payload, architectures, allow_imports, spec_overrides)
    elif "code" in _zip_members(path):
        if not outputs_only:
            raise BiascheckError(
                f"model file {path} is a TorchScript archive (it has a code/ folder), whose "
                "layers cannot be hooked: biascheck could read its outputs but not the "
                "class-activation maps its evaluation takes; convert it into a checkpoint of the "
                f"architecture it was scripted from: python -m pytest_biascheck convert {path} "
                "--arch ARCH --out model.pt"
            )
        module, task = _load_torchscript(path)
        spec = _make_spec(path, {**task, **dict(spec_overrides or {})})
        loaded = LoadedModel(module, spec, path, "", "torchscript")
    else:
        payload = _unpickle(path, trust_pickle)
        if isinstance(payload, nn.Module):
            spec = _make_spec(path, dict(spec_overrides or {}))
            loaded = LoadedModel(payload, spec, path, "", "pickled")
        else:
            loaded = model_from_payload(path, payload, architectures, allow_imports, spec_overrides)
    loaded = ready(loaded)
    loaded.sha256 = files.sha256(path, "model", "model file")
    return loaded


def live_model(module: nn.Module, spec: ModelSpec | Mapping[str, Any], name: str) -> LoadedModel:
    """A model built in Python (a conftest, a notebook), checked as a file's is: the task, finite
    weights, one output per attribute, the target layer (the automatic one when the spec names
    none). Its ``sha256`` digests the weights and the task."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise BiascheckError(
            f"model name {name!r} must be letters, digits, '_', '.' or '-' (it names test items)"
        )
    path = Path(name)
    if not isinstance(module, nn.Module):
        raise BiascheckError(f"model {name} is a {type(module).__name__}, not a torch nn.Module")
    if not isinstance(spec, ModelSpec):
        try:
            spec = ModelSpec.from_dict(spec if isinstance(spec, Mapping) else {})
        except (TypeError, ValueError) as exc:
            raise BiascheckError(
                f"model {name}: its task is not a ModelSpec or a dict of one ({_first_line(exc)})"
            ) from None
    state = module.state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not _all_finite(v.detach())]
    if bad:
        raise BiascheckError(f"model {name} has NaN/Inf weights in {_first(bad)}")
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        digest.update(f"{key} {value.dtype} {list(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    kind = type(module)
    arch = f"{LIVE}{kind.__module__}.{kind.__qualname__}"
    return ready(LoadedModel(module, spec, path, digest.hexdigest(), arch))


def ready(loaded: LoadedModel) -> LoadedModel:
    """The model in eval mode once a dry forward pass gives one output per attribute and its
    target layer exists (the automatic one when the spec names none)."""
    loaded.module.eval()
    _check_outputs(loaded.path, loaded.module, loaded.spec)
    _check_target_layer(loaded.path, loaded.module, loaded.spec)
    loaded.spec = _with_target_layer(loaded.path, loaded.module, loaded.spec)
    return loaded


def model_from_payload(
    path: Path,
    payload: Any,
    architectures: Mapping[str, Factory] | None = None,
    allow_imports: Iterable[str] = (),
    spec_overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """The model a checkpoint's dict describes (without its file digest), validated before any
    weight is allocated: entries (:func:`check_payload`), the task, then the weights against a
    meta-device blueprint of the architecture (:func:`check_weights`)."""
    payload = check_payload(path, payload)
    arch, arch_kwargs = payload["arch"], payload["arch_kwargs"]
    spec = _make_spec(path, {**payload["task"], **dict(spec_overrides or {})})
    try:
        factory = resolve_architecture(arch, architectures, allow_imports)
    except BiascheckError as exc:
        raise BiascheckError(f"model {path}: {exc}") from None
    with torch.random.fork_rng(devices=[]):  # the blueprint leaves the RNG as it was
        blueprint = _build(path, factory, spec, arch, arch_kwargs, "meta")
    check_weights(path, blueprint.state_dict(), payload["state_dict"], arch)
    module = _build(path, factory, spec, arch, arch_kwargs, "cpu")
    module.load_state_dict(payload["state_dict"])
    return LoadedModel(module, spec, path, "", arch, arch_kwargs, payload["provenance"])


def _zip_members(path: Path) -> set[str]:
    """The folders just below the archive's root folder (``data``, ``code``...), read from the
    zip directory alone; anything but a zip, or a checkpoint with compressed members (a zip bomb
    would inflate them), is refused."""
    with files.open_file(path, "model", "model file") as fh:
        if fh.seek(0, 2) == 0:
            raise BiascheckError(
                f"model file {path} is empty; re-save it with pytest_biascheck.save_checkpoint()"
            )
        try:
            with zipfile.ZipFile(fh) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
            raise BiascheckError(
                f"model file {path} is not a torch checkpoint (truncated, or another format); "
                "re-save it with pytest_biascheck.save_checkpoint()"
            ) from None
    folders = {parts[1] for i in infos if len(parts := i.filename.split("/")) > 2}
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed and "code" not in folders:  # TorchScript compresses its code, never its tensors
        raise BiascheckError(
            f"model file {path} has compressed members ({packed[0]}), which torch.save never "
            "writes; re-save it with pytest_biascheck.save_checkpoint()"
        )
    return folders


def _load_torchscript(path: Path) -> tuple[nn.Module, dict]:
    extra = {TORCHSCRIPT_SPEC: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        task = json.loads(extra[TORCHSCRIPT_SPEC]) if extra[TORCHSCRIPT_SPEC] else None
    except Exception as exc:  # torch.jit.load raises many types on a damaged archive
        raise BiascheckError(
            f"model file {path} has a code/ folder but is no TorchScript archive that loads "
            f"({_first_line(exc)}); re-save it with pytest_biascheck.save_checkpoint()"
        ) from None
    if not isinstance(task, dict):
        raise BiascheckError(
            f"TorchScript file {path} has no {TORCHSCRIPT_SPEC} extra file with the task; "
            "save it with pytest_biascheck.model.save_torchscript()"
        )
    return module, task


def _unpickle(path: Path, trust_pickle: bool) -> Any:
    """The payload, its tensors memory-mapped from the file (the weights are not read yet)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
    except pickle.UnpicklingError:
        if trust_pickle:
            raise BiascheckError(
                f"model file {path} could not be unpickled; it may be truncated: copy it again"
            ) from None
        raise BiascheckError(
            f"model file {path} holds pickled Python objects that could run code and was not loaded; "
            "re-save it with pytest_biascheck.save_checkpoint(), or pass --biascheck-trust-pickle "
            "only if you trust its source"
        ) from None
    except Exception as exc:  # a damaged archive makes torch.load raise many types
        raise BiascheckError(
            f"model file {path} could not be read ({_first_line(exc)}); it may be truncated: "
            "copy it again"
        ) from None


def check_payload(path: Path, payload: Any) -> dict[str, Any]:
    """The checkpoint's entries, each of the right type: ``arch_kwargs`` within the bounds above,
    ``provenance`` plain JSON, ``state_dict`` names to tensors. Nothing is allocated."""
    if not isinstance(payload, dict) or "format" not in payload:
        kind = "a bare state_dict" if isinstance(payload, dict) else f"a {type(payload).__name__}"
        raise BiascheckError(
            f"model file {path} is {kind}, not a biascheck checkpoint; convert it: python -m "
            f"pytest_biascheck convert {path} --arch ARCH --attributes A,B --out model.pt"
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
    fix = "re-save it with save_checkpoint()"
    checked = {
        "arch": payload["arch"],
        "arch_kwargs": payload.get("arch_kwargs", {}),
        "task": payload["task"],
        "provenance": payload.get("provenance", {}),
        "state_dict": payload["state_dict"],
    }
    for key, kind in (("arch", str), ("arch_kwargs", dict), ("task", dict), ("provenance", dict)):
        if not isinstance(checked[key], kind):
            raise BiascheckError(
                f"checkpoint {path}: {key} is a {type(checked[key]).__name__}, not a "
                f"{kind.__name__}; {fix}"
            )
    problem = _arch_kwargs_problem(checked["arch_kwargs"], "arch_kwargs", 0)
    if problem:
        raise BiascheckError(f"checkpoint {path}: {problem}; fix arch_kwargs or {fix}")
    try:
        json.dumps(checked["provenance"], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BiascheckError(
            f"checkpoint {path}: provenance is not plain JSON ({exc}); {fix}"
        ) from None
    state = checked["state_dict"]
    bad = (
        [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        if isinstance(state, dict)
        else [type(state).__name__]
    )
    if bad:
        raise BiascheckError(
            f"checkpoint {path}: state_dict must map names to tensors, not {bad[0]!r}; {fix}"
        )
    return checked


def _arch_kwargs_problem(value: Any, where: str, depth: int) -> str | None:
    """What makes ``value`` unsafe to hand to an architecture factory, or None."""
    if value is None or isinstance(value, (bool, str)):
        return f"{where} is a string of {len(value)} characters" if len(str(value)) > 256 else None
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or abs(value) > MAX_ARCH_NUMBER:
            return f"{where} is {value}, outside [-{MAX_ARCH_NUMBER}, {MAX_ARCH_NUMBER}]"
        return None
    if not isinstance(value, (list, tuple, dict)):
        return f"{where} is a {type(value).__name__}; only numbers, strings, lists and tables"
    if depth >= MAX_ARCH_DEPTH or len(value) > MAX_ARCH_ITEMS:
        return f"{where} nests deeper than {MAX_ARCH_DEPTH} or holds over {MAX_ARCH_ITEMS} items"
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(value, dict) and not isinstance(key, str):
            return f"{where} has a key {key!r} that is not a string"
        problem = _arch_kwargs_problem(item, f"{where}.{key}", depth + 1)
        if problem:
            return problem
    return None


def check_weights(
    path: Path,
    expected: Mapping[str, torch.Tensor],
    state_dict: Mapping[str, torch.Tensor],
    arch: str,
) -> None:
    """Refuse weights that do not fit the architecture's ``expected`` state dict (names and
    shapes, read from a meta-device blueprint), that are not stored densely (a stride-0 view of
    size 2**40 takes a few bytes on disk), or that hold NaN/Inf. Only metadata is read until the
    values are scanned, in chunks of a flat view: no view is ever materialised."""
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
    overlapping = [k for k, v in state_dict.items() if not _dense(v.shape, v.stride())]
    if overlapping:
        raise BiascheckError(
            f"weights in {path} are not stored densely ({_first(overlapping)} has overlapping "
            "strides); re-save them with save_checkpoint()"
        )
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not _all_finite(v)]
    if bad:
        raise BiascheckError(
            f"model {path} has NaN/Inf weights in {_first(bad)}; retrain or restore an earlier checkpoint"
        )


def _dense(shape: Iterable[int], stride: Iterable[int]) -> bool:
    """Whether a tensor of this shape and stride covers its memory exactly once, in any order."""
    dims = sorted((st, size) for size, st in zip(shape, stride, strict=True) if size != 1)
    if any(size == 0 for _, size in dims):
        return True
    span = 1
    for st, size in dims:
        if st != span:
            return False
        span *= size
    return True


def _all_finite(tensor: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """``isfinite(tensor).all()`` over chunks of a flat view of a dense tensor (no copy)."""
    order = sorted(range(tensor.dim()), key=lambda d: -tensor.stride(d))
    flat = tensor.permute(order).reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def _build(
    path: Path, factory: Factory, spec: ModelSpec, arch: str, kwargs: dict, device: str
) -> nn.Module:
    """The architecture on ``device`` ("meta": shapes without memory); its errors are one line."""
    try:
        with torch.device(device):
            return factory(len(spec.attributes), **kwargs)
    except BiascheckError as exc:
        raise BiascheckError(f"{path}: {exc}") from None
    except Exception as exc:  # the factory is code of its own: any error means bad kwargs
        raise BiascheckError(
            f"{path}: arch_kwargs {kwargs} do not fit {arch!r}: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _make_spec(path: Path, task: Mapping[str, Any]) -> ModelSpec:
    if "attributes" not in task:
        raise BiascheckError(
            f"model {path} does not say what it predicts; set task = {{ attributes = [...] }} "
            f"under [tool.biascheck.models.{path.stem}] (one name per output), or convert it once: "
            f"python -m pytest_biascheck convert {path} --trust-pickle --arch ARCH --attributes "
            "A,B --out model.pt"
        )
    try:
        return ModelSpec.from_dict(task)
    except (TypeError, ValueError) as exc:
        raise BiascheckError(f"model {path}: {exc}") from None


def _check_outputs(path: Path, module: nn.Module, spec: ModelSpec) -> None:
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *spec.input_size))
    except Exception as exc:  # the model's own code: any error means it cannot take this input
        raise BiascheckError(
            f"model {path} cannot run on its task.input_size {list(spec.input_size)} "
            f"({_first_line(exc)}); fix task.input_size or arch_kwargs"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != len(spec.attributes):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BiascheckError(
            f"model {path} outputs shape {shape} but its task names {len(spec.attributes)} "
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


def _integers(name: str, values: Any) -> tuple[int, ...]:
    """Whole numbers (ints, or floats without a fraction) as ints; a ValueError otherwise."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list of whole numbers, got {values!r}")
    whole = all(
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
        for v in values
    )
    if not whole:
        raise ValueError(f"{name} must be a list of whole numbers, got {list(values)}")
    return tuple(int(v) for v in values)


def _finite(name: str, values: Any) -> tuple[float, ...]:
    """Finite numbers as floats; a ValueError names NaN and infinities."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list of numbers, got {values!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be a list of numbers, got {list(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite numbers, got {list(values)}")
    return tuple(float(v) for v in values)


def _first(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
