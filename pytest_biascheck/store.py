"""Results on disk: a versioned JSON document that round-trips exactly, and a file cache keyed by
everything that changes results, safe when several processes ask for the same evaluation at once."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import pytest_biascheck
from pytest_biascheck import files
from pytest_biascheck.atomic import atomic_write_text
from pytest_biascheck.errors import BiascheckError, BiascheckWarning
from pytest_biascheck.evaluate import Results
from pytest_biascheck.planning import Plan

#: Bumped whenever a table changes meaning: it is part of the cache key, so old entries miss.
SCHEMA = "biascheck-results/3"
_REMAKE = "write it with `python -m pytest_biascheck evaluate --out FILE` or store.save_results"
_INFINITY = {"Infinity": np.inf, "-Infinity": -np.inf}


def save_results(results: Results, path: str | Path) -> Path:
    """Write ``results`` as a ``SCHEMA`` JSON document, atomically (temp file + rename)."""
    path = Path(path)
    doc = {
        "schema": SCHEMA,
        "model": results.model,
        "sha256": results.sha256,
        "data": results.data,
        "attributes": list(results.attributes),
        "frame": {name: _column(results.frame[name]) for name in results.frame},
        "tables": {name: _table(name, table) for name, table in results.tables.items()},
        "maps": {name: _tensor(tensor) for name, tensor in results.maps.items()},
        "plan": None if results.plan is None else dataclasses.asdict(results.plan),
    }
    text = json.dumps(doc, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def load_results(path: str | Path) -> Results:
    """Read a document written by :func:`save_results`; anything else is refused with one line."""
    path = Path(path)
    data = files.read_bytes(path, "results", "results file", _REMAKE)
    try:
        return _parse(data)
    except ValueError as exc:
        raise BiascheckError(f"results file {path} {exc}; {_REMAKE}") from None


def _parse(data: bytes) -> Results:
    """Results from a document's bytes; a ValueError says what is wrong with them."""
    try:
        doc = json.loads(data)
    except ValueError as exc:  # not UTF-8, or not JSON
        raise ValueError(f"is not JSON ({exc})") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema != SCHEMA:
        raise ValueError(f"has schema {schema!r}, not {SCHEMA!r} (write it with this version)")
    try:
        return Results(
            model=doc["model"],
            sha256=doc["sha256"],
            data=doc["data"],
            attributes=tuple(doc["attributes"]),
            frame=pd.DataFrame({name: _series(c) for name, c in doc["frame"].items()}),
            tables={name: _frame(t) for name, t in doc["tables"].items()},
            maps={name: _from_tensor(m) for name, m in doc["maps"].items()},
            plan=Plan.from_dict(doc["plan"]) if doc.get("plan") else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ValueError(f"is damaged ({type(exc).__name__}: {exc})") from None


def cache_key(
    model_sha256: str, data_spec: str, plan: Plan, extra: Mapping[str, Any] | None = None
) -> str:
    """sha256 of a canonical JSON of everything that changes results: model bytes, data, plan,
    ``extra`` (e.g. the model's task spec), and the biascheck, torch and schema versions."""
    doc = {
        "schema": SCHEMA,
        "biascheck": pytest_biascheck.__version__,
        "torch": torch.__version__,
        "model": model_sha256,
        "data": data_spec,
        "plan": dataclasses.asdict(plan),
        "extra": dict(extra or {}),
    }
    try:
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"cache_key: plan and extra must hold JSON values (str, number, bool, list, dict): {exc}"
        ) from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached(path: str | Path, compute: Callable[[], Results]) -> Results:
    """Results stored at ``path``, or ``compute()`` them once and store them. Concurrent callers
    (pytest-xdist workers, several sessions) serialise on an exclusive lock on ``path + ".lock"``,
    so exactly one computes and the others read its file. A damaged entry is discarded with a
    one-line warning and computed again."""
    path = Path(path)
    results = _read_entry(path, warn=False)
    if results is not None:
        return results
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = _read_entry(path, warn=True)
        if results is None:
            results = compute()
            save_results(results, path)
        return results


def _read_entry(path: Path, warn: bool) -> Results | None:
    """The cache entry at ``path``; None when there is none or it is damaged (then, with
    ``warn``, it is deleted with a warning: the caller holds the lock and computes it again)."""
    if not path.exists():
        return None
    try:
        return _parse(files.read_bytes(path, "results", "cache entry"))
    except (ValueError, BiascheckError) as exc:
        if warn:
            path.unlink(missing_ok=True)
            warnings.warn(
                f"cache entry {path} {exc}; discarded it and evaluating again", BiascheckWarning,
                stacklevel=3,
            )  # fmt: skip
        return None


def _table(name: str, table: pd.DataFrame) -> dict[str, Any]:
    """A table as records (one JSON object per row), with column dtypes and any non-default index."""
    labels = list(table.columns)
    if not all(isinstance(label, str) for label in labels):
        raise ValueError(f"save_results: table {name!r} has non-string column names {labels}")
    encoded = [_encode(table[label].to_numpy()) for label in labels]
    default_index = isinstance(table.index, pd.RangeIndex) and table.index.equals(
        pd.RangeIndex(len(table))
    )
    return {
        "columns": labels,
        "dtypes": [str(table[label].dtype) for label in labels],
        "index": None if default_index else {**_column(table.index), "name": table.index.name},
        "records": [dict(zip(labels, row, strict=True)) for row in zip(*encoded, strict=True)],
    }


def _frame(doc: Mapping[str, Any]) -> pd.DataFrame:
    columns = {
        label: _series({"dtype": dtype, "values": [r[label] for r in doc["records"]]})
        for label, dtype in zip(doc["columns"], doc["dtypes"], strict=True)
    }
    index = doc["index"]
    frame = pd.DataFrame(columns, columns=doc["columns"])
    if index is not None:
        frame.index = pd.Index(_series(index), name=index["name"])
    return frame


def _column(values: pd.Series | pd.Index) -> dict[str, Any]:
    return {"dtype": str(values.dtype), "values": _encode(values.to_numpy())}


def _series(doc: Mapping[str, Any]) -> pd.Series:
    dtype = pd.api.types.pandas_dtype(doc["dtype"])
    return pd.Series(_decode(doc["values"], dtype), dtype=object).astype(dtype)


def _tensor(tensor: torch.Tensor) -> dict[str, Any]:
    array = tensor.detach().cpu().numpy()
    return {"shape": list(array.shape), "dtype": str(array.dtype), "values": _encode(array)}


def _from_tensor(doc: Mapping[str, Any]) -> torch.Tensor:
    dtype = np.dtype(doc["dtype"])
    array = _decode(doc["values"], dtype).astype(dtype).reshape(doc["shape"])
    return torch.from_numpy(array)


def _encode(values: np.ndarray) -> Any:
    """Plain JSON values, nested like ``values``: NaN and missing -> null, infinities -> strings."""
    out = values.astype(object)
    if values.dtype.kind == "f":
        out[np.isnan(values)] = None
        out[np.isposinf(values)] = "Infinity"
        out[np.isneginf(values)] = "-Infinity"
    elif values.dtype.kind == "O":
        out[pd.isna(values)] = None
    return out.tolist()


def _decode(values: Any, dtype: Any) -> np.ndarray:
    """The inverse of :func:`_encode` as an object array, ready for ``astype(dtype)``."""
    out = np.array(values, dtype=object)
    if pd.api.types.is_float_dtype(dtype):
        out[pd.isna(out)] = np.nan
        for text, number in _INFINITY.items():
            out[out == text] = number
    return out
