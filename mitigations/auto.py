"""``python -m mitigations auto --model m.pt``: the gate's failing checks, the command it suggests
for most of them run exactly as printed, and the child kept only when it is better: fewer failing
checks and none that passed now failing (exit 0), else the reason (exit 1)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mitigations.cli import HelpFormatter, Parser
from pytest_biascheck import files
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.suggest import COMMAND


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m mitigations auto",
        formatter_class=HelpFormatter,
        description="Run the recipe the gate suggests for most of a model's failing checks, "
        "then keep the new model only if it fails fewer checks and breaks none.",
    )
    parser.add_argument("--model", required=True, metavar="PATH", help="checkpoint to fix")
    parser.add_argument(
        "--results",
        metavar="FILE",
        help="the gate's biascheck.json; unset: reports/biascheck.json when it holds this model "
        "(same sha256), else the gate is run",
    )
    parser.add_argument(
        "--data", metavar="SPEC", help="evaluation data of the gate run (--biascheck-data)"
    )
    parser.add_argument("--config", metavar="FILE", help="settings file of the gate run")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the chosen command without running it"
    )
    return parser


def gate_outcomes(
    model: Path, results: Path | None, data: str | None, config: str | None
) -> list[dict[str, Any]]:
    """The model's check items from the gate's JSON report when one holds this model (by
    sha256), else from a gate run in a subprocess (its report in a temporary folder)."""
    sha = files.sha256(model, "model", "--model")
    candidates = [results] if results else [Path("reports/biascheck.json")]
    for path in candidates:
        if path.is_file():
            found = _model_checks(json.loads(path.read_text()), sha)
            if found is not None:
                return found
            if results:
                raise BiascheckError(
                    f"--results {results} holds no model with the sha256 of {model}; run "
                    f"pytest --biascheck {model} again, or leave --results out"
                )
    with tempfile.TemporaryDirectory(prefix="biascheck-auto-") as folder:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--tb=no",
                   "--biascheck", str(model), "--biascheck-report", folder]  # fmt: skip
        command += ["--biascheck-data", data] * bool(data)
        command += ["--biascheck-config", config] * bool(config)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode not in (0, 1):
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
            raise BiascheckError(f"the gate on {model} stopped: {tail[0]}")
        found = _model_checks(json.loads((Path(folder) / "biascheck.json").read_text()), sha)
    if found is None:
        raise BiascheckError(f"the gate's report on {model} does not hold the model")
    return found


def _model_checks(report: Mapping[str, Any], sha: str) -> list[dict[str, Any]] | None:
    for entry in report.get("models", []):
        if entry.get("sha256") == sha:
            return [c for c in entry.get("checks", []) if c.get("status") != "info"]
    return None


def choose(outcomes: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[str]]:
    """The suggested command that covers the most failing checks (ties: the one suggested
    first), and those checks' keys; ``None`` when no failing check names a recipe."""
    covered: dict[str, list[str]] = {}
    for outcome in outcomes:
        recipe = outcome.get("recipe") or ""
        if outcome["status"] == "FAILED" and recipe.startswith(COMMAND):
            covered.setdefault(recipe, []).append(outcome["key"])
    if not covered:
        return None, []
    command = max(covered, key=lambda c: len(covered[c]))
    return command, covered[command]


def verdict(rows: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether the child of a before/after report is better than its parent: fewer failing
    checks and no check that passed now failing, with the reason in words."""
    failing = [sum(r[side]["status"] == "FAILED" for r in rows) for side in ("before", "after")]
    broken = [
        r["item"]
        for r in rows
        if r["before"]["status"] == "passed" and r["after"]["status"] == "FAILED"
    ]
    counts = f"{failing[0]} failing checks before, {failing[1]} after"
    if broken:
        return False, f"{counts}; it broke {', '.join(broken)}"
    if failing[1] >= failing[0]:
        return False, f"{counts}: the new model is not better"
    return True, counts


def main(argv: Sequence[str]) -> int:
    """Choose, run and judge; bad input raises BiascheckError (exit 2 from the caller)."""
    from mitigations.__main__ import main as mitigate
    from mitigations.job import output_paths

    args = build_parser().parse_args(argv)
    model = Path(args.model)
    results = Path(args.results) if args.results else None
    outcomes = gate_outcomes(model, results, args.data, args.config)
    failing = [o for o in outcomes if o["status"] == "FAILED"]
    if not failing:
        print(f"auto: {model} passes all {len(outcomes)} checks: nothing to fix")
        return 0
    command, keys = choose(failing)
    if command is None:
        for outcome in failing:
            print(f"auto: {outcome['key']}: {outcome.get('recipe') or 'no recipe suggested'}")
        print(f"auto: none of the {len(failing)} failing checks has a recipe to run")
        return 1
    print(f"auto: {len(keys)} of {len(failing)} failing checks ({', '.join(keys)}) suggest")
    print(f"  {command}")
    if args.dry_run:
        return 0
    argv = shlex.split(command)
    code = mitigate(argv[3:])
    if code != 0:
        return code
    out = Path(argv[argv.index("--out") + 1])
    report = output_paths(out)["report"]
    better, reason = verdict(json.loads(report.read_text())["checks"])
    if better:
        print(f"auto: {out} is better ({reason}); before/after report: {report}")
        return 0
    print(f"auto: stopped: {reason}; {out} is kept for inspection only ({report})")
    return 1
