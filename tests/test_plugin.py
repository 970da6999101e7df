"""The pytest plugin end to end (pytester): options, usage errors, item sets, selection, hooks."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import make_tiny

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
                   "--biascheck-trust-pickle"):  # fmt: skip
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
            "*accuracy of Smiling: 0.* does not meet >= 0.990",
            "*value      0.*(95% CI 0.*-0.*, n=64 images)",
            "*threshold  >= 0.990*",
            "*fix        python -m mitigations affact-b --model alpha.pt --out alpha_affact_b.pt --data synthfaces:n=64 --attributes Smiling",
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


def test_baseline_regression_fails_even_when_threshold_holds(pytester: pytest.Pytester, models):
    pytester.makefile(".toml", biascheck="checks = ['accuracy']\n[thresholds]\naccuracy = 0.0\n")
    args = [f"--biascheck={models[0]}", DATA, "-k", "Smiling", "-p", "no:cacheprovider"]
    result = pytester.runpytest(*args, "--biascheck-save-baseline=base.json")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"check +value +95% CI +threshold +status$"])  # no baseline yet
    saved = json.loads((pytester.path / "base.json").read_text())
    value = saved["values"]["alpha.pt::accuracy[Smiling]"]
    result = pytester.runpytest(*args, "--biascheck-baseline=base.json")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"check +value +95% CI +threshold +status +baseline$"])
    result.stdout.fnmatch_lines([f"*{value:.3f} unchanged"])
    saved["values"]["alpha.pt::accuracy[Smiling]"] = value + 0.2
    (pytester.path / "worse.json").write_text(json.dumps(saved))
    result = pytester.runpytest(*args, "--biascheck-baseline=worse.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*regressed from the baseline {value + 0.2:.3f} by more than the tolerance 0.020*"]
    )
    saved["values"]["alpha.pt::accuracy[Smiling]"] = value - 0.2
    (pytester.path / "better.json").write_text(json.dumps(saved))
    result = pytester.runpytest(*args, "--biascheck-baseline=better.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*{value - 0.2:.3f} improved"])
    result = pytester.runpytest(*args, "--biascheck-baseline=missing.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


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
         "*mask_score of Smiling-mouth on alpha: 0.* does not meet >= 0.990"]
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
