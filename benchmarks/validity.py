"""Validity suite: does each check fail the models that took a shortcut and pass those that did not?

    python benchmarks/validity.py                       # every case (about an hour, 2 cores)
    python benchmarks/validity.py --quick               # a few minutes; exit 1 if a gate misfires
    python benchmarks/validity.py --write docs/validity.md --json reports/validity.json

Each case trains twins that differ only in the correlation of their training data: a biased twin,
whose data carries a shortcut, and a balanced twin. They are evaluated by the gate's own planning,
evaluation pass and check catalogue on a balanced test set, and every check is read for the case's
target. A biased twin "took the shortcut" when its worst-group accuracy is at least 20 points
below its balanced twin's (same seed). A check separates a case when, at its default threshold, it
fails every twin that took the shortcut and passes every balanced twin. Each case also scores an
untrained model, and the background case a model trained where the background always gives the
class (bias 1.0): attention checks must fail both. Trained models are cached in ``--work``. The
suite runs with the fixtures' pinned kernels, 2 threads and deterministic algorithms.

The committed fixture models are the seed-0 twins of the cases they were built for (the same recipe
in ``fixtures/build.py``); the thresholds were chosen on them (``tuned``) and the other cases and
seeds were never used to choose anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pytest_biascheck.checks import BUILTIN
from pytest_biascheck.config import ModelSettings, Settings
from pytest_biascheck.data import open_data
from pytest_biascheck.evaluate import Results, evaluate
from pytest_biascheck.metrics.attention import RESOLUTIONS
from pytest_biascheck.model import LoadedModel, ModelSpec, load_checkpoint
from pytest_biascheck.nets import SmallResNet
from pytest_biascheck.planning import plan_for

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fixtures_build", ROOT / "fixtures" / "build.py")
build = importlib.util.module_from_spec(_spec)  # the fixtures' recipe, shared with their build
_spec.loader.exec_module(build)

#: A biased twin took the shortcut when its worst-group accuracy is this far below its twin's.
SHORTCUT_GAP = 0.20
#: Seeds of the full run (the seed draws the training images and the initial weights); a quick run
#: trains seed 0 only. A face model trains for 10 to 20 minutes on 2 cores, so face cases run one
#: (``Case.seeds``).
SEEDS = (0, 1)
#: Gates that keep a fix from trading accuracy away; not bias measures, so a biased model that kept
#: its average accuracy passes them by design and they are not asked to separate twins.
GUARDS = frozenset({"accuracy", "class_accuracy"})
BEGIN, END = "<!-- validity:begin -->", "<!-- validity:end -->"


@dataclass(frozen=True)
class Twin:
    """One training distribution of a case; ``fixture`` names the committed seed-0 model."""

    label: str
    train: str
    biased: bool
    fixture: str | None = None
    quick: bool = False  # part of the quick run


@dataclass(frozen=True)
class Case:
    """A shortcut: what the models predict, what they are checked on, and their twins."""

    name: str
    shortcut: str
    test: str
    attributes: tuple[str, ...]
    target: str
    group: str
    region: str
    arch: dict[str, Any]
    epochs: int
    batch: int
    twins: tuple[Twin, ...]
    tuned: bool = False
    extra: tuple[Twin, ...] = ()  # scored alone (no twin, no seed 1): a model fully on the shortcut
    seeds: tuple[int, ...] = SEEDS  # of the full run

    @property
    def settings(self) -> Settings:
        own = ModelSettings(
            attributes=[self.target],
            protected=[self.group],
            regions={self.target: self.region},
            checks=["feature_leakage"],  # fit the feature probe too: the docs show its values
        )
        return Settings(models={self.name: own})


FACES = build.KINDS["faces"]["attributes"]
BIRDS = build.KINDS["birds"]["attributes"]
FACES_TRAIN = "synthfaces:n=8000,freq=Black_Hair@0.5"
CASES: tuple[Case, ...] = (
    Case(
        "birds-background",
        "SynthBirds: the background (land/water) gives the class; the bird is smaller and subtler",
        "synthbirds:n=2000",
        BIRDS,
        "Waterbird",
        "place",
        "bird",
        build.BIRDS_ARCH,
        2,
        32,
        (
            Twin("balanced", "synthbirds:n=6000,bias=0.5", False, "birds_balanced", quick=True),
            *(Twin(f"bias {b}", f"synthbirds:n=6000,bias={b}", True) for b in (0.8, 0.9)),
            Twin("bias 0.95", "synthbirds:n=6000,bias=0.95", True, "birds_biased", quick=True),
            Twin("bias 0.99", "synthbirds:n=6000,bias=0.99", True),
        ),
        tuned=True,
        extra=(Twin("background only (bias 1.0)", "synthbirds:n=6000,bias=1.0", True, quick=True),),
    ),
    Case(
        "faces-smiling-hair",
        "SynthFaces: black hair (a large region) agrees with Smiling (a small mouth) in 95%",
        "synthfaces:n=2000",
        FACES,
        "Smiling",
        "Black_Hair",
        "mouth",
        build.FACES_ARCH,
        4,
        32,
        (
            Twin("balanced", FACES_TRAIN, False, "faces_balanced", quick=True),
            Twin(
                "corr 0.95",
                build.FIXTURES["faces_biased"]["train"],
                True,
                "faces_biased",
                quick=True,
            ),
        ),
        tuned=True,
        seeds=(0,),
    ),
    Case(
        "faces-eyeglasses-male",
        "SynthFaces: Male agrees with Eyeglasses in 97% (both 25%); glasses are faint and absent "
        "in most test images",
        "synthfaces:n=2000",
        FACES,
        "Eyeglasses",
        "Male",
        "eyeglasses",
        build.FACES_ARCH,
        4,
        32,
        (
            Twin(
                "balanced",
                "synthfaces:n=8000,freq=Eyeglasses@0.25,freq=Male@0.25,glasses=0.35",
                False,
            ),
            Twin(
                "corr 0.97",
                "synthfaces:n=8000,freq=Eyeglasses@0.25,freq=Male@0.25,glasses=0.35,"
                "corr=Eyeglasses~Male@0.97",
                True,
            ),
        ),
        seeds=(0,),
    ),
    Case(
        "birds-corner-mark",
        "SynthBirds: a 5-pixel magenta mark in the corner agrees with the class in 95%; the "
        "background carries nothing",
        "synthbirds:n=2000,mark=0.5",
        BIRDS,
        "Waterbird",
        "mark",
        "bird",
        build.BIRDS_ARCH,
        2,
        32,
        (
            Twin("balanced", "synthbirds:n=6000,bias=0.5,mark=0.5", False, quick=True),
            Twin("mark 0.95", "synthbirds:n=6000,bias=0.5,mark=0.95", True, quick=True),
        ),
    ),
)


@dataclass
class Row:
    """One scored model: its case, twin, seed and every check's measurement for the case target."""

    case: str
    twin: str
    seed: int | None
    biased: bool
    role: str  # "balanced", "biased", "untrained" or "extra"
    train_seconds: float | None
    values: dict[str, dict[str, Any]]
    took_shortcut: bool | None = None


def train_spec(twin: Twin, seed: int) -> str:
    """The twin's training data for a seed (seed 1 also draws other images). A quick run trains
    the same models as the full run: at half the data the balanced corner-mark twin's map of
    waterbirds left the bird (docs/validity.md), so a smaller budget would test another model."""
    return twin.train if seed == 0 else f"{twin.train},seed={seed}"


def model_for(
    case: Case, twin: Twin | None, seed: int, work: Path
) -> tuple[torch.nn.Module, float | None]:
    """The committed fixture for a seed-0 fixture twin, else a model trained here (cached in
    ``work``); ``twin=None`` gives the untrained model of the case's architecture."""
    if twin is None:
        torch.manual_seed(seed)
        return SmallResNet(len(case.attributes), **case.arch).eval(), None
    if seed == 0 and twin.fixture:
        return load_checkpoint(build.HERE / f"{twin.fixture}.pt").module, None
    spec = train_spec(twin, seed)
    recipe = {"arch": case.arch, "attributes": case.attributes, "train": spec, "seed": seed,
              "epochs": case.epochs, "batch": case.batch, "torch": str(torch.__version__)}  # fmt: skip
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = work / f"{case.name}-{key}.pt"
    model = SmallResNet(len(case.attributes), **case.arch)
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), saved["seconds"]
    torch.manual_seed(seed)
    start = time.perf_counter()
    dataset = open_data(spec, "train", build.IMAGE)
    data = build.render_all(dataset)
    columns = [dataset.attributes.index(a) for a in case.attributes]
    build.train(model, spec_of(case), data, columns, case.epochs, case.batch, seed=seed)
    seconds = round(time.perf_counter() - start, 1)
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "seconds": seconds, "recipe": recipe}, path)
    return model.eval(), seconds


def spec_of(case: Case) -> ModelSpec:
    return ModelSpec(case.attributes, (3, build.IMAGE, build.IMAGE), target_layer="layer4")


def score(case: Case, module: torch.nn.Module, bootstrap: int) -> dict[str, dict[str, Any]]:
    """Every check of the catalogue for the case's target, plus worst-group accuracy and the mask
    score at both resolutions (raw, chance and lift), from one evaluation pass."""
    loaded = LoadedModel(
        module, spec_of(case), Path(f"{case.name}.pt"), "0" * 64, build.ARCH, case.arch
    )
    dataset = open_data(case.test, "test", build.IMAGE)
    settings = dataclasses.replace(case.settings, bootstrap=bootstrap)
    scope, plan = plan_for(loaded, dataset, settings)
    results = evaluate(loaded, dataset, case.test, plan, batch_size=100)
    values = {}
    for check in BUILTIN:
        for target in check.targets(scope):
            if target.attribute not in (case.target, case.group) or (
                target.attribute == case.group and check.name != "feature_leakage"
            ):  # the case's target; the feature probe is per protected attribute
                continue
            try:
                measured = check.measure(results, target, scope)
            except Exception as exc:  # a table this evaluation does not have (feature probe)
                values[check.name] = {"error": str(exc)}
                continue
            values[check.name] = {
                "value": measured.value, "low": measured.low, "high": measured.high,
                "n": measured.n, "passes": check.passes(measured.value, check.threshold),
            }  # fmt: skip
    values.update(_mask_resolutions(results, case))
    return values


def _mask_resolutions(results: Results, case: Case) -> dict[str, dict[str, Any]]:
    """The mask score at each resolution: raw Attention-IoU, chance level and lift."""
    table = results.table("mask_score")
    out = {}
    for resolution in RESOLUTIONS:
        row = table[
            (table["attribute"] == case.target) & (table["group"] == "")
            & (table["label"] == -1) & (table["resolution"] == resolution)
        ].iloc[0]  # fmt: skip
        out[f"mask_score@{resolution}"] = {
            "value": row["lift"], "low": row["lift_low"], "high": row["lift_high"],
            "raw": row["mean"], "chance": row["chance"], "uniform": row["chance_uniform"],
            "centre": row["chance_centre"], "n": int(row["n"]),
        }  # fmt: skip
    return out


def run(cases: Sequence[Case], work: Path, quick: bool, bootstrap: int) -> list[Row]:
    """Score every twin of every case at every seed (quick: the quick twins at seed 0), each
    case's extra models and an untrained model."""
    rows = []
    for case in cases:
        for seed in (0,) if quick else case.seeds:
            twins = {}
            for twin in (t for t in case.twins if t.quick or not quick):
                module, seconds = model_for(case, twin, seed, work)
                role = "biased" if twin.biased else "balanced"
                twins[twin.label] = Row(case.name, twin.label, seed, twin.biased, role, seconds,
                                        score(case, module, bootstrap))  # fmt: skip
                print(
                    f"{case.name} {twin.label} seed {seed}: {_short(twins[twin.label])}", flush=True
                )
            balanced = next(r for r in twins.values() if not r.biased)
            for row in twins.values():
                if row.biased:
                    gap = _wga(balanced) - _wga(row)
                    row.took_shortcut = gap >= SHORTCUT_GAP
            rows += twins.values()
        for twin in (t for t in case.extra if t.quick or not quick):
            module, seconds = model_for(case, twin, 0, work)
            rows.append(
                Row(
                    case.name,
                    twin.label,
                    0,
                    True,
                    "extra",
                    seconds,
                    score(case, module, bootstrap),
                    True,
                )
            )
            print(f"{case.name} {twin.label}: {_short(rows[-1])}", flush=True)
        module, _ = model_for(case, None, 0, work)
        rows.append(
            Row(
                case.name,
                "untrained",
                None,
                False,
                "untrained",
                None,
                score(case, module, bootstrap),
            )
        )
        print(f"{case.name} untrained: {_short(rows[-1])}", flush=True)
    return rows


def _wga(row: Row) -> float:
    return float(row.values["worst_group_accuracy"]["value"])


def _short(row: Row) -> str:
    keys = ("accuracy", "worst_group_accuracy", "mask_score", "leakage", "equalized_odds")
    return ", ".join(
        f"{k} {row.values[k]['value']:.3f}" for k in keys if "value" in row.values.get(k, {})
    )


def verdicts(rows: Sequence[Row]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per check and case: the false passes (shortcut taken, check passed), the false fails
    (balanced twin, check failed), whether attention failed the untrained and extra models, and
    whether the check separates the case."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for check in BUILTIN:
        for case in {r.case for r in rows}:
            mine = [r for r in rows if r.case == case and "passes" in r.values.get(check.name, {})]
            if not mine:
                continue
            false_pass = [
                f"{r.twin} s{r.seed}"
                for r in mine
                if r.took_shortcut and r.values[check.name]["passes"]
            ]
            false_fail = [
                f"{r.twin} s{r.seed}"
                for r in mine
                if r.role == "balanced" and not r.values[check.name]["passes"]
            ]
            shortcut = [r for r in mine if r.took_shortcut]
            out.setdefault(check.name, {})[case] = {
                "false_pass": false_pass,
                "false_fail": false_fail,
                "separates": bool(shortcut) and not false_pass and not false_fail,
                "shortcut_models": len(shortcut),
                "fails_untrained": [
                    not r.values[check.name]["passes"] for r in mine if r.role == "untrained"
                ],
            }
    return out


def markdown(rows: Sequence[Row], verdict: dict, command: str, seconds: float) -> str:
    """The generated part of docs/validity.md: the check x case matrix and every model's values."""
    cases = list(dict.fromkeys(r.case for r in rows))
    lines = [
        f"Generated by `{command}` in {seconds / 60:.0f} min on {torch.backends.cpu.get_cpu_capability()} "
        f"kernels, torch {torch.__version__}.",
        "",
        "### Does each check separate the twins?",
        "",
        "| check | gates by default | " + " | ".join(cases) + " |",
        "|---|---|" + "---|" * len(cases),
    ]
    for check in BUILTIN:
        cells = []
        for case in cases:
            v = verdict.get(check.name, {}).get(case)
            if v is None:
                cells.append("n/a")
            elif check.name in GUARDS:
                cells.append("guard, not a bias measure")
            elif v["separates"]:
                cells.append("separates")
            else:
                problems = [f"false pass: {', '.join(v['false_pass'])}" if v["false_pass"] else "",
                            f"false fail: {', '.join(v['false_fail'])}" if v["false_fail"] else "",
                            "no model took the shortcut" if not v["shortcut_models"] else ""]  # fmt: skip
                cells.append("; ".join(p for p in problems if p))
        lines.append(
            f"| `{check.name}` | {'yes' if check.gate else 'no'} | " + " | ".join(cells) + " |"
        )
    for case in cases:
        mine = [r for r in rows if r.case == case]
        spec = next(c for c in CASES if c.name == case)
        lines += [
            "",
            f"### {case}",
            "",
            spec.shortcut
            + (
                "; thresholds were chosen on this case."
                if spec.tuned
                else "; never used to choose a threshold."
            ),
            "",
        ]
        header = [
            f"{r.twin}" + (f" s{r.seed}" if r.seed is not None and r.role != "extra" else "")
            for r in mine
        ]
        lines += [
            "| check (threshold) | " + " | ".join(header) + " |",
            "|---|" + "---|" * len(mine),
        ]
        took = [
            "shortcut taken"
            if r.took_shortcut
            else ("no shortcut" if r.role == "biased" else r.role)
            for r in mine
        ]
        lines.append("| model | " + " | ".join(took) + " |")
        names = [c.name for c in BUILTIN] + [f"mask_score@{r}" for r in RESOLUTIONS]
        for name in names:
            check = next((c for c in BUILTIN if c.name == name), None)
            if not any("value" in r.values.get(name, {}) for r in mine):
                continue
            label = (
                f"`{name}` ({'>=' if check.direction == 'min' else '<='} {check.threshold:g})"
                if check
                else f"`{name}` lift (raw / chance)"
            )
            lines.append(
                f"| {label} | "
                + " | ".join(_cell(r.values.get(name, {}), check) for r in mine)
                + " |"
            )
    return "\n".join(lines) + "\n"


def _cell(value: dict[str, Any], check: Any) -> str:
    if "value" not in value:
        return "–"
    text = f"{value['value']:.3f}"
    if value.get("low") == value.get("low"):  # not NaN
        text += f" [{value['low']:.2f}, {value['high']:.2f}]"
    if "raw" in value:
        text += f" ({value['raw']:.2f} / {value['chance']:.2f})"
    if check is not None:
        text += " pass" if value["passes"] else " **FAIL**"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI subset (a few minutes)")
    parser.add_argument(
        "--work", type=Path, default=ROOT / "reports" / "validity", help="model cache"
    )
    parser.add_argument(
        "--write", type=Path, help="replace the generated part of this markdown file"
    )
    parser.add_argument("--json", type=Path, help="write every row and verdict as JSON")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    code = build.rerun_pinned(__file__, argv)  # the fixtures' kernels, threads and determinism
    if code is not None:
        return code
    torch.set_num_threads(build.THREADS)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    cases = [c for c in CASES if any(t.quick for t in c.twins)] if args.quick else list(CASES)
    rows = run(cases, args.work, args.quick, args.bootstrap)
    verdict = verdicts(rows)
    seconds = time.perf_counter() - start
    command = "python benchmarks/validity.py" + (" --quick" if args.quick else "")
    text = markdown(rows, verdict, command, seconds)
    print(text)
    if args.write:
        doc = args.write.read_text()
        head, _, rest = doc.partition(BEGIN)
        _, _, tail = rest.partition(END)
        args.write.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "rows": [dataclasses.asdict(r) for r in rows],
                    "verdicts": verdict,
                    "guards": sorted(GUARDS),
                },
                indent=1,
                default=float,
            )
        )
    misfires = [
        f"{name} on {case}"
        for name, per_case in verdict.items()
        if next(c for c in BUILTIN if c.name == name).gate and name not in GUARDS
        for case, v in per_case.items()
        if v["false_pass"] or v["false_fail"]
    ]
    for line in misfires:
        print(f"misfire: {line}")
    return 1 if misfires else 0


if __name__ == "__main__":
    sys.exit(main())
