"""The pytest plugin end to end (pytester): options, usage errors, item sets, selection, hooks."""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import FIXED_CHECK, FIXED_CONFIG, TINY_DATA, make_tiny, valid_report

DATA = "--biascheck-data=synthfaces:n=64"


ALL_ATTRIBUTES = """
[models.alpha]
attributes = ["Smiling", "Male", "Young"]
[models.beta]
attributes = ["Smiling", "Male", "Young"]
"""


@pytest.fixture
def models(pytester: pytest.Pytester, tiny_checkpoint):
    shutil.copy(tiny_checkpoint, pytester.path / "alpha.pt")
    make_tiny(pytester.path / "beta.pt", seed=1)
    return ["alpha.pt", "beta.pt"]


def accuracy_only(pytester: pytest.Pytester, extra: str = "") -> None:
    """Config that checks accuracy of all three tiny-model attributes."""
    pytester.makefile(".toml", biascheck=f'checks = ["accuracy"]\n{extra}\n{ALL_ATTRIBUTES}')


def test_help_shows_the_biascheck_group(pytester: pytest.Pytester):
    result = pytester.runpytest("--help")
    text = result.stdout.str()
    assert "bias checks of vision models (biascheck)" in text
    for option in ("--biascheck=PATH", "--biascheck-data=SPEC", "--biascheck-config=FILE", "--biascheck-report=DIR",
                   "--biascheck-baseline=FILE", "--biascheck-device=DEVICE", "--biascheck-batch-size=N",
                   "--biascheck-warn=CHECK", "--biascheck-summary=FILE", "--biascheck-trust-pickle"):  # fmt: skip
        assert option in text


def test_missing_model_is_a_one_line_usage_error(pytester: pytest.Pytester):
    result = pytester.runpytest("--biascheck", "missing.pt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "missing.pt" in line]
    assert errors == [
        "ERROR: model file missing.pt does not exist; check the path given to --biascheck"
    ]


def test_malicious_model_is_a_usage_error_and_never_runs(pytester: pytest.Pytester):
    pytester.makepyfile(
        make_evil="""
        import torch
        class Evil:
            def __reduce__(self):
                return (open, ("pwned", "w"))
        torch.save(Evil(), "evil.pt")
        """
    )
    pytester.runpython(pytester.path / "make_evil.py")
    result = pytester.runpytest("--biascheck", "evil.pt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: model file evil.pt holds pickled Python objects that could run code*"]
    )
    assert not (pytester.path / "pwned").exists()


def test_each_model_gets_its_own_items(pytester: pytest.Pytester, models):
    accuracy_only(pytester)
    result = pytester.runpytest("--collect-only", "-q", *[f"--biascheck={m}" for m in models], DATA)
    ids = [line for line in result.stdout.lines if "::" in line]
    for model in models:
        assert sorted(i for i in ids if i.startswith(f"{model}::")) == [
            f"{model}::accuracy[{a}]" for a in ("Male", "Smiling", "Young")
        ]
    assert len(ids) == 6


def test_k_and_m_select_check_items(pytester: pytest.Pytester, models):
    accuracy_only(pytester)
    result = pytester.runpytest(
        "--collect-only", "-q", f"--biascheck={models[0]}", DATA, "-k", "Smiling"
    )
    assert [line for line in result.stdout.lines if "::" in line] == ["alpha.pt::accuracy[Smiling]"]
    result = pytester.runpytest(
        "--collect-only", "-q", f"--biascheck={models[0]}", DATA, "-m", "accuracy and not biascheck"
    )
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_failing_check_explains_value_threshold_interval_and_fix(pytester: pytest.Pytester, models):
    accuracy_only(pytester, "[thresholds]\naccuracy = 0.99\n")
    result = pytester.runpytest(
        f"--biascheck={models[0]}", DATA, "-k", "Smiling", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "alpha.pt::accuracy?Smiling?: 0.* does not meet >= 0.990",
            "*value      0.*(95% CI 0.*-0.*, n=64 images)",
            "*threshold  >= 0.990*",
            "*fix        python -m mitigations affact-b --model alpha.pt --out alpha_affact_b.pt "
            "--data synthfaces:n=64 --eval-data synthfaces:n=64 --attributes Smiling "
            "--batch-size 32 --max-steps 60",
            "*biascheck summary*",
            "alpha.pt::accuracy?Smiling?  0.*>= 0.990*FAILED",
        ]
    )


def test_passing_checks_exit_zero(pytester: pytest.Pytester, models):
    accuracy_only(pytester, "[thresholds]\naccuracy = 0.0\n")
    result = pytester.runpytest(f"--biascheck={models[0]}", DATA, "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["alpha.pt::accuracy?Male? PASSED*"])


def test_conftest_hook_adds_a_check(pytester: pytest.Pytester, models):
    pytester.makefile(".toml", biascheck=ALL_ATTRIBUTES)
    pytester.makeconftest(
        """
        from pytest_biascheck.checks import Check, Measurement, Target

        def positive_rate(results, target, settings):
            rate = float((results.column("z", target.attribute) > 0).mean())
            return Measurement(rate, rate, rate, len(results.frame))

        def pytest_biascheck_checks():
            return [Check("positive_rate", "max", 1.0, "share predicted positive", "retrain",
                          lambda scope: [Target(a) for a in scope.attributes], positive_rate)]
        """
    )
    result = pytester.runpytest(f"--biascheck={models[0]}", DATA, "-m", "positive_rate", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["alpha.pt::positive_rate?Smiling? PASSED*"])


def test_unknown_threshold_key_is_a_usage_error(pytester: pytest.Pytester, models):
    pytester.makefile(".toml", biascheck="[thresholds]\naccuray = 0.5\n")
    result = pytester.runpytest(f"--biascheck={models[0]}", DATA)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: *unknown key 'thresholds.accuray'; did you mean 'accuracy'?"]
    )


def test_only_checks_run_unless_test_paths_are_named(pytester: pytest.Pytester, models):
    accuracy_only(pytester)
    pytester.makepyfile(test_own="def test_own():\n    assert True\n")
    result = pytester.runpytest("--collect-only", "-q", f"--biascheck={models[0]}", DATA)
    assert not any("test_own" in line for line in result.stdout.lines)
    result = pytester.runpytest(
        "--collect-only", "-q", f"--biascheck={models[0]}", DATA, "test_own.py"
    )
    ids = [line for line in result.stdout.lines if "::" in line]
    assert "test_own.py::test_own" in ids and "alpha.pt::accuracy[Male]" in ids


def test_user_tests_get_fixtures_and_assertion_helpers(pytester: pytest.Pytester, models):
    pytester.makepyfile(
        test_bias="""
        from pytest_biascheck import assert_check, assert_mask_score

        def test_results_table(biascheck_model, biascheck_data, biascheck_results):
            assert biascheck_results.model == biascheck_model.name
            assert len(biascheck_results.frame) == len(biascheck_data) == 64

        def test_mask_score_bound(biascheck_results):
            assert_mask_score(biascheck_results, "Smiling", region="mouth", min=0.99)

        def test_accuracy_bound(biascheck_results):
            assert_check(biascheck_results, "accuracy", "Smiling", min=0.0)
        """
    )
    result = pytester.runpytest(
        *[f"--biascheck={m}" for m in models], DATA, "test_bias.py", "-k", "test_", "-v"
    )
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        ["*test_results_table?alpha? PASSED*", "*test_results_table?beta? PASSED*",
         "*mask_score of Smiling-mouth on alpha: *.* does not meet >= 0.990"]
    )  # fmt: skip
    result = pytester.runpytest("test_bias.py")
    result.assert_outcomes(skipped=3)


def test_gate_on_precomputed_results_and_write_the_report(pytester: pytest.Pytester, models):
    from pytest_biascheck.__main__ import main

    accuracy_only(pytester, "[thresholds]\naccuracy = 0.0\n")
    out = pytester.path / "results.json"
    config = str(pytester.path / "biascheck.toml")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(pytester.path / models[0]),
                "--data",
                "synthfaces:n=64",
                "--config",
                config,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = pytester.runpytest(
        f"--biascheck={models[0]}", DATA, f"--biascheck-results={out}", "-v", "--biascheck-no-cache"
    )
    result.assert_outcomes(passed=3)
    assert not (pytester.path / "reports" / ".cache").exists()
    result.stdout.fnmatch_lines([f"report: {pytester.path / 'reports' / 'biascheck.html'}"])
    report = json.loads((pytester.path / "reports" / "biascheck.json").read_text())
    assert report["summary"]["passed"] == 3
    result = pytester.runpytest(f"--biascheck={models[1]}", DATA, f"--biascheck-results={out}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: results file *results.json was computed for another model or data*"]
    )


def test_second_run_reads_the_cache(pytester: pytest.Pytester, models, monkeypatch):
    import pytest_biascheck.evaluate as evaluate_module

    accuracy_only(pytester, "[thresholds]\naccuracy = 0.0\n")
    first = pytester.runpytest(f"--biascheck={models[0]}", DATA)
    first.assert_outcomes(passed=3)
    assert list((pytester.path / "reports" / ".cache").glob("*.json"))

    def no_second_pass(*args, **kwargs):
        raise AssertionError("evaluated again instead of reading the cache")

    monkeypatch.setattr(evaluate_module, "run_pass", no_second_pass)
    second = pytester.runpytest(f"--biascheck={models[0]}", DATA)
    second.assert_outcomes(passed=3)


def test_regions_smaller_than_a_cam_cell_are_warned_about(pytester: pytest.Pytester, models):
    result = pytester.runpytest(
        f"--biascheck={models[0]}", DATA, "-k", "mask_score", "--biascheck-no-cache"
    )
    result.stdout.fnmatch_lines(
        [
            "*BiascheckWarning: regions of Smiling (0.* cells) cover less than one cell of the 4x4 CAM grid*"
        ]
    )


def test_metadata_groups_join_and_a_changed_csv_is_evaluated_again(
    pytester: pytest.Pytester, models
):
    pytester.makefile(
        ".toml",
        biascheck='checks = ["group_accuracy_gap"]\nmetadata = "meta/skin.csv"\n'
        '[models.alpha]\nattributes = ["Smiling"]\nprotected = ["skin_tone", "Male*skin_tone"]\n',
    )
    (pytester.path / "meta").mkdir()
    csv = pytester.path / "meta" / "skin.csv"

    def tones_in_report(tones: list[str]) -> dict[str, int]:
        csv.write_text("image_id,skin_tone\n" + "".join(f"{i},{t}\n" for i, t in enumerate(tones)))
        result = pytester.runpytest(f"--biascheck={models[0]}", DATA, "-v")
        result.stdout.fnmatch_lines(["*alpha.pt::group_accuracy_gap?Smiling-Male*skin_tone? *"])
        report = json.loads((pytester.path / "reports" / "biascheck.json").read_text())
        rates = report["models"][0]["tables"]["group_rates"]
        return {r["level"]: r["n"] for r in rates if r["group"] == "skin_tone"}

    assert tones_in_report(["dark"] * 16 + ["light"] * 48) == {"dark": 16, "light": 48}
    assert tones_in_report(["dark"] * 40 + ["light"] * 24) == {"dark": 40, "light": 24}


@pytest.fixture
def truncated_image_data(pytester: pytest.Pytester) -> str:
    """A CSV of four images whose third (listing line 4) is truncated: it fails only when read."""
    from PIL import Image

    folder = pytester.path / "data"
    folder.mkdir()
    rows = []
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{i % 2},1,0\n")
    whole = (folder / "2.png").read_bytes()
    (folder / "2.png").write_bytes(whole[: len(whole) // 2])
    (folder / "list.csv").write_text("image,Smiling,Male,Young\n" + "".join(rows))
    return "--biascheck-data=data/list.csv"


def test_bad_data_found_during_evaluation_is_one_usage_error(
    pytester: pytest.Pytester, models, truncated_image_data
):
    """No item runs: one line and exit 4 (for check items and for user tests of the results)."""
    accuracy_only(pytester)
    pytester.makepyfile(test_own="def test_own(biascheck_results):\n    assert False\n")
    for extra in ([], ["test_own.py"]):
        result = pytester.runpytest(f"--biascheck={models[0]}", truncated_image_data, *extra)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        errors = [line for line in result.stderr.lines if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("ERROR: "), result.stderr.lines
        assert "2.png" in errors[0] and "list.csv line 4" in errors[0]
        assert "failed" not in result.stdout.str() and "Traceback" not in result.stdout.str()
    assert not (pytester.path / "reports" / "biascheck.html").exists()


def test_bad_data_under_xdist_is_a_usage_error(
    pytester: pytest.Pytester, models, truncated_image_data
):
    pytest.importorskip("xdist")
    accuracy_only(pytester)
    result = pytester.runpytest_subprocess(
        f"--biascheck={models[0]}", truncated_image_data, "-p", "xdist", "-n", "2"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*data/list.csv line 4: image data/2.png cannot be decoded*"])
    assert "failed" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()


# --- habits of a pytest user: xdist, config discovery, outputs, exit codes -----------------------

#: Appended to the "fixed" conftest: every evaluation pass, in any process, adds a line to a file.
COUNT_EVALUATIONS = """
import pytest_biascheck.evaluate as _evaluate

_run_pass = _evaluate.run_pass


def _counted(*args, **kwargs):
    with Path(__file__).with_name("evaluations.txt").open("a") as fh:
        fh.write(args[0].path.name + "\\n")
    return _run_pass(*args, **kwargs)


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # only xdist workers, never the in-process controller
        _evaluate.run_pass = _counted
"""
BOTH = ("--biascheck=alpha.pt", "--biascheck=beta.pt", TINY_DATA)


@pytest.mark.parametrize("workers", ["2", "4"])
def test_xdist_evaluates_each_model_once_and_the_controller_reports_every_check(
    pytester: pytest.Pytester, fixed_values, workers
):
    pytester.makeconftest(FIXED_CHECK + COUNT_EVALUATIONS)
    extra = ["--biascheck-no-cache"] if workers == "4" else []  # the cache, or a shared temp folder
    result = pytester.runpytest(
        *BOTH, "-n", workers, "-p", "no:cacheprovider", "--junitxml=out.xml", *extra
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()  # not INTERNALERROR
    result.assert_outcomes(passed=4, failed=2)
    evaluated = (pytester.path / "evaluations.txt").read_text().split()
    assert sorted(evaluated) == ["alpha.pt", "beta.pt"]
    ids = [f"{m}.pt::fixed[{a}]" for m in ("alpha", "beta") for a in ("Smiling", "Male", "Young")]
    result.stdout.re_match_lines(
        [r"check +value +95% CI +threshold +status$"]
        + [rf"{re.escape(i)} +0\.\d+ .*(passed|FAILED)$" for i in ids]
        + [r"report: .*biascheck\.html$"]
    )
    report = valid_report(pytester.path / "reports" / "biascheck.json")
    checks = [c for m in report["models"] for c in m["checks"]]
    assert [c["item"] for c in checks if c["status"] != "info"] == ids
    assert {c["item"].split("::")[0] for c in checks} == {"alpha.pt", "beta.pt"}
    summary = dict(report["summary"])
    assert summary.pop("information") == sum(c["status"] == "info" for c in checks)
    assert summary == {"passed": 4, "failed": 2, "warned": 0, "xfailed": 0, "total": 6}
    junit = pytester.path.joinpath("out.xml").read_text()
    assert junit.count('<property name="value"') == 6
    assert not list(pytester.path.glob("**/biascheck-*"))  # the temporary folder is gone


def test_config_in_the_working_folder_is_read_when_the_model_lives_elsewhere(
    pytester: pytest.Pytester, tiny_checkpoint
):
    elsewhere = pytester.mkdir("elsewhere")
    shutil.copy(tiny_checkpoint, elsewhere / "alpha.pt")
    (elsewhere / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")  # a project root
    work = pytester.mkdir("work")
    (work / "biascheck.toml").write_text(
        'checks = ["accuracy"]\n[models.alpha]\nattributes = ["Smiling", "Male", "Young"]\n'
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        result = pytester.runpytest(
            "--biascheck", str(elsewhere / "alpha.pt"), TINY_DATA, "--collect-only"
        )
    result.stdout.fnmatch_lines([f"biascheck: config {work / 'biascheck.toml'}"])
    items = re.findall(r"<CheckItem (\S+)>", result.stdout.str())
    assert items == ["accuracy[Smiling]", "accuracy[Male]", "accuracy[Young]"]


def test_nearest_config_walking_up_and_biascheck_config_wins(
    pytester: pytest.Pytester, fixed_values
):
    pytester.makeini("[pytest]\n")  # the rootdir, so that its conftest.py (check "fixed") loads
    deeper = pytester.mkdir("deeper")
    (deeper / "own.toml").write_text('checks = ["fixed"]\n[models.alpha]\nattributes = ["Male"]\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(deeper)
        found = pytester.runpytest("--biascheck=../alpha.pt", TINY_DATA, "--collect-only", "-q")
        named = pytester.runpytest(
            "--biascheck=../alpha.pt", TINY_DATA, "--biascheck-config=own.toml", "--collect-only"
        )
    assert [line for line in found.stdout.lines if "::" in line] == [
        "alpha.pt::fixed[Smiling]", "alpha.pt::fixed[Male]", "alpha.pt::fixed[Young]"
    ]  # node ids are relative to the rootdir  # fmt: skip
    named.stdout.fnmatch_lines(["biascheck: config own.toml", "*<CheckItem fixed?Male?>"])
    named.stdout.no_fnmatch_line("*<CheckItem fixed?Smiling?>")


def test_both_config_files_in_one_folder_is_a_usage_error(pytester: pytest.Pytester, fixed_values):
    pytester.makepyprojecttoml('[tool.biascheck]\nchecks = ["fixed"]\n')
    result = pytester.runpytest("--biascheck=alpha.pt", TINY_DATA)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR")]
    assert errors == [
        f"ERROR: both {pytester.path / 'biascheck.toml'} and [tool.biascheck] in "
        f"{pytester.path / 'pyproject.toml'} configure biascheck; keep one, or name the one to "
        "use with --biascheck-config"
    ]


def test_a_section_naming_no_model_of_the_run_warns_with_the_closest_name(
    pytester: pytest.Pytester, fixed_values
):
    pytester.makefile(
        ".toml", biascheck='checks = ["fixed"]\n[models.alhpa]\nattributes = ["Male"]\n'
    )
    result = pytester.runpytest("--biascheck=alpha.pt", TINY_DATA, "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "*BiascheckWarning: *biascheck.toml: ?models.alhpa? names no model of this run, so it "
            "is not used (models are keyed by file stem); did you mean 'alpha'?"
        ]
    )


def test_command_line_data_overrides_a_models_data(pytester: pytest.Pytester, fixed_values):
    pytester.makefile(
        ".toml", biascheck=FIXED_CONFIG + 'data = "synthfaces:n=32"\n'
    )  # [models.beta]
    result = pytester.runpytest(*BOTH, "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "biascheck: alpha.pt: data synthfaces:n=64 (test split, 64 images)",
            "biascheck: beta.pt: data synthfaces:n=64 (test split, 64 images)",
        ]
    )
    report = json.loads((pytester.path / "reports" / "biascheck.json").read_text())
    assert [(m["name"], m["n_images"]) for m in report["models"]] == [("alpha", 64), ("beta", 64)]
    result = pytester.runpytest("--biascheck=beta.pt", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["biascheck: beta.pt: data synthfaces:n=32 (test split, 32 images)"]
    )


@pytest.mark.parametrize(
    ("file", "text", "where"),
    [
        ("biascheck.toml", "[thresholds]\nfixed = 0.6\n", "fixed in [[]thresholds] of *biascheck.toml"),
        ("pyproject.toml", "[tool.biascheck.models.alpha.thresholds]\nfixed = 0.6\n",
         "fixed in [[]tool.biascheck.models.alpha.thresholds] of *pyproject.toml"),
    ],
)  # fmt: skip
def test_failure_text_names_the_config_file_and_table_to_change(
    pytester: pytest.Pytester, fixed_values, file, text, where
):
    (pytester.path / "biascheck.toml").unlink()
    head = "[tool.biascheck]\n" if file == "pyproject.toml" else ""
    body = FIXED_CONFIG.replace("[models.", "[tool.biascheck.models." if head else "[models.")
    (pytester.path / file).write_text(head + body.replace(head, "") + text)
    result = pytester.runpytest("--biascheck=alpha.pt", TINY_DATA, "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"  threshold  >= 0.600  (min; {where})"])


def test_report_folder_is_beside_the_config_else_in_the_working_folder(
    pytester: pytest.Pytester, fixed_values
):
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\n")  # the rootdir is pytester.path
    (pytester.path / "biascheck.toml").unlink()
    project = pytester.mkdir("project")
    deeper = pytester.mkdir("project/deeper")
    (project / "biascheck.toml").write_text('report = "out"\n' + FIXED_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(deeper)
        pytester.runpytest("--biascheck=../../alpha.pt", TINY_DATA).assert_outcomes(
            failed=1, passed=2
        )
        assert (project / "out" / "biascheck.json").is_file()
        (project / "biascheck.toml").unlink()
        result = pytester.runpytest("--biascheck=../../alpha.pt", TINY_DATA)
        assert (deeper / "reports" / "biascheck.json").is_file()
    result.stdout.fnmatch_lines(
        [
            "biascheck: config none found (looked for biascheck.toml and ?tool.biascheck? in "
            f"pyproject.toml from {deeper} and {pytester.path} up); defaults"
        ]
    )
    assert not (pytester.path / "reports").exists()


def test_unwritable_report_and_cache_folders_warn_and_leave_the_exit_code(
    pytester: pytest.Pytester, fixed_values, monkeypatch
):
    locked = pytester.mkdir("locked")
    (locked / "reports").mkdir()

    def refuse(make):  # a read-only folder, even for root: no file can be made inside it
        def made(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(locked):
                raise PermissionError(errno.EACCES, "Permission denied", str(dir))
            return make(*args, dir=dir, **kwargs)

        return made

    monkeypatch.setattr(tempfile, "mkstemp", refuse(tempfile.mkstemp))
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse(tempfile.TemporaryFile))
    fixed_values(Male=0.6)  # every check passes
    result = pytester.runpytest(
        "--biascheck=alpha.pt", TINY_DATA, "--biascheck-report=locked/reports",
        "--biascheck-save-baseline=locked/b.json", "--biascheck-summary=locked/s.md",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "biascheck: cache folder locked/reports/.cache cannot be written (Permission denied): "
            "evaluated without the cache; pass --biascheck-report DIR or --biascheck-no-cache",
            "biascheck: baseline locked/b.json not written (Permission denied: locked)",
            "biascheck: report not written (Permission denied: locked/reports)",
            "biascheck: summary locked/s.md not written (Permission denied: locked)",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert sorted(p.name for p in locked.rglob("*")) == [
        ".cache",
        "reports",
    ]  # nothing half-written


def test_the_same_model_twice_is_checked_once(pytester: pytest.Pytester, fixed_values):
    result = pytester.runpytest(
        "--biascheck=alpha.pt", f"--biascheck={pytester.path / 'alpha.pt'}", TINY_DATA, "-v"
    )
    result.assert_outcomes(passed=2, failed=1)


def test_models_of_one_name_in_different_folders_are_checked_apart(
    pytester: pytest.Pytester, fixed_values
):
    for run, source in (("1", "alpha.pt"), ("2", "beta.pt")):
        (pytester.path / "runs" / run).mkdir(parents=True)
        shutil.copy(pytester.path / source, pytester.path / "runs" / run / "alpha.pt")
    result = pytester.runpytest(
        "--biascheck=runs/1/alpha.pt", "--biascheck=runs/2/alpha.pt", TINY_DATA, "-v"
    )
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        ["runs/1/alpha.pt::fixed?Male? FAILED*", "runs/2/alpha.pt::fixed?Male? FAILED*"],
        consecutive=False,
    )
    report = json.loads((pytester.path / "reports" / "biascheck.json").read_text())
    assert [(m["path"], m["sha256"]) for m in report["models"]] == [
        ("runs/1/alpha.pt", sha256(pytester.path / "alpha.pt")),
        ("runs/2/alpha.pt", sha256(pytester.path / "beta.pt")),
    ]


def literal(text: str) -> str:
    """``text`` as an fnmatch pattern that matches it exactly where it holds brackets."""
    return text.replace("[", "[[]")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_warn_severity_reports_without_failing(pytester: pytest.Pytester, fixed_values):
    result = pytester.runpytest("--biascheck=alpha.pt", TINY_DATA, "--biascheck-warn=fixed", "-v")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["alpha.pt::fixed?Male? WARNED*", "alpha.pt::fixed?Male? *0.200 *>= 0.500 *warned",
         "*2 passed*1 warned*"]
    )  # fmt: skip
    report = valid_report(pytester.path / "reports" / "biascheck.json")
    summary = dict(report["summary"])
    information = summary.pop("information")  # values measured beside the items, not gating
    assert summary == {"passed": 2, "failed": 0, "warned": 1, "xfailed": 0, "total": 3}
    assert information == sum(c["status"] == "info" for m in report["models"] for c in m["checks"])
    pytester.makefile(".toml", biascheck=FIXED_CONFIG + "[models.alpha.severity]\nfixed = 'warn'\n")
    outcomes = pytester.runpytest(*BOTH).parseoutcomes()  # beta's Male still fails
    assert (outcomes["passed"], outcomes["failed"], outcomes["warned"]) == (4, 1, 1)


@pytest.mark.parametrize(
    ("args", "config", "error"),
    [
        (["--biascheck-warn=fixd"], "", "ERROR: --biascheck-warn fixd: no such check; did you mean 'fixed'?"),
        ([], "severity = { fixed = 'loud' }\n",
         "ERROR: *biascheck.toml: severity.fixed must be \"fail\" or \"warn\", got 'loud'"),
    ],
)  # fmt: skip
def test_bad_severity_is_a_usage_error(
    pytester: pytest.Pytester, fixed_values, args, config, error
):
    pytester.makefile(".toml", biascheck=config + FIXED_CONFIG)
    result = pytester.runpytest("--biascheck=alpha.pt", TINY_DATA, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([error])


def test_markdown_summary_is_written_and_appended_to_the_github_step_summary(
    pytester: pytest.Pytester, fixed_values, monkeypatch
):
    step = pytester.path / "step.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    pytester.runpytest(*BOTH, "--biascheck-summary=out/summary.md", "--biascheck-warn=fixed")
    text = (pytester.path / "out" / "summary.md").read_text()
    assert text.startswith("### biascheck: 2 warned, 4 passed\n")
    assert "| warned | `alpha.pt::fixed[Male]` | 0.200 | 0.150 to 0.250 | >= 0.500 |" in text
    assert "- `beta.pt::fixed[Male]` (warned): `fix --model beta.pt --attribute Male`" in text
    assert step.read_text() == "earlier step\n" + text


#: Appended to the "fixed" conftest: a live model, handed over in Python (no file).
LIVE_MODEL = """
import torch

from pytest_biascheck.model import ModelSpec
from pytest_biascheck.nets import SmallResNet


def pytest_biascheck_models(config):
    torch.manual_seed(0)
    net = SmallResNet(3, widths=(8, 8, 8, 8)).eval()
    return {"gamma": (net, ModelSpec(("Smiling", "Male", "Young"), (3, 32, 32)))}
"""


def test_xdist_evaluates_a_live_model_once_and_reports_it(pytester: pytest.Pytester, fixed_values):
    pytester.makeconftest(FIXED_CHECK + COUNT_EVALUATIONS + LIVE_MODEL)
    pytester.makefile(".toml", biascheck=FIXED_CONFIG.replace("beta", "gamma"))
    result = pytester.runpytest(TINY_DATA, "-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    assert (pytester.path / "evaluations.txt").read_text().split() == ["gamma"]
    result.stdout.fnmatch_lines([literal("gamma::fixed[Male]     0.200*FAILED")])
    report = valid_report(pytester.path / "reports" / "biascheck.json")
    checks = [c for m in report["models"] for c in m["checks"]]
    assert [c["item"] for c in checks if c["status"] != "info"] == [
        f"gamma::fixed[{a}]" for a in ("Smiling", "Male", "Young")
    ]
    assert not list(pytester.path.glob("reports/.cache/*.json"))  # a live model is never cached
