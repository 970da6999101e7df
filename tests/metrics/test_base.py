"""The accumulator contract, checked on every metric: results do not depend on batch size, shards
merge in either order, state_dict round-trips through torch.save, and all_reduce over two gloo
processes equals one process."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.metrics import (
    Accumulator,
    GroupRates,
    HeatmapScore,
    LeakageProbe,
    MaskScore,
    PairwiseMCC,
    PredictionDivergence,
    ProportionalEnergy,
)

N = 81  # odd, so the two shards of the distributed test have unequal lengths
ATTRIBUTES = ("Smiling", "Young")


class Extremes(Accumulator):
    """Test-only accumulator that uses every reduce rule."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(3, dtype=torch.float64), "sum")
        self.add_state("high", torch.full((3,), -torch.inf), "max")
        self.add_state("low", torch.full((3,), torch.inf), "min")
        self.add_state("index", torch.zeros(0, dtype=torch.int64), "cat")
        self.add_state("rows", torch.zeros(0, 3), "cat")
        self.add_state("flags", torch.zeros(0, dtype=torch.bool), "cat")

    def update(self, x: torch.Tensor, index: torch.Tensor) -> None:
        self.accumulate("total", x.sum(0, dtype=torch.float64))
        self.accumulate("high", x.amax(0))
        self.accumulate("low", x.amin(0))
        self.accumulate("index", index)
        self.accumulate("rows", x)
        self.accumulate("flags", x[:, 0] > 0)

    def compute(self) -> dict[str, pd.DataFrame]:
        order = self.image_order()
        rows = self.state("rows")[order]
        return {
            "summary": pd.DataFrame({k: self.state(k).numpy() for k in ("total", "high", "low")}),
            "rows": pd.DataFrame(
                {
                    "index": self.state("index")[order].numpy(),
                    "first": rows[:, 0].numpy(),
                    "flag": self.state("flags")[order].numpy(),
                }
            ),
        }


def make_data(n: int = N) -> dict:
    """Deterministic inputs for every case; image indices are shuffled so ordering matters."""
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(n, 2, 4, 4, generator=g)
    cams[::9] = 0.0
    male = torch.randint(0, 2, (n,), generator=g)
    return {
        "index": torch.randperm(n, generator=g) + 1000,
        "cams": cams,
        "masks": torch.rand(n, 2, 16, 16, generator=g) > 0.6,
        "labels": torch.randint(0, 2, (n, 2), generator=g),
        "predictions": torch.randint(0, 2, (n, 2), generator=g),
        "probabilities": torch.rand(n, 2, generator=g, dtype=torch.float64),
        "male": male,
        "place": torch.randint(0, 3, (n,), generator=g),
        "features": torch.randn(n, 4, generator=g) + male[:, None],
        "x": torch.randn(n, 3, generator=g),
    }


Factory = Callable[[], Accumulator]
Feed = Callable[[Accumulator, dict], None]
CASES: dict[str, tuple[Factory, Feed]] = {
    "mask_score": (
        lambda: MaskScore(ATTRIBUTES, {"Male": 2}, n_resamples=200),
        lambda m, d: m.update(d["cams"], d["masks"], d["index"], d["labels"], {"Male": d["male"]}),
    ),
    "mask_score_at_input_size": (
        lambda: MaskScore(ATTRIBUTES, resolution="input", n_resamples=200),
        lambda m, d: m.update(d["cams"], d["masks"][:, 0], d["index"]),
    ),
    "heatmap_score": (
        lambda: HeatmapScore(ATTRIBUTES, {"place": 3}, n_resamples=200),
        lambda m, d: m.update(
            d["cams"], d["cams"][:, 0], d["index"], d["labels"], {"place": d["place"]}
        ),
    ),
    "energy": (
        lambda: ProportionalEnergy(ATTRIBUTES),
        lambda m, d: m.update(d["cams"], d["masks"], d["predictions"], d["labels"]),
    ),
    "group_rates": (
        lambda: GroupRates(ATTRIBUTES, {"Male": 2, "place": 3}),
        lambda m, d: m.update(
            d["labels"], d["predictions"], {"Male": d["male"], "place": d["place"]}
        ),
    ),
    "mcc": (
        lambda: PairwiseMCC(ATTRIBUTES),
        lambda m, d: m.update(d["labels"], d["predictions"]),
    ),
    "divergence": (
        lambda: PredictionDivergence(ATTRIBUTES, {"place": 3}, bins=5),
        lambda m, d: m.update(d["probabilities"], {"place": d["place"]}),
    ),
    "leakage": (
        lambda: LeakageProbe(4, {"Male": 2}, iterations=30),
        lambda m, d: m.update(d["features"], {"Male": d["male"]}, d["index"]),
    ),
    "extremes": (Extremes, lambda m, d: m.update(d["x"], d["index"])),
}


def rows(data: dict, part: slice | torch.Tensor) -> dict:
    return {key: value[part] for key, value in data.items()}


def batches(data: dict, size: int) -> Iterator[dict]:
    for start in range(0, len(data["index"]), size):
        yield rows(data, slice(start, start + size))


def fed(case: str, data: dict, size: int = N) -> Accumulator:
    make, feed = CASES[case]
    metric = make()
    for batch in batches(data, size):
        feed(metric, batch)
    return metric


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    else:
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def data() -> dict:
    return make_data()


@pytest.fixture(scope="module")
def reference(data: dict) -> dict:
    return {case: fed(case, data).compute() for case in CASES}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("size", [1, 7, 64])
def test_result_does_not_depend_on_batch_size(case, size, data, reference) -> None:
    assert_same(fed(case, data, size).compute(), reference[case])


@pytest.mark.parametrize("case", CASES)
def test_shards_merge_in_either_order(case, data, reference) -> None:
    first, second = rows(data, slice(0, 30)), rows(data, slice(30, None))
    assert_same(fed(case, first, 8).merge(fed(case, second, 5)).compute(), reference[case])
    assert_same(fed(case, second, 64).merge(fed(case, first, 3)).compute(), reference[case])


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trip_and_merge_of_saved_shards(case, data, reference) -> None:
    buffers = []
    for part in (slice(0, 40), slice(40, None)):
        buffer = io.BytesIO()
        torch.save(fed(case, rows(data, part), 16).state_dict(), buffer)
        buffer.seek(0)
        buffers.append(buffer)
    merged = CASES[case][0]()
    for buffer in buffers:
        shard = CASES[case][0]()
        shard.load_state_dict(torch.load(buffer, weights_only=True))
        merged.merge(shard)
    assert_same(merged.compute(), reference[case])


def test_reset_forgets_everything(data) -> None:
    metric = fed("group_rates", data)
    metric.reset()
    CASES["group_rates"][1](metric, rows(data, slice(0, 10)))
    assert_same(metric.compute(), fed("group_rates", rows(data, slice(0, 10))).compute())


def test_sum_states_are_float64_and_merge_needs_same_configuration() -> None:
    with pytest.raises(ValueError, match="float64"):
        Accumulator().add_state("n", torch.zeros(2), "sum")
    with pytest.raises(ValueError, match="different arguments"):
        GroupRates(ATTRIBUTES, {"Male": 2}).merge(GroupRates(ATTRIBUTES, {"Male": 3}))
    with pytest.raises(ValueError, match="cannot merge"):
        GroupRates(ATTRIBUTES, {"Male": 2}).merge(PairwiseMCC(ATTRIBUTES))


def test_loading_a_foreign_state_is_a_one_line_user_error(data) -> None:
    saved = fed("group_rates", data).state_dict()
    with pytest.raises(BiascheckError) as error:
        GroupRates(ATTRIBUTES, {"Male": 2}).load_state_dict(saved)
    assert "\n" not in str(error.value) and "by_level" in str(error.value)
    with pytest.raises(BiascheckError, match="missing"):
        GroupRates(ATTRIBUTES, {"Male": 2, "place": 3}).load_state_dict(
            {"overall": saved["overall"]}
        )


def test_an_image_counted_twice_is_refused(data) -> None:
    metric = fed("mask_score", data)
    with pytest.raises(BiascheckError, match="twice"):
        metric.merge(fed("mask_score", rows(data, slice(0, 5)))).compute()


def test_all_reduce_without_a_process_group_changes_nothing(data, reference) -> None:
    metric = fed("extremes", data)
    metric.all_reduce()
    assert_same(metric.compute(), reference["extremes"])


def _all_reduce_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        data = make_data()
        mine = rows(data, torch.arange(rank, N, world))
        results = {}
        for case in CASES:
            metric = fed(case, mine, 16)
            metric.all_reduce()
            results[case] = metric.compute()
        if rank == 0:
            pd.to_pickle(results, out)
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_processes_equals_one_process(tmp_path, reference) -> None:
    out = tmp_path / "results.pkl"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_all_reduce_worker, args=(2, init, str(out)), nprocs=2, join=True)
    distributed = pd.read_pickle(out)
    for case in CASES:
        assert_same(distributed[case], reference[case])
