"""Sharded evaluation: shards cover every image once, torchrun (gloo, 2 processes) gives the numbers
of one process, an empty shard is filled in, batch size changes nothing; the CLI around it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing
from hypothesis import given
from hypothesis import strategies as st

from pytest_biascheck.__main__ import main
from pytest_biascheck.config import Settings, load_settings
from pytest_biascheck.data import open_data
from pytest_biascheck.distributed import gather_pass, shard_indices
from pytest_biascheck.evaluate import evaluate, finish, run_pass
from pytest_biascheck.model import load_checkpoint
from pytest_biascheck.planning import plan_for
from pytest_biascheck.state import BiascheckState
from pytest_biascheck.store import load_results, save_results
from tests.test_store import assert_results_match

TOLERANCE = 1e-6
#: float32 maps from batches of different size differ by rounding (~1e-7 relative).
MAP_RTOL = 1e-5


@given(st.integers(0, 300), st.integers(1, 9))
def test_shards_cover_every_image_exactly_once(n, world):
    shards = [shard_indices(n, rank, world) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize(("rank", "world"), [(2, 2), (-1, 2), (0, 0)])
def test_shard_of_a_rank_outside_the_world_is_refused(rank, world):
    with pytest.raises(ValueError, match="rank"):
        shard_indices(10, rank, world)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "biascheck.toml"
    path.write_text('bootstrap = 200\nchecks = ["feature_leakage", "accuracy"]\n')
    return path


def cli(model: Path, data: str, out: Path, config: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(model), "--data", data, "--out", str(out),
            "--config", str(config), *extra]  # fmt: skip


def test_torchrun_on_two_processes_gives_the_single_process_numbers(
    tmp_path, tiny_checkpoint, config
):
    data = "synthfaces:n=96"
    assert main(cli(tiny_checkpoint, data, tmp_path / "one.json", config)) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "pytest_biascheck", *cli(tiny_checkpoint, data, tmp_path / "two.json", config)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "96 images, 2 processes" in done.stdout
    one, two = load_results(tmp_path / "one.json"), load_results(tmp_path / "two.json")
    assert one.frame["index"].tolist() == list(range(96))
    assert {
        "mask_score",
        "energy",
        "group_summary",
        "divergence",
        "feature_leakage",
        "leakage",
    } <= set(one.tables)
    assert_results_match(two, one, atol=TOLERANCE)


def test_results_do_not_depend_on_batch_size(tmp_path, tiny_checkpoint, config):
    outs = {size: tmp_path / f"b{size}.json" for size in (1, 7, 64)}
    for size, out in outs.items():
        args = cli(tiny_checkpoint, "synthfaces:n=20", out, config, "--batch-size", str(size))
        assert main(args) == 0
    reference = load_results(outs[64])
    for size in (1, 7):
        assert_results_match(load_results(outs[size]), reference, atol=TOLERANCE, rtol=MAP_RTOL)


def test_cli_results_are_the_plugins_results(tmp_path, tiny_checkpoint, config):
    assert main(cli(tiny_checkpoint, "synthfaces:n=20", tmp_path / "cli.json", config)) == 0
    settings = load_settings(config)
    settings.data = "synthfaces:n=20"
    state = BiascheckState(settings, {"tiny.pt": load_checkpoint(tiny_checkpoint)})
    plugin = state.results_for("tiny.pt")
    assert_results_match(load_results(tmp_path / "cli.json"), plugin)


def _shard_worker(rank: int, init: str, checkpoint: str, shards: list, folder: str) -> None:
    """One process of a 2-process gloo group: evaluate its shard, gather, summarise, save."""
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        model = load_checkpoint(checkpoint)
        dataset = open_data("synthfaces:n=12", "test", 32)
        _, plan = plan_for(model, dataset, Settings(bootstrap=200, checks=["feature_leakage"]))
        state = gather_pass(run_pass(model, dataset, plan, 4, "cpu", indices=shards[rank]))
        save_results(finish(state, model, "synthfaces:n=12", plan), Path(folder) / f"{rank}.json")
    finally:
        dist.destroy_process_group()


def test_every_rank_gets_the_full_pass_even_from_an_empty_shard(tmp_path, tiny_checkpoint):
    shards = [list(range(12)), []]
    args = (str(tmp_path / "init"), str(tiny_checkpoint), shards, str(tmp_path))
    torch.multiprocessing.spawn(_shard_worker, args=args, nprocs=2)
    model = load_checkpoint(tiny_checkpoint)
    dataset = open_data("synthfaces:n=12", "test", 32)
    _, plan = plan_for(model, dataset, Settings(bootstrap=200, checks=["feature_leakage"]))
    single = evaluate(model, dataset, "synthfaces:n=12", plan, batch_size=4, device="cpu")
    assert "feature_leakage" in single.tables
    for rank in (0, 1):
        assert_results_match(load_results(tmp_path / f"{rank}.json"), single, atol=TOLERANCE)


def test_gather_pass_without_a_process_group_returns_the_pass_untouched(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    dataset = open_data("synthfaces:n=4", "test", 32)
    _, plan = plan_for(model, dataset, Settings(bootstrap=10, checks=["feature_leakage"]))
    state = run_pass(model, dataset, plan, 4, "cpu")
    assert gather_pass(state) is state


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "evaluate" in capsys.readouterr().out


def test_bad_input_is_one_line_on_stderr_and_exit_code_4(tmp_path, capsys, config):
    assert main(cli(tmp_path / "missing.pt", "synthfaces:n=4", tmp_path / "o.json", config)) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("biascheck: error: ") and "missing.pt" in err and "\n" not in err
    assert not (tmp_path / "o.json").exists()
