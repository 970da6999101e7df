"""``[tool.biascheck]`` (pyproject.toml) or ``biascheck.toml`` -> typed, validated settings."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import stat
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_biascheck import files
from pytest_biascheck.errors import BiascheckError

#: Inclusive ranges of the integer settings (the command-line options that set them share them).
RANGES = {"batch_size": (1, 16384), "bootstrap": (1, 100_000), "seed": (0, 2**63 - 1)}
DEVICE_HINT = "use auto, cpu, cuda or cuda:N"


@dataclass
class ModelSettings:
    """Settings for one model, keyed by its file stem under ``[tool.biascheck.models.<stem>]``."""

    data: str | None = None
    attributes: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    regions: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    severity: dict[str, str] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    metadata: str | None = None
    metadata_id: str | None = None
    min_group_share: float | None = None


@dataclass
class Settings:
    """Everything ``[tool.biascheck]`` may hold; command-line options override the matching keys."""

    data: str | None = None
    report: str = "reports"
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    bootstrap: int = 1000
    min_group_share: float = 0.01
    metadata: str | None = None
    metadata_id: str = "image_id"
    allow_imports: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    severity: dict[str, str] = field(default_factory=dict)
    tolerance: float = 0.02
    cache: bool = True
    tolerances: dict[str, float] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    attention_resolution: str = "grid"
    models: dict[str, ModelSettings] = field(default_factory=dict)
    source: str | None = None

    def for_model(self, stem: str) -> ModelSettings:
        """The model's own settings, or defaults when the config does not name it."""
        return self.models.get(stem, ModelSettings())

    def min_share(self, stem: str) -> float:
        """The model's ``min_group_share``, else the global one."""
        own = self.for_model(stem).min_group_share
        return self.min_group_share if own is None else own

    def metadata_for(self, stem: str) -> tuple[Path, str] | None:
        """(CSV path, id column) of the model's metadata join, else the global one, else None; a
        relative path is taken from the config file's folder."""
        own = self.for_model(stem)
        path = own.metadata or self.metadata
        if path is None:
            return None
        folder = Path(self.source).parent if self.source else Path.cwd()
        return folder / path, own.metadata_id or self.metadata_id

    def table(self, *keys: str) -> str:
        """How a table is written in this config file: ``[models.m.thresholds]`` in
        ``biascheck.toml``, ``[tool.biascheck.models.m.thresholds]`` in ``pyproject.toml``."""
        prefix = () if self.source and Path(self.source).name != "pyproject.toml" else _TOOL
        return f"[{'.'.join((*prefix, *keys))}]"

    def threshold(self, stem: str, check: str, default: float) -> tuple[float, str]:
        """A check's threshold for a model (its own table, else the global one, else ``default``)
        and where it comes from, in words that name the config file and table to change."""
        for keys, table in (
            (("models", stem, "thresholds"), self.for_model(stem).thresholds),
            (("thresholds",), self.thresholds),
        ):
            if check in table:
                return table[check], f"{check} in {self.table(*keys)} of {self.source}"
        if self.source:
            return default, f"default; set {check} in {self.table('thresholds')} of {self.source}"
        return default, (
            f"default; set {check} in [thresholds] of biascheck.toml "
            "or [tool.biascheck.thresholds] of pyproject.toml"
        )

    def severity_of(self, stem: str, check: str) -> str:
        """``"fail"`` or ``"warn"``: the model's own severity for a check, else the global one."""
        return self.for_model(stem).severity.get(check, self.severity.get(check, "fail"))

    def override(self, key: str, value: Any) -> None:
        """A command-line option: ``value`` for every model, whatever the file sets globally or for a
        model (``severity`` entries are merged, each replacing the file's for that check)."""
        if key == "severity":
            self.severity.update(value)
            for model in self.models.values():
                for check in value:
                    model.severity.pop(check, None)
            return
        setattr(self, key, value)
        for model in self.models.values():
            if hasattr(model, key):
                setattr(model, key, None)

    def unused_models(self, stems: typing.Collection[str]) -> list[str]:
        """One line per ``[models.<stem>]`` table naming no model of the run, with the closest."""
        lines = []
        for stem in self.models:
            if stem in stems:
                continue
            lines.append(
                f"{self.source}: {self.table('models', stem)} names no model of this run, "
                f"so it is not used (models are keyed by file stem); {closest_hint(stem, stems)}"
            )
        return lines


_TOOL = ("tool", "biascheck")
SEVERITIES = ("fail", "warn")


def find_config(*starts: Path) -> Path | None:
    """The nearest config file walking up from each of ``starts`` in turn: ``biascheck.toml``, or
    ``pyproject.toml`` with a ``[tool.biascheck]`` table; both in one folder is an error."""
    for start in starts:
        for folder in (start, *start.parents):
            own = folder / "biascheck.toml"
            pyproject = folder / "pyproject.toml"
            shared = pyproject.is_file() and "biascheck" in _read_toml(pyproject).get("tool", {})
            if own.is_file() and shared:
                raise BiascheckError(
                    f"both {own} and [tool.biascheck] in {pyproject} configure biascheck; "
                    "keep one, or name the one to use with --biascheck-config"
                )
            if own.is_file():
                return own
            if shared:
                return pyproject
    return None


def load_settings(path: Path | None) -> Settings:
    """Parse and validate a config file (``None`` gives the defaults); its ``limits`` take effect."""
    if path is None:
        files.set_limits({})
        return Settings()
    doc = _read_toml(path)
    table = doc.get("tool", {}).get("biascheck", {}) if path.name == "pyproject.toml" else doc
    if path.name != "pyproject.toml" and "tool" in table and "biascheck" in table["tool"]:
        table = table["tool"]["biascheck"]
    settings = _build(
        Settings, table, ".".join(_TOOL) if path.name == "pyproject.toml" else "", path
    )
    settings.source = str(path)
    _check_values(settings, path)
    files.set_limits(settings.limits, f"{path}: limits")
    return settings


def check_setting(name: str, value: Any) -> Any:
    """``value`` of ``device`` or of an integer setting of :data:`RANGES`; a ValueError gives
    the allowed range or values."""
    if name == "device":
        return check_device(value)
    low, high = RANGES[name]
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value}")
    return value


def check_device(name: str) -> str:
    """``auto``, ``cpu``, or an accelerator this machine has (``cuda``, ``cuda:1``, ``mps``...);
    a ValueError says what exists."""
    if name in ("auto", "cpu"):
        return name
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device; {DEVICE_HINT}") from None
    if device.type == "cpu":
        return name
    backend = getattr(torch, device.type, None)
    if not callable(getattr(backend, "is_available", None)):
        raise ValueError(f"device {name!r} cannot run a model; {DEVICE_HINT}")
    if not backend.is_available():
        raise ValueError(f"device {name!r}: this machine has no {device.type}; use auto or cpu")
    count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"device {name!r} does not exist: this machine has {count} {device.type} device(s), "
            f"{device.type}:0 to {device.type}:{count - 1}"
        )
    return name


def option_type(name: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for a command-line option that sets ``name``: the checks and
    messages of :func:`check_setting`."""

    def convert(text: str) -> Any:
        try:
            value = text if name == "device" else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        try:
            return check_setting(name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def check_folder(path: Path, where: str) -> None:
    """Refuse an output folder that is a file, lies below one, or cannot be looked up, before
    anything is computed."""
    if "\0" in str(path):
        raise BiascheckError(f"{where}: {str(path)!r} contains a NUL byte; give a real folder")
    for part in (path, *path.parents):
        try:
            mode = os.stat(part).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise BiascheckError(f"{where}: {path} cannot be used ({exc.strerror})") from None
        if not stat.S_ISDIR(mode):
            raise BiascheckError(
                f"{where}: {path} cannot be a folder because {part} is a file; point it elsewhere"
            )


def validate_thresholds(settings: Settings, checks: Mapping[str, Any]) -> None:
    """Every ``thresholds``, ``checks``, ``tolerances`` and ``severity`` key must name a check of
    ``checks`` (name -> Check), errors point at the closest; a threshold must lie in its check's
    ``bounds``, a tolerance within the width of that range; a severity is "fail" or "warn"."""
    tables = [
        ("thresholds", settings.thresholds),
        ("checks", settings.checks),
        ("tolerances", settings.tolerances),
        ("severity", settings.severity),
    ]
    for stem, m in settings.models.items():
        tables += [
            (f"models.{stem}.thresholds", m.thresholds),
            (f"models.{stem}.checks", m.checks),
            (f"models.{stem}.severity", m.severity),
        ]
    for where, table in tables:
        for key in table:
            if key not in checks:
                raise BiascheckError(_unknown(key, where, checks, settings.source))
            if where.endswith("severity"):
                if table[key] not in SEVERITIES:
                    raise BiascheckError(
                        f'{settings.source}: {where}.{key} must be "fail" or "warn", '
                        f"got {table[key]!r}"
                    )
            elif isinstance(table, dict):
                _check_bound(checks[key], _join(where, key), table[key], settings.source)


def _check_bound(check: Any, where: str, value: float, source: str | None) -> None:
    low, high = check.bounds
    if where.startswith("tolerances"):
        low, high = 0.0, high - low
    if not low <= value <= high:
        shown = f"[{low:g}, {high:g}]" if math.isfinite(high) else f"[{low:g}, inf)"
        raise BiascheckError(
            f"{source or 'settings'}: {where} must lie in {shown}, the range of {check.name}, "
            f"got {value}"
        )


def _check_values(settings: Settings, path: Path) -> None:
    """Ranges of values whose types are already checked: one line naming the key and the range."""
    for name in (*RANGES, "device"):
        try:
            check_setting(name, getattr(settings, name))
        except ValueError as exc:
            raise BiascheckError(f"{path}: {exc}") from None
    check_folder(path.parent / settings.report, f"{path}: report")
    if settings.attention_resolution not in ("grid", "input"):
        raise BiascheckError(
            f"{path}: attention_resolution must be 'grid' (region brought to the CAM grid) or "
            f"'input' (CAM upsampled to the image), got {settings.attention_resolution!r}"
        )
    shares = [("min_group_share", settings.min_group_share)] + [
        (f"models.{stem}.min_group_share", m.min_group_share)
        for stem, m in settings.models.items()
        if m.min_group_share is not None
    ]
    for where, share in shares:
        if not 0 <= share < 1:
            raise BiascheckError(
                f"{path}: {where} must be a fraction of the images in [0, 1) (0.01 = 1%), got {share}"
            )
    numbers = [("tolerance", settings.tolerance)]
    numbers += [(f"tolerances.{k}", v) for k, v in settings.tolerances.items()]
    numbers += [(f"thresholds.{k}", v) for k, v in settings.thresholds.items()]
    for stem, m in settings.models.items():
        numbers += [(f"models.{stem}.thresholds.{k}", v) for k, v in m.thresholds.items()]
    for where, value in numbers:
        tolerance = where.startswith("toleran")
        if not math.isfinite(value) or (tolerance and value < 0):
            expected = "a finite number >= 0" if tolerance else "a finite number"
            raise BiascheckError(f"{path}: {where} must be {expected}, got {value}")


def _read_toml(path: Path) -> dict[str, Any]:
    text = files.read_text(path, "config", "config file", "check --biascheck-config")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BiascheckError(f"config file {path} is not valid TOML: {exc}") from None


def _build(cls: type, table: Any, where: str, path: Path) -> Any:
    if not isinstance(table, dict):
        raise BiascheckError(f"{path}: [{where}] must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            raise BiascheckError(_unknown(key, where, names, path))
        kwargs[key] = _coerce(hints[key], value, _join(where, key), path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, path: Path) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where, path)
    if origin is list:
        if not isinstance(value, list):
            raise BiascheckError(_wrong_type(where, path, "a list", value))
        return [_coerce(args[0], v, f"{where}[{i}]", path) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise BiascheckError(_wrong_type(where, path, "a table", value))
        return {k: _coerce(args[1], v, _join(where, k), path) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, path)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise BiascheckError(_wrong_type(where, path, hint.__name__, value))
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def closest_hint(name: str, valid: typing.Collection[str]) -> str:
    """``did you mean 'x'?`` with the closest valid name, else the list of valid names."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(valid))}"


def _unknown(key: str, where: str, valid: typing.Collection[str], path: Any) -> str:
    return f"{path}: unknown key {_join(where, key)!r}; {closest_hint(key, valid)}"


def _wrong_type(where: str, path: Path, expected: str, value: Any) -> str:
    return f"{path}: {where} must be {expected}, got {type(value).__name__} {value!r}"
