"""Class-activation maps (Grad-CAM family) for every attribute of a model from one forward pass.

Matches pytorch-grad-cam's maths; its other methods are a slow per-attribute fallback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.layers import borrowed, output_layout, permute_types, tracing

Reshape = Callable[[Tensor], Tensor]
Target = str | int | Tensor


@dataclass(frozen=True)
class CamResult:
    """What one call of :func:`compute_cams` measured, all detached and on the model's device."""

    logits: Tensor
    """[B, K] model outputs."""
    cams: Tensor
    """[B, M, h, w] maps (M = mapped outputs, or 1 for a class target); [B, M, *size] if resized."""
    features: Tensor | None
    """Input of the last ``nn.Linear`` the forward pass ran (penultimate features), else None."""
    closed_form: bool
    """True when the gradients came from the pool + linear head's weights, with no backward."""


def _gradcam(grads: Tensor, acts: Tensor) -> Tensor:
    """Grad-CAM: channel weights are the spatial mean of the gradients."""
    return torch.einsum("bmc,bchw->bmhw", grads.mean((-2, -1)), acts)


def _gradcam_plusplus(grads: Tensor, acts: Tensor) -> Tensor:
    """Grad-CAM++ weights (eq. 19 of Chattopadhay et al., exp-score closed form, eps 1e-6)."""
    grads = grads.expand(*grads.shape[:3], *acts.shape[-2:])
    g2 = grads.square()
    sum_acts = acts.sum((-2, -1))[:, None, :, None, None]
    alpha = g2 / (2 * g2 + sum_acts * g2 * grads + 1e-6)  # 0 where the gradient is 0
    weights = (grads.clamp_min(0) * alpha).sum((-2, -1))
    return torch.einsum("bmc,bchw->bmhw", weights, acts)


def _hirescam(grads: Tensor, acts: Tensor) -> Tensor:
    """HiResCAM: gradients times activations, summed over channels."""
    return torch.einsum("bmchw,bchw->bmhw", grads, acts)


def _elementwise(grads: Tensor, acts: Tensor) -> Tensor:
    """Element-wise Grad-CAM: ReLU(gradients times activations), summed over channels."""
    return (grads * acts[:, None]).clamp_min(0).sum(2)


# Each method maps gradients [B, M, C, h|1, w|1] and activations [B, C, h, w] to raw maps [B, M, h, w].
METHODS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "gradcam": _gradcam,
    "gradcam++": _gradcam_plusplus,
    "hirescam": _hirescam,
    "elementwise": _elementwise,
}
_ALIASES = {"gradcamplusplus": "gradcam++", "gradcamelementwise": "elementwise"}
_NEUTRAL = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)


def _fallback_classes() -> dict[str, type]:
    """pytorch-grad-cam's CAM classes by lower-case name without underscores (``kpcacam``)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.base_cam import BaseCAM

    classes = [getattr(pytorch_grad_cam, name) for name in dir(pytorch_grad_cam)]
    return {
        c.__name__.lower().replace("_", ""): c
        for c in classes
        if isinstance(c, type) and issubclass(c, BaseCAM) and c is not BaseCAM
    }


def _resolve_method(method: str) -> str | type:
    """Our batched method's name, or the pytorch-grad-cam class that the fallback will loop over."""
    key = method.lower().replace("_", "").replace("-", "")
    key = _ALIASES.get(key, key)
    if key in METHODS:
        return key
    fallback = _fallback_classes()
    if key in fallback:
        return fallback[key]
    raise BiascheckError(
        f"CAM method {method!r} is unknown; use one of {', '.join(METHODS)} "
        f"or a pytorch-grad-cam class ({', '.join(sorted(fallback))})"
    )


class _Recorder:
    """Forward hooks: the target layer's output becomes a leaf that requires grad, and the leaf
    modules that run after it are listed (with the last ``nn.Linear``'s input and output)."""

    def __init__(self, model: nn.Module, layer: nn.Module, name: str) -> None:
        self.model, self.layer, self.name = model, layer, name
        self.raw: Tensor | None = None
        self.calls = 0
        self.after: list[nn.Module] = []
        self.linear_in: Tensor | None = None
        self.linear_out: Tensor | None = None

    def __enter__(self) -> _Recorder:
        leaves = [m for m in self.model.modules() if next(m.children(), None) is None]
        self.handles = [self.layer.register_forward_hook(self._on_target)]
        self.handles += [
            m.register_forward_hook(self._on_leaf) for m in leaves if m is not self.layer
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _on_target(self, module: nn.Module, args: tuple, output: object) -> Tensor:
        self.calls += 1
        if not isinstance(output, Tensor):
            raise BiascheckError(
                f"target layer {self.name!r} returns {type(output).__name__}, not a tensor; "
                "choose a layer whose output is a feature map"
            )
        self.raw = output.detach().requires_grad_()
        return self.raw.clone()

    def _on_leaf(self, module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(module, nn.Linear):
            self.linear_in, self.linear_out = args[0], output
        if self.raw is not None:
            self.after.append(module)


def _is_global_avg_pool(module: nn.Module) -> bool:
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


def _pooled_linear_head(rec: _Recorder, acts: Tensor, logits: Tensor) -> nn.Linear | None:
    """The head's Linear when all that ran after the target layer is global average pool (+ flatten,
    dropout, identity, permute) then that one Linear producing the logits, verified numerically on
    the feature map ``acts``; else None."""
    if not rec.after or not isinstance(rec.after[-1], nn.Linear) or rec.linear_out is not logits:
        return None
    if not all(
        isinstance(m, _NEUTRAL + permute_types()) or _is_global_avg_pool(m) for m in rec.after[:-1]
    ):
        return None
    pooled = acts.mean((-2, -1))
    if rec.linear_in is None or rec.linear_in.shape != pooled.shape:
        return None
    atol = 1e-5 * float(pooled.abs().max())
    return rec.after[-1] if torch.allclose(rec.linear_in, pooled, rtol=1e-4, atol=atol) else None


def _target_coefficients(
    logits: Tensor, target: Target, head: str, outputs: Sequence[int] | Tensor | None
) -> Tensor:
    """[B, M, K] coefficients c with map score s[b, m] = sum_k c[b, m, k] * z[b, k]."""
    b, k = logits.shape
    if isinstance(target, str) and (head == "multilabel" or target == "positive"):
        idx = torch.arange(k, device=logits.device) if outputs is None else torch.as_tensor(outputs)
        idx = idx.to(device=logits.device, dtype=torch.long).reshape(-1)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= k:
            raise ValueError(f"outputs must be indices in [0, {k}), got {idx.tolist()}")
        coef = torch.eye(k, dtype=logits.dtype, device=logits.device)[idx].expand(b, -1, -1)
        return coef * logits[:, idx].sign()[..., None] if target == "predicted" else coef
    if outputs is not None:
        raise ValueError(
            "outputs= selects maps for target 'predicted'/'positive'; drop it for a class"
        )
    if isinstance(target, str):
        classes = logits.argmax(1)
    else:
        classes = torch.as_tensor(target, device=logits.device)
        classes = classes.expand(b) if classes.dim() == 0 else classes
    if (
        classes.shape != (b,)
        or classes.dtype != torch.long
        or int(classes.min()) < 0
        or int(classes.max()) >= k
    ):
        raise ValueError(
            f"target class must be an int or LongTensor [B] in [0, {k}), got {target!r}"
        )
    return F.one_hot(classes, k).to(logits.dtype)[:, None, :]


def normalise_maps(cams: Tensor, normalize: str | None) -> Tensor:
    """Per-map min-max to [0, 1] or division by the sum; a constant or all-zero map becomes 0."""
    if normalize is None:
        return cams
    flat = cams.flatten(-2)
    if normalize == "minmax":
        low = flat.amin(-1, keepdim=True)
        span = flat.amax(-1, keepdim=True) - low
        out = (flat - low) / torch.where(span > 0, span, 1)
    else:
        total = flat.sum(-1, keepdim=True)
        out = flat / torch.where(total != 0, total, 1)
    return out.view_as(cams)


def _dot(coef: Tensor, output: Tensor) -> Tensor:
    """A pytorch-grad-cam target: one image's logits dotted with a coefficient row."""
    return (output * coef).sum(-1)


def _fallback_cams(
    cam_class: type,
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    coef: Tensor,
    reshape: Reshape,
) -> Tensor:
    """pytorch-grad-cam's maps [B, M, H, W] (ReLU, min-max, input size), one call per map."""
    for p in model.parameters():
        p.requires_grad_(p.is_floating_point())
    cam = cam_class(model, [layer], reshape_transform=reshape)
    try:
        maps = [
            torch.from_numpy(cam(images, [functools.partial(_dot, c) for c in coef[:, m]]))
            for m in range(coef.shape[1])
        ]
    finally:
        cam.activations_and_grads.release()
    return torch.stack(maps, 1).to(images.device, images.dtype)


def _check_args(
    images: Tensor, target: Target, head: str, normalize: str | None, chunk: int | None
) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("images must be a [B, C, H, W] tensor")
    if isinstance(target, str) and target not in ("predicted", "positive"):
        raise ValueError(f"target must be 'predicted', 'positive' or a class, got {target!r}")
    if head not in ("multilabel", "multiclass"):
        raise ValueError(f"head must be 'multilabel' or 'multiclass', got {head!r}")
    if normalize not in ("minmax", "sum", None):
        raise ValueError(f"normalize must be 'minmax', 'sum' or None, got {normalize!r}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of maps, got {chunk}")


def _layout_reshape(
    model: nn.Module,
    name: str,
    ran: list[tuple[nn.Module, int]],
    output: Tensor,
    image_size: Sequence[int],
) -> Reshape:
    """The reshape to [B, C, h, w] read from the target layer (``layers.output_layout``): channels
    moved first for channels-last and token outputs, class tokens dropped; an error for no map."""
    layout = output_layout(model, ran, output.shape, image_size)
    if layout is None:
        raise BiascheckError(
            f"target layer {name!r} gives a {list(output.shape)} tensor, not a feature map "
            "([B, C, h, w], [B, h, w, C] or patch tokens); choose a layer that "
            "`python -m pytest_biascheck layers MODEL` lists, or pass reshape="
        )
    return layout.to_feature_map


def _as_feature_map(raw: Tensor, reshape: Reshape, name: str) -> Tensor:
    """The captured activation (or its gradients) as [B, C, h, w]."""
    out = reshape(raw)
    if out.dim() != 4:
        raise BiascheckError(
            f"reshape= turns the output of target layer {name!r} into a {list(out.shape)} tensor; "
            "make it return [B, C, h, w]"
        )
    return out


def _target_module(model: nn.Module, target_layer: str) -> nn.Module:
    """The module named ``target_layer``; a clear error when the model has none of that name."""
    try:
        return model.get_submodule(target_layer)
    except AttributeError:
        raise BiascheckError(
            f"target layer {target_layer!r} not found in {type(model).__name__}; "
            "give a dotted module name from model.named_modules(), e.g. 'layer4'"
        ) from None


def compute_cams(
    model: nn.Module,
    images: Tensor,
    target_layer: str,
    *,
    outputs: Sequence[int] | Tensor | None = None,
    method: str = "gradcam",
    target: Target = "predicted",
    head: str = "multilabel",
    relu: bool = True,
    normalize: str | None = "minmax",
    size: tuple[int, int] | None = None,
    chunk: int | None = None,
    reshape: Reshape | None = None,
    closed_form: bool = True,
) -> CamResult:
    """CAMs of all requested outputs for a batch, from one forward pass and at most one batched
    backward per ``chunk`` of maps; the caller's model is left exactly as it was.

    target: "predicted" = |z_a| (binary-CAM paper; argmax class logit if head="multiclass"),
    "positive" = z_a, or a class index (int or LongTensor [B]) giving one map of that logit.
    method: "gradcam", "gradcam++", "hirescam", "elementwise", or any other pytorch-grad-cam
    class name (e.g. "layercam"): a slow loop over maps whose output is theirs (always ReLU and
    min-max, cv2-resized to the input), resampled to ``size`` or averaged down to the grid.
    Maps go ReLU (if ``relu``) -> bilinear resize to ``size`` -> ``normalize`` ("minmax", "sum",
    None). Gradients come in closed form from the head's weights when only global average pool
    + one Linear follow the target layer (unless ``closed_form=False`` or ``reshape`` is given),
    otherwise from ``torch.autograd.grad(is_grads_batched=True)``. ``reshape`` turns the layer's
    output into [B, C, h, w]; by default it is read from the layer (``layers.output_layout``): ViT
    tokens lose their class token and go onto the patch grid, Swin's channels-last maps turn.
    """
    _check_args(images, target, head, normalize, chunk)
    resolved = _resolve_method(method)
    if not relu and not isinstance(resolved, str):
        raise ValueError(
            f"relu=False is not available for {method!r}: pytorch-grad-cam applies ReLU"
        )
    layer = _target_module(model, target_layer)
    param = next(model.parameters(), None)
    if param is not None:
        dtype = param.dtype if param.is_floating_point() else images.dtype
        images = images.to(param.device, dtype)

    with borrowed(model):
        with (
            _Recorder(model, layer, target_layer) as rec,
            tracing(model, layer) as ran,
            torch.enable_grad(),
        ):
            logits = model(images)
        if rec.calls != 1:
            raise BiascheckError(
                f"target layer {target_layer!r} ran {rec.calls} times in one forward pass; "
                "choose a layer that runs exactly once"
            )
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise BiascheckError(
                f"{type(model).__name__} must return [B, K] logits; wrap it to return one tensor"
            )
        raw = rec.raw.detach()
        own_reshape = reshape is None
        if reshape is None:
            reshape = _layout_reshape(model, target_layer, ran, raw, images.shape[-2:])
        acts = _as_feature_map(raw, reshape, target_layer)
        coef = _target_coefficients(logits.detach(), target, head, outputs)
        linear = None
        if isinstance(resolved, str):
            if closed_form and own_reshape:  # a reshape of the caller's might not be linear
                linear = _pooled_linear_head(rec, acts, logits)
            cams = _batched_cams(METHODS[resolved], rec, acts, logits, coef, linear, chunk, reshape)
        else:
            cams = _fallback_cams(resolved, model, layer, images, coef, reshape)
            if size is None:
                cams = F.adaptive_avg_pool2d(cams, acts.shape[-2:])
    if relu:
        cams = cams.clamp_min(0)
    if size is not None and tuple(cams.shape[-2:]) != tuple(size):
        cams = F.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)
    features = None if rec.linear_in is None else rec.linear_in.detach()
    return CamResult(logits.detach(), normalise_maps(cams, normalize), features, linear is not None)


def _batched_cams(
    method: Callable[[Tensor, Tensor], Tensor],
    rec: _Recorder,
    acts: Tensor,
    logits: Tensor,
    coef: Tensor,
    linear: nn.Linear | None,
    chunk: int | None,
    reshape: Reshape,
) -> Tensor:
    """Raw maps [B, M, h, w]: gradients for ``chunk`` maps at a time, then the method's weighting."""
    b, m = coef.shape[:2]
    step = m if chunk is None else chunk
    parts = []
    for start in range(0, m, step):
        part = coef[:, start : start + step]
        if linear is not None:
            grads = (part @ linear.weight / acts[0, 0].numel())[..., None, None]
        else:
            with torch.enable_grad():
                (raw_grads,) = (
                    torch.autograd.grad(
                        logits,
                        rec.raw,
                        part.transpose(0, 1),
                        retain_graph=True,
                        allow_unused=True,
                        is_grads_batched=True,
                    )
                    if logits.requires_grad
                    else (None,)
                )
            if raw_grads is None:
                raise BiascheckError(
                    f"the outputs do not depend on target layer {rec.name!r}; "
                    "choose a layer on the path from the input to the head"
                )
            grads = _as_feature_map(raw_grads.flatten(0, 1), reshape, rec.name)
            grads = grads.unflatten(0, (part.shape[1], b)).transpose(0, 1)
        with torch.no_grad():
            parts.append(method(grads, acts))
    return torch.cat(parts, 1)


def gradcam_differentiable(
    model: nn.Module,
    images: Tensor,
    target_layer: str,
    output: int,
    *,
    target: str = "predicted",
    relu: bool = True,
    normalize: str | None = "minmax",
) -> tuple[Tensor, Tensor]:
    """Grad-CAM of one output of a multi-label model that gradients flow back through
    (``create_graph``), for losses on attention such as ROI-IoU: ``(logits [B, K], maps [B, h, w])``
    from one forward pass, in the model's current mode, with the same weighting, target (
    ``"predicted"`` = |z|, ``"positive"`` = z) and normalisation as :func:`compute_cams`.

    Each map is the gradient of its own image's score, so batch norm must be in eval mode for the
    maps to match :func:`compute_cams` (in train mode the images of a batch interact). Token and
    channels-last outputs are read as :func:`compute_cams` reads them; attention runs on the math
    kernel, whose gradients can be differentiated again.
    """
    if not isinstance(target, str) or target not in ("predicted", "positive"):
        raise ValueError(f"target must be 'predicted' or 'positive', got {target!r}")
    _check_args(images, target, "multilabel", normalize, None)
    captured: list[object] = []
    layer = _target_module(model, target_layer)
    handle = layer.register_forward_hook(lambda module, args, out: captured.append(out))
    try:  # the fused attention kernels have no double backward; the math one does (ViT, Swin)
        with tracing(model, layer) as ran, torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            logits = model(images)
    finally:
        handle.remove()
    if len(captured) != 1 or not isinstance(captured[0], Tensor):
        raise BiascheckError(
            f"target layer {target_layer!r} must run once and return a tensor in one forward "
            "pass; choose a feature-map layer such as 'layer4'"
        )
    raw = captured[0]
    reshape = _layout_reshape(model, target_layer, ran, raw, images.shape[-2:])
    if not raw.requires_grad:
        raise ValueError(
            "the target layer's output needs gradients: unfreeze the parameters before it"
        )
    coef = _target_coefficients(logits.detach(), target, "multilabel", [output])[:, 0]
    with torch.enable_grad():
        (grads,) = torch.autograd.grad((coef * logits).sum(), raw, create_graph=True)
    cams = METHODS["gradcam"](reshape(grads)[:, None], reshape(raw))[:, 0]
    if relu:
        cams = cams.clamp_min(0)
    return logits, normalise_maps(cams, normalize)
