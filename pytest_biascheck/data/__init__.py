"""Datasets behind one schema, and ``open_data()``: a ``--biascheck-data`` spec -> a dataset.

A spec is ``scheme[:key=value,...]`` for a synthetic or plugin dataset (``synthfaces:n=2000,seed=1``),
``scheme:PATH[,key=value,...]`` for a real layout (``celeba:/data/celeba``,
``csv:labels.csv,groups=skin_tone+age_band,split=test``), or a bare path whose layout is detected.
``docs/data.md`` describes every layout.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError

DatasetFactory = Callable[..., BiasDataset]


def _synthfaces(
    split: str,
    image_size: int,
    preset: str = "balanced",
    corr: str | list[str] = (),
    mcc: str | list[str] = (),
    freq: str | list[str] = (),
    **params: Any,
) -> BiasDataset:
    """``synthfaces:preset=biased``, ``corr=A~B@0.95`` (agreement), ``mcc=A~B@0.6``,
    ``freq=A@0.3`` (each repeatable) and any ``Appearance`` knob (``smile_curvature=0.4``)."""
    import dataclasses

    from pytest_biascheck.data.synth_faces import (
        BIASED_CORRELATIONS,
        BIASED_FREQUENCIES,
        Appearance,
        SynthFaces,
    )

    presets = {"balanced": ({}, {}), "biased": (BIASED_CORRELATIONS, BIASED_FREQUENCIES)}
    if preset not in presets:
        raise BiascheckError(
            f"synthfaces preset {preset!r} is unknown; use one of {', '.join(presets)}"
        )
    knobs = {f.name for f in dataclasses.fields(Appearance)} - {"extra"}
    look = {k: params.pop(k) for k in list(params) if k in knobs}
    valid = {"n", "seed", "preset", "corr", "mcc", "freq", *knobs}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; synthfaces takes {', '.join(sorted(valid))}")
    correlations = {**presets[preset][0], **_pairs(corr, "corr")}
    frequencies = {**presets[preset][1], **_rates(freq)}
    return SynthFaces(
        split=split,
        image_size=image_size,
        correlations=correlations,
        mcc=_pairs(mcc, "mcc"),
        frequencies=frequencies,
        appearance=Appearance(**look),
        **params,
    )


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _pairs(value: str | list[str], key: str) -> dict[tuple[str, str], float]:
    """``A~B@0.95`` entries -> ``{("A", "B"): 0.95}``."""
    out = {}
    for item in _listed(value):
        pair, at, strength = str(item).partition("@")
        first, tilde, second = pair.partition("~")
        try:
            out[(first.strip(), second.strip())] = float(strength)
        except ValueError:
            tilde = ""
        if not (tilde and at and first and second):
            raise ValueError(
                f"{key}={item!r} is not FIRST~SECOND@STRENGTH (e.g. {key}=Eyeglasses~Male@0.9)"
            )
    return out


def _rates(value: str | list[str]) -> dict[str, float]:
    """``A@0.3`` entries -> ``{"A": 0.3}``."""
    out = {}
    for item in _listed(value):
        name, at, rate = str(item).partition("@")
        try:
            out[name.strip()] = float(rate)
        except ValueError:
            at = ""
        if not (at and name):
            raise ValueError(f"freq={item!r} is not NAME@FREQUENCY (e.g. freq=Eyeglasses@0.3)")
    return out


def _synthbirds(split: str, image_size: int, n: int = 2000, **params: Any) -> BiasDataset:
    from pytest_biascheck.data.synth_birds import SynthBirds

    return SynthBirds(n=n, split=split, image_size=image_size, **params)


def _real(kind: str) -> DatasetFactory:
    def build(path: str, split: str, image_size: int, **params: Any) -> BiasDataset:
        from pytest_biascheck.data import real

        loader = {
            "celeba": real.CelebA,
            "celebamask": real.CelebAMaskHQ,
            "waterbirds": real.Waterbirds,
            "csv": real.csv_folder,
        }[kind]
        return loader(path, split=split, image_size=image_size, **params)

    return build


BUILTIN: dict[str, DatasetFactory] = {
    "synthfaces": _synthfaces,
    "synthbirds": _synthbirds,
}
REAL: dict[str, DatasetFactory] = {
    k: _real(k) for k in ("celeba", "celebamask", "waterbirds", "csv")
}
#: ``split=all`` in a spec: every image, nothing held out.
ALL = "all"


#: Keys a spec may give several times (``corr=A~B@0.9,corr=C~D@0.8``): their values form a list.
REPEATABLE = frozenset({"corr", "mcc", "freq"})


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """Split a spec into (scheme, path or None, params); values are int, float, bool or str, and
    a key of ``REPEATABLE`` given several times collects its values in a list."""
    scheme, _, rest = spec.partition(":")
    path = None
    if scheme in REAL:  # PATH, then key=value items (a comma starts one only before "key=")
        path, *items = re.split(r",(?=\s*\w+\s*=)", rest)
        rest = ",".join(items)
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise BiascheckError(
                f"data spec {spec!r}: {item!r} is not key=value (e.g. synthfaces:n=2000)"
            )
        value = _value(value.strip())
        if key in params and key not in REPEATABLE:
            raise BiascheckError(
                f"data spec {spec!r}: {key!r} is given twice; keep one (only "
                f"{', '.join(sorted(REPEATABLE))} may repeat)"
            )
        if key in params:
            previous = params[key]
            params[key] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            params[key] = value
    return scheme, path, params


def open_data(
    spec: str,
    split: str = "test",
    image_size: int = 64,
    extra: Mapping[str, DatasetFactory] | None = None,
) -> BiasDataset:
    """Build the dataset a spec names; errors name the spec and the valid choices."""
    registry = {**BUILTIN, **(extra or {})}
    if "\0" in spec:
        raise BiascheckError(f"data spec {spec!r} contains a NUL byte; give the real path or name")
    scheme, path, params = parse_spec(spec)
    if scheme in REAL:
        split = params.pop("split", split)  # the spec's own split wins
        try:
            return REAL[scheme](
                path, split=None if split == ALL else split, image_size=image_size, **params
            )
        except TypeError as exc:
            raise BiascheckError(f"data spec {spec!r}: {exc}") from None
    if scheme in registry:
        params = {"split": split, "image_size": image_size, **params}
        try:
            return registry[scheme](**params)
        except (TypeError, ValueError, BiascheckError) as exc:
            raise BiascheckError(f"data spec {spec!r}: {exc}") from None
    if Path(spec).exists():
        from pytest_biascheck.data.real import open_dataset

        return open_dataset(spec, split=split, image_size=image_size)
    names = sorted(registry) + sorted(f"{k}:PATH" for k in REAL)
    close = difflib.get_close_matches(scheme, list(registry) + list(REAL), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise BiascheckError(
        f"data spec {spec!r} is neither a dataset name nor an existing path; {hint}choose from {', '.join(names)}"
    )


def default_spec(attributes: tuple[str, ...]) -> str | None:
    """The synthetic set that carries a model's attributes, so the bundled fixtures need no config."""
    from pytest_biascheck.data.synth_faces import ATTRIBUTES

    if set(attributes) <= set(ATTRIBUTES):
        return "synthfaces"
    if tuple(attributes) == ("Waterbird",):
        return "synthbirds"
    return None


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
