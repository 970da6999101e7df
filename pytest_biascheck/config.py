"""``[tool.biascheck]`` (pyproject.toml) or ``biascheck.toml`` -> typed, validated settings."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_biascheck.errors import BiascheckError


@dataclass
class ModelSettings:
    """Settings for one model, keyed by its file stem under ``[tool.biascheck.models.<stem>]``."""

    data: str | None = None
    attributes: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    regions: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
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
    tolerance: float = 0.02
    cache: bool = True
    tolerances: dict[str, float] = field(default_factory=dict)
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


def find_config(rootdir: Path) -> Path | None:
    """``biascheck.toml`` wins; else ``pyproject.toml`` if it has a ``[tool.biascheck]`` table."""
    own = rootdir / "biascheck.toml"
    if own.is_file():
        return own
    pyproject = rootdir / "pyproject.toml"
    if pyproject.is_file() and "biascheck" in _read_toml(pyproject).get("tool", {}):
        return pyproject
    return None


def load_settings(path: Path | None) -> Settings:
    """Parse and validate a config file (``None`` gives the defaults)."""
    if path is None:
        return Settings()
    if not path.is_file():
        raise BiascheckError(f"config file {path} does not exist; check --biascheck-config")
    doc = _read_toml(path)
    table = doc.get("tool", {}).get("biascheck", {}) if path.name == "pyproject.toml" else doc
    if path.name != "pyproject.toml" and "tool" in table and "biascheck" in table["tool"]:
        table = table["tool"]["biascheck"]
    settings = _build(
        Settings, table, "tool.biascheck" if path.name == "pyproject.toml" else "", path
    )
    settings.source = str(path)
    _check_shares(settings, path)
    return settings


def _check_shares(settings: Settings, path: Path) -> None:
    """``min_group_share`` must be a fraction of the images in [0, 1)."""
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


def validate_thresholds(settings: Settings, check_names: typing.Collection[str]) -> None:
    """Every threshold key and ``checks`` entry must name a known check; errors point at the closest."""
    tables = [
        ("thresholds", settings.thresholds),
        ("checks", settings.checks),
        ("tolerances", settings.tolerances),
    ]
    for stem, m in settings.models.items():
        tables += [(f"models.{stem}.thresholds", m.thresholds), (f"models.{stem}.checks", m.checks)]
    for where, table in tables:
        for key in table:
            if key not in check_names:
                raise BiascheckError(_unknown(key, where, check_names, settings.source))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
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


def _unknown(key: str, where: str, valid: typing.Collection[str], path: Any) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return f"{path}: unknown key {_join(where, key)!r}; {hint}"


def _wrong_type(where: str, path: Path, expected: str, value: Any) -> str:
    return f"{path}: {where} must be {expected}, got {type(value).__name__} {value!r}"
