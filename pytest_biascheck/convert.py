"""``convert``: any PyTorch classifier -> a ``biascheck/1`` checkpoint, checked before it is written.

Sources: a ``state_dict`` file (also a training checkpoint holding one under ``state_dict`` or
``model``, and DataParallel's ``module.`` names), a safetensors file, a biascheck checkpoint (to
change its format or task), a TorchScript file or a trusted whole-model pickle (their weights,
into the architecture they were built from), or no file: an architecture with random or
pretrained weights. Input size and normalisation default to the architecture's own preset
(torchvision's weights transforms, timm's ``pretrained_cfg``).
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_biascheck import files, safetensors_io
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import (
    _ARCHITECTURES,
    TORCHSCRIPT_SPEC,
    Factory,
    LoadedModel,
    ModelSpec,
    _build,
    _zip_members,
    check_weights,
    load_checkpoint,
    ready,
    resolve_architecture,
    save_checkpoint,
)

#: Keys under which training scripts commonly keep the weights in a checkpoint dict.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
#: Name prefixes that wrappers add to every weight: DataParallel/DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Source:
    """What a source file holds: weights, and the facts it records (a checkpoint's task and arch)."""

    state_dict: dict[str, torch.Tensor]
    task: dict[str, Any] = field(default_factory=dict)
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = "state_dict"


def convert(
    source: str | Path | None,
    out: str | Path,
    *,
    arch: str | None = None,
    attributes: Sequence[str] | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    target_layer: str | None = None,
    head: str | None = None,
    weights: str = "random",
    trust_pickle: bool = False,
    architectures: Mapping[str, Factory] | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Write ``out`` (``.safetensors``: the safetensors format, else ``torch.save``) from ``source``
    (None: ``arch`` with ``weights``, ``"random"`` or a pretrained weights name) and return it as
    ``pytest --biascheck`` loads it. Explicit arguments win over what the source records, which
    wins over the architecture's preset. Nothing is written unless the weights fit ``arch`` and
    one dry forward pass gives one output per attribute."""
    out = Path(out)
    _check_out(source, out)
    found = _read(Path(source), trust_pickle) if source is not None else None
    arch = _arch_name(arch or (found.arch if found else None), architectures, source)
    kwargs = dict(found.arch_kwargs if found else {})
    kwargs.update(arch_kwargs or {})
    kwargs.pop("num_classes", None)  # set from the attributes
    task = dict(found.task if found else {})
    explicit = {
        "attributes": attributes, "input_size": input_size, "mean": mean, "std": std,
        "target_layer": target_layer, "head": head,
    }  # fmt: skip
    task.update({k: list(v) if isinstance(v, tuple) else v for k, v in explicit.items() if v})
    if not task.get("attributes"):
        raise BiascheckError("convert needs the attribute names, one per output: --attributes A,B")
    factory = resolve_architecture(arch, architectures, allow_imports=[arch])
    preset = _preset(arch, kwargs, weights)
    missing = [k for k in ("input_size", "mean", "std") if k not in task and k not in preset]
    if missing:
        flags = " ".join(f"--{k.replace('_', '-')}" for k in missing)
        raise BiascheckError(
            f"architecture {arch!r} has no preset input size and normalisation; give {flags} "
            "(e.g. --input-size 3,224,224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)"
        )
    try:
        spec = ModelSpec.from_dict({**preset, **task})
    except (TypeError, ValueError) as exc:
        raise BiascheckError(f"convert: {exc}") from None
    where = Path(source) if source is not None else out
    if found is None:
        module = _initial(where, factory, spec, arch, kwargs, weights, seed)
    else:
        with torch.random.fork_rng(devices=[]):
            blueprint = _build(where, factory, spec, arch, kwargs, "meta")
        check_weights(where, blueprint.state_dict(), found.state_dict, arch)
        module = _build(where, factory, spec, arch, kwargs, "cpu")
        module.load_state_dict(found.state_dict)
    spec = ready(LoadedModel(module, spec, where, "", arch, kwargs)).spec
    provenance = {"converted_from": str(source) if source else f"{arch} ({weights} weights)"}
    if found is not None:
        provenance["source_kind"] = found.kind
        provenance["source_sha256"] = files.sha256(where, "model", "model file")
    save_checkpoint(module, spec, out, arch, kwargs, provenance, architectures)
    return load_checkpoint(out, allow_imports=[arch], architectures=architectures)


def _check_out(source: str | Path | None, out: Path) -> None:
    """Refuse an output that would overwrite the source or cannot be created, before any work."""
    if source is not None and out.exists() and out.resolve() == Path(source).resolve():
        raise BiascheckError(
            f"--out {out} is the source file; write the checkpoint to another file"
        )
    if out.is_dir():
        raise BiascheckError(
            f"--out {out} is a folder; give a file name such as {out / 'model.pt'}"
        )
    if not out.parent.is_dir():
        raise BiascheckError(f"output folder {out.parent} does not exist; create it first")


def _arch_name(arch: str | None, architectures: Mapping[str, Factory] | None, source: Any) -> str:
    """The architecture as the checkpoint records it; a bare torchvision name gets its prefix."""
    if not arch:
        what = "the architecture its weights belong to" if source else "an architecture"
        raise BiascheckError(
            f"convert needs {what}: --arch torchvision.resnet18, timm.convnext_tiny, "
            "biascheck.small_resnet or module:factory"
        )
    registered = arch in _ARCHITECTURES or arch in (architectures or {})
    if registered or arch.startswith(("torchvision.", "timm.")) or ":" in arch:
        return arch
    import torchvision

    if arch in torchvision.models.list_models(module=torchvision.models):
        return f"torchvision.{arch}"
    return arch


def _preset(arch: str, kwargs: Mapping[str, Any], weights: str) -> dict[str, Any]:
    """The input size, mean and std the architecture's own preset uses (ImageNet-style for
    torchvision and timm models); ModelSpec's defaults for biascheck's nets; empty otherwise."""
    if arch.startswith("biascheck."):
        default = ModelSpec(attributes=("x",))
        return {"input_size": default.input_size, "mean": default.mean, "std": default.std}
    if arch.startswith("timm."):
        import timm

        config = timm.get_pretrained_cfg(arch.removeprefix("timm."))
        if config is None:
            return {}
        size = kwargs.get("img_size")
        size = (3, size, size) if isinstance(size, int) else config.input_size
        return {"input_size": list(size), "mean": list(config.mean), "std": list(config.std)}
    if arch.startswith("torchvision."):
        chosen = _torchvision_weights(arch, "DEFAULT" if weights == "random" else weights)
        if chosen is None:
            return {}
        transform = chosen.transforms()
        crop = kwargs.get("image_size", transform.crop_size[0])
        return {
            "input_size": [3, crop, crop],
            "mean": list(transform.mean),
            "std": list(transform.std),
        }
    return {}


def _torchvision_weights(arch: str, name: str) -> Any:
    """torchvision's weights enum member ``name`` of the model, None when it has no weights."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch.removeprefix("torchvision."))
    except (ValueError, KeyError):
        if name != "DEFAULT":
            raise BiascheckError(
                f"{arch} has no pretrained weights; use --weights random"
            ) from None
        return None
    try:
        return enum[name]
    except KeyError:
        raise BiascheckError(
            f"{arch} has no weights {name!r}; choose random or one of "
            f"{', '.join(dict.fromkeys(['DEFAULT', *enum.__members__]))}"
        ) from None


def _initial(
    where: Path, factory: Factory, spec: ModelSpec, arch: str, kwargs: dict, weights: str, seed: int
) -> nn.Module:
    """The architecture with seeded random weights, or pretrained ones (downloaded by torchvision
    or timm) with a new random head for the spec's attributes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _build(where, factory, spec, arch, kwargs, "cpu")
    if weights == "random":
        return module
    try:
        if arch.startswith("timm."):
            import timm

            pretrained = timm.create_model(arch.removeprefix("timm."), pretrained=True, **kwargs)
        elif arch.startswith("torchvision."):
            import torchvision

            chosen = _torchvision_weights(arch, weights)
            name = arch.removeprefix("torchvision.")
            pretrained = torchvision.models.get_model(name, weights=chosen, **kwargs)
        else:
            raise BiascheckError(
                f"{arch} has no pretrained weights to download; give a weights file as SOURCE"
            )
    except BiascheckError:
        raise
    except Exception as exc:  # downloads fail in many ways (no network, a proxy, a bad cache)
        raise BiascheckError(
            f"cannot get the {weights} weights of {arch} ({str(exc).splitlines()[0]}); download "
            "them where there is network and give the file as SOURCE"
        ) from None
    own = module.state_dict()
    fitting = {
        k: v for k, v in pretrained.state_dict().items() if k in own and v.shape == own[k].shape
    }
    module.load_state_dict(fitting, strict=False)
    return module


def _read(path: Path, trust_pickle: bool) -> Source:
    """The weights (and any task and arch) a source file holds, through the front door."""
    if safetensors_io.is_safetensors(path):
        tensors, metadata = safetensors_io.load(path)
        if "format" in metadata:
            payload = safetensors_io.read_checkpoint(path)
            return _from_checkpoint(payload, "safetensors checkpoint")
        return Source(tensors, kind="safetensors")
    if "code" in _zip_members(path):
        extra = {TORCHSCRIPT_SPEC: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:  # torch.jit.load raises many types on a damaged archive
            raise BiascheckError(f"TorchScript file {path} does not load ({exc})") from None
        task = json.loads(extra[TORCHSCRIPT_SPEC]) if extra[TORCHSCRIPT_SPEC] else {}
        state = {k: v.detach().clone() for k, v in scripted.state_dict().items()}
        return Source(state, task if isinstance(task, dict) else {}, kind="torchscript")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
    except pickle.UnpicklingError:
        raise BiascheckError(
            f"{path} holds pickled Python objects (a whole model?), which can run code; pass "
            "--trust-pickle if you trust its source"
        ) from None
    except Exception as exc:  # a damaged archive makes torch.load raise many types
        raise BiascheckError(f"{path} could not be read ({str(exc).splitlines()[0]})") from None
    if isinstance(payload, nn.Module):
        return Source(payload.state_dict(), kind="pickled module")
    if isinstance(payload, dict) and "format" in payload:
        return _from_checkpoint(payload, "biascheck checkpoint")
    return Source(_state_dict(path, payload))


def _from_checkpoint(payload: dict[str, Any], kind: str) -> Source:
    return Source(
        payload["state_dict"],
        dict(payload.get("task", {})),
        payload.get("arch"),
        dict(payload.get("arch_kwargs", {})),
        kind,
    )


def _state_dict(path: Path, payload: Any) -> dict[str, torch.Tensor]:
    """Names -> tensors from a bare state dict or a training checkpoint that holds one, without
    the names wrappers add; anything else is an error naming what was found."""
    if isinstance(payload, dict):
        for key in STATE_KEYS:
            if isinstance(payload.get(key), dict) and _tensors(payload[key]):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not _tensors(payload):
        found = (
            f"a dict with keys {', '.join(map(str, list(payload)[:5]))}"
            if isinstance(payload, dict)
            else f"a {type(payload).__name__}"
        )
        raise BiascheckError(
            f"{path} holds {found}, not a state_dict (names -> tensors); save model.state_dict()"
        )
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in payload):
            payload = {k.removeprefix(prefix): v for k, v in payload.items()}
    return dict(payload)


def _tensors(table: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in table.items())
