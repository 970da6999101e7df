"""Results store: exact JSON round trip, refusal of foreign files, cache keys, and the cache race."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pandas.testing import assert_frame_equal

import pytest_biascheck
from pytest_biascheck.config import ModelSettings, Settings
from pytest_biascheck.data import open_data
from pytest_biascheck.errors import BiascheckError, BiascheckWarning
from pytest_biascheck.evaluate import Results, evaluate
from pytest_biascheck.model import load_checkpoint
from pytest_biascheck.planning import Plan, plan_for
from pytest_biascheck.store import SCHEMA, cache_key, cached, load_results, save_results

PLAN = Plan(("Smiling",), {"Male": 2}, {"Smiling": "mouth"}, bootstrap=100, seed=3)


def assert_results_match(
    actual: Results, expected: Results, atol: float = 0.0, rtol: float = 0.0
) -> None:
    """Every number, name and dtype of two Results agree: exactly, or within ``atol + rtol * |expected|``."""
    same = ("model", "sha256", "data", "attributes", "plan")
    assert [getattr(actual, k) for k in same] == [getattr(expected, k) for k in same]
    tolerance = (
        {"check_exact": True}
        if atol == rtol == 0
        else {"check_exact": False, "rtol": rtol, "atol": atol}
    )
    assert_frame_equal(actual.frame, expected.frame, obj="frame", **tolerance)
    assert list(actual.tables) == list(expected.tables)
    for name, table in expected.tables.items():
        assert_frame_equal(actual.tables[name], table, obj=f"table {name}", **tolerance)
    assert list(actual.maps) == list(expected.maps)
    for name, tensor in expected.maps.items():
        torch.testing.assert_close(
            actual.maps[name], tensor, rtol=rtol, atol=atol, equal_nan=True, msg=f"map {name}"
        )


def example_results() -> Results:
    """Hand-made Results with the awkward cases: float32 columns, NaN, infinities, missing strings,
    a named string index, an empty table, scalar, empty and integer maps."""
    frame = pd.DataFrame(
        {
            "index": np.arange(5, dtype=np.int64),
            "z:Smiling": np.array([0.1, -1e-40, 3.4e38, np.nan, -0.0], dtype=np.float32),
            "y:Smiling": np.array([1, 0, 1, 0, 1], dtype=np.float32),
            "g:Male": np.array([0, 1, 1, 0, 1], dtype=np.int64),
        }
    )
    cells = pd.DataFrame(
        {
            "attribute": pd.Series(["Smiling", "Smiling", None], dtype="str"),
            "n": np.array([3, 2, 0], dtype=np.int64),
            "mean": [1 / 3, np.inf, np.nan],
            "low": [-np.inf, 0.1 + 0.2, np.nan],
            "flag": [True, False, True],
        }
    )
    mcc = pd.DataFrame(
        [[1.0, -0.25]], columns=["Smiling", "Male"], index=pd.Index(["Smiling"], name="attribute")
    )
    empty = pd.DataFrame(columns=["attribute", "value"])
    maps = {
        "by_class": torch.rand(1, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
        "image_n": torch.tensor(5.0, dtype=torch.float64),
        "sample_index": torch.arange(4),
        "sample_maps": torch.tensor([[float("nan"), float("inf")], [1e-45, -2.5]]),
        "nothing": torch.zeros(0, 3),
    }  # fmt: skip
    tables = {"cells": cells, "mcc_labels": mcc, "empty": empty}
    return Results("tiny", "ab" * 32, "synthfaces:n=5", ("Smiling", "Male"), frame, tables, maps)


def test_round_trip_is_exact_and_strict_json(tmp_path):
    results = example_results()
    path = save_results(results, tmp_path / "sub" / "results.json")
    assert_results_match(load_results(path), results)
    strict = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))
    assert strict["schema"] == SCHEMA
    assert strict["tables"]["cells"]["records"][2] == {
        "attribute": None, "n": 0, "mean": None, "low": None, "flag": True
    }  # fmt: skip
    assert strict["tables"]["cells"]["records"][1]["mean"] == "Infinity"
    assert strict["maps"]["by_class"]["shape"] == [1, 2, 3, 3]
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


@settings(max_examples=40, deadline=None)
@given(arrays(st.sampled_from([np.float32, np.float64]), st.integers(0, 12)))
def test_any_float_array_round_trips_bit_for_bit(values):
    results = example_results()
    results.frame = pd.DataFrame({"z:Smiling": values})
    results.maps = {"m": torch.from_numpy(values.copy()).reshape(1, -1, 1)}
    with tempfile.TemporaryDirectory() as folder:
        back = load_results(save_results(results, Path(folder) / "r.json"))
    column, tensor = back.frame["z:Smiling"].to_numpy(), back.maps["m"]
    assert column.dtype == values.dtype and tensor.shape == (1, len(values), 1)
    nan = np.isnan(values)  # NaN payloads are not kept: null is NaN
    for got in (column, tensor.flatten().numpy()):
        assert got.dtype == values.dtype
        assert np.array_equal(np.isnan(got), nan)
        assert got[~nan].tobytes() == values[~nan].tobytes()


def test_evaluated_results_round_trip(tmp_path, tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    dataset = open_data("synthfaces:n=16", "test", 32)
    config = Settings(bootstrap=50, checks=["feature_leakage"])
    config.models["tiny"] = ModelSettings(protected=["Male*Young", "Black_Hair"])
    results = evaluate(model, dataset, "synthfaces:n=16", plan_for(model, dataset, config)[1])
    assert {"mask_score", "group_rates", "mcc_labels", "feature_leakage", "leakage"} <= set(
        results.tables
    )
    assert results.plan.levels["Male*Young"] == ("0*0", "0*1", "1*0", "1*1")
    assert_results_match(load_results(save_results(results, tmp_path / "r.json")), results)


@pytest.mark.parametrize(
    "content",
    [
        None,
        b"\x89PNG\r\n\x1a\n\x00\x00",
        b'{"schema": "biascheck-results/3", "model": "m"',
        b"[1, 2, 3]",
        b'{"schema": "biascheck-results/0"}',
        b'{"schema": "biascheck-results/3", "model": "m", "sha256": "x", "data": "d"}',
        b'{"schema": "biascheck-results/3", "model": "m", "sha256": "x", "data": "d", '
        b'"attributes": [], "frame": [], "tables": {}, "maps": {}}',
    ],
    ids=["missing", "binary", "truncated", "list", "old-schema", "no-frame", "frame-not-object"],
)
def test_a_file_that_is_not_a_results_document_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BiascheckError) as caught:
        load_results(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert "pytest_biascheck evaluate" in message


def test_cache_key_changes_with_every_input_and_only_then(monkeypatch):
    base = cache_key("a" * 64, "synthfaces:n=96", PLAN, {"task": {"head": "multilabel"}, "k": 1})
    assert len(base) == 64 and set(base) <= set("0123456789abcdef")
    assert base == cache_key(
        "a" * 64, "synthfaces:n=96", PLAN, {"k": 1, "task": {"head": "multilabel"}}
    )
    variants = [
        ("b" * 64, "synthfaces:n=96", PLAN, {"task": {"head": "multilabel"}, "k": 1}),
        ("a" * 64, "synthfaces:n=97", PLAN, {"task": {"head": "multilabel"}, "k": 1}),
        ("a" * 64, "synthfaces:n=96", Plan(("Smiling",), {"Male": 2}, {"Smiling": "eyes"}, 100, 3),
         {"task": {"head": "multilabel"}, "k": 1}),
        ("a" * 64, "synthfaces:n=96", Plan(("Smiling",), {"Male": 2}, {"Smiling": "mouth"}, 100, 4),
         {"task": {"head": "multilabel"}, "k": 1}),
        ("a" * 64, "synthfaces:n=96", Plan(("Smiling",), {"Male": 3}, {"Smiling": "mouth"}, 100, 3),
         {"task": {"head": "multilabel"}, "k": 1}),
        ("a" * 64, "synthfaces:n=96", PLAN, {"task": {"head": "multiclass"}, "k": 1}),
        ("a" * 64, "synthfaces:n=96", PLAN, {"task": {"head": "multilabel"}, "k": 2}),
    ]  # fmt: skip
    keys = {cache_key(*v) for v in variants}
    assert len(keys) == len(variants) and base not in keys
    monkeypatch.setattr(pytest_biascheck, "__version__", "99.0")
    assert (
        cache_key("a" * 64, "synthfaces:n=96", PLAN, {"task": {"head": "multilabel"}, "k": 1})
        != base
    )
    with pytest.raises(ValueError, match="extra"):
        cache_key("a" * 64, "d", PLAN, {"bad": object()})


def _race(path: str, marker: str, out: str, barrier) -> None:
    """One contender: wait for the other, then ask the cache; count computations in ``marker``."""

    def compute() -> Results:
        with open(marker, "a") as fh:
            fh.write("computed\n")
        time.sleep(0.5)
        return example_results()

    barrier.wait()
    results = cached(path, compute)
    Path(out).write_bytes(pickle.dumps(results))


def test_two_processes_racing_on_one_key_compute_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    path, marker = tmp_path / "cache" / "key.json", tmp_path / "computed.txt"
    outs = [tmp_path / f"out{i}.pkl" for i in range(2)]
    workers = [
        context.Process(target=_race, args=(str(path), str(marker), str(out), barrier))
        for out in outs
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert marker.read_text().splitlines() == ["computed"]
    for out in outs:
        assert_results_match(pickle.loads(out.read_bytes()), example_results())
    again = cached(path, lambda: pytest.fail("the cached file should have been read"))
    assert_results_match(again, example_results())
    assert sorted(p.name for p in path.parent.iterdir()) == ["key.json", "key.json.lock"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "old-schema"])
def test_a_damaged_cache_entry_is_discarded_with_one_warning_and_computed_again(tmp_path, damage):
    path = tmp_path / "cache" / "key.json"
    cached(path, example_results)
    whole = path.read_bytes()
    path.write_bytes(
        {"truncate": whole[: len(whole) // 2], "garbage": b"\x00\xff" * 10,
         "old-schema": b'{"schema": "biascheck-results/0"}'}[damage]
    )  # fmt: skip
    calls = []

    def compute() -> Results:
        calls.append(1)
        return example_results()

    with pytest.warns(BiascheckWarning) as caught:
        assert_results_match(cached(path, compute), example_results())
    assert len(calls) == 1 and len(caught) == 1
    message = str(caught[0].message)
    assert str(path) in message and "evaluating again" in message and "\n" not in message
    assert path.read_bytes() == whole  # stored again, whole
    assert_results_match(cached(path, lambda: pytest.fail("not read back")), example_results())
