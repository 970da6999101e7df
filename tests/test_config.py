"""Config: valid files parse into typed settings; unknown keys and wrong types name the fix."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_biascheck import files
from pytest_biascheck.checks import catalogue
from pytest_biascheck.config import (
    RANGES,
    ModelSettings,
    Settings,
    check_device,
    find_config,
    load_settings,
    option_type,
    validate_thresholds,
)
from pytest_biascheck.errors import BiascheckError
from tests.conftest import FUZZ_RUNS

VALID = """
[tool.other]
x = 1

[tool.biascheck]
data = "synthfaces:n=500"
batch_size = 32
bootstrap = 200
min_group_share = 0
allow_imports = ["pkg.mod:Net"]
thresholds = { accuracy = 0.9 }

[tool.biascheck.models.faces_biased]
attributes = ["Smiling"]
protected = ["Black_Hair"]
regions = { Smiling = "mouth" }
thresholds = { accuracy = 0.7 }
"""


def test_pyproject_table_parses_to_typed_settings(tmp_path):
    (tmp_path / "pyproject.toml").write_text(VALID)
    path = find_config(tmp_path)
    settings = load_settings(path)
    assert path == tmp_path / "pyproject.toml"
    assert settings.data == "synthfaces:n=500"
    assert settings.batch_size == 32 and settings.bootstrap == 200
    assert settings.min_group_share == 0.0 and isinstance(settings.min_group_share, float)
    model = settings.for_model("faces_biased")
    assert model.attributes == ["Smiling"] and model.regions == {"Smiling": "mouth"}
    assert model.thresholds == {"accuracy": 0.7}
    assert settings.for_model("other").attributes == []
    validate_thresholds(settings, catalogue())


def test_pyproject_without_table_is_skipped_and_biascheck_toml_read(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.other]\nx = 1\n")
    assert find_config(tmp_path) is None
    (tmp_path / "biascheck.toml").write_text('batch_size = 8\n[models.m]\nprotected = ["Male"]\n')
    settings = load_settings(find_config(tmp_path))
    assert settings.batch_size == 8 and settings.for_model("m").protected == ["Male"]
    assert load_settings(None) == Settings()


def test_nearest_config_walking_up_from_each_start_in_turn(tmp_path):
    deep = tmp_path / "project" / "src" / "deep"
    deep.mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    (root / "biascheck.toml").write_text("")
    assert find_config(deep, root) == root / "biascheck.toml"  # nothing above deep: the rootdir's
    (tmp_path / "project" / "pyproject.toml").write_text("[tool.biascheck]\n")
    assert find_config(deep, root) == tmp_path / "project" / "pyproject.toml"
    (deep.parent / "pyproject.toml").write_text("[tool.ruff]\n")  # no table: walked past
    (deep.parent / "biascheck.toml").write_text("")
    assert find_config(deep, root) == deep.parent / "biascheck.toml"


def test_both_config_files_in_one_folder_is_an_error(tmp_path):
    (tmp_path / "biascheck.toml").write_text("")
    (tmp_path / "pyproject.toml").write_text("[tool.biascheck]\n")
    with pytest.raises(BiascheckError) as caught:
        find_config(tmp_path / "sub", tmp_path)
    assert str(caught.value) == (
        f"both {tmp_path / 'biascheck.toml'} and [tool.biascheck] in {tmp_path / 'pyproject.toml'} "
        "configure biascheck; keep one, or name the one to use with --biascheck-config"
    )


@pytest.mark.parametrize(
    ("name", "text", "model", "where"),
    [
        ("pyproject.toml", "[tool.biascheck.models.m.thresholds]\nacc = 0.8\n", 0.8,
         "acc in [tool.biascheck.models.m.thresholds] of {path}"),
        ("pyproject.toml", "[tool.biascheck.thresholds]\nacc = 0.6\n", 0.6,
         "acc in [tool.biascheck.thresholds] of {path}"),
        ("biascheck.toml", "[models.m.thresholds]\nacc = 0.8\n", 0.8,
         "acc in [models.m.thresholds] of {path}"),
        ("biascheck.toml", "", 0.5, "default; set acc in [thresholds] of {path}"),
    ],
)  # fmt: skip
def test_threshold_names_where_it_is_set(tmp_path, name, text, model, where):
    path = tmp_path / name
    path.write_text(text)
    settings = load_settings(path)
    assert settings.threshold("m", "acc", 0.5) == (model, where.format(path=path))
    assert Settings().threshold("m", "acc", 0.5)[1] == (
        "default; set acc in [thresholds] of biascheck.toml or [tool.biascheck.thresholds] of "
        "pyproject.toml"
    )


def test_command_line_values_override_the_file_for_every_model(tmp_path):
    path = tmp_path / "biascheck.toml"
    path.write_text(
        'data = "a"\nseverity = { x = "fail" }\n[models.m]\ndata = "b"\n'
        'severity = { x = "fail", y = "fail" }\n'
    )
    settings = load_settings(path)
    assert (settings.severity_of("m", "y"), settings.severity_of("other", "y")) == ("fail", "fail")
    settings.override("data", "c")
    settings.override("severity", {"x": "warn"})
    assert (settings.data, settings.for_model("m").data) == ("c", None)
    assert [settings.severity_of(m, "x") for m in ("m", "other")] == ["warn", "warn"]
    assert settings.severity_of("m", "y") == "fail"


def test_sections_naming_no_model_of_the_run_are_reported_with_the_closest_name(tmp_path):
    path = tmp_path / "biascheck.toml"
    path.write_text("[models.face_biased]\n[models.faces_balanced]\n[models.zzz]\n")
    lines = load_settings(path).unused_models({"faces_biased", "faces_balanced"})
    assert lines == [
        f"{path}: [models.face_biased] names no model of this run, so it is not used (models are "
        "keyed by file stem); did you mean 'faces_biased'?",
        f"{path}: [models.zzz] names no model of this run, so it is not used (models are keyed by "
        "file stem); valid: faces_balanced, faces_biased",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[tool.biascheck]\nbatch_sise = 3\n",
            "unknown key 'tool.biascheck.batch_sise'; did you mean 'batch_size'?",
        ),
        (
            "[tool.biascheck.models.m]\nprotectd = []\n",
            "unknown key 'tool.biascheck.models.m.protectd'; did you mean 'protected'?",
        ),
        (
            "[tool.biascheck]\nbatch_size = '64'\n",
            "tool.biascheck.batch_size must be int, got str '64'",
        ),
        (
            "[tool.biascheck]\nbatch_size = true\n",
            "tool.biascheck.batch_size must be int, got bool True",
        ),
        (
            "[tool.biascheck]\nallow_imports = 'x'\n",
            "tool.biascheck.allow_imports must be a list, got str",
        ),
        (
            "[tool.biascheck]\nthresholds = { accuracy = 'high' }\n",
            "tool.biascheck.thresholds.accuracy must be float",
        ),
        (
            "[tool.biascheck.models.m]\nregions = { Smiling = 3 }\n",
            "tool.biascheck.models.m.regions.Smiling must be str",
        ),
        ("[tool.biascheck\n", "is not valid TOML"),
        (
            "[tool.biascheck]\nmin_group_share = 5\n",
            "min_group_share must be a fraction of the images in [0, 1) (0.01 = 1%), got 5.0",
        ),
        (
            "[tool.biascheck.models.m]\nmin_group_share = -0.1\n",
            "models.m.min_group_share must be a fraction of the images in [0, 1)",
        ),
        (
            "[tool.biascheck]\nbatch_size = 0\n",
            "batch_size must be an integer in [1, 16384], got 0",
        ),
        (
            "[tool.biascheck]\nbootstrap = -5\n",
            "bootstrap must be an integer in [1, 100000], got -5",
        ),
        ("[tool.biascheck]\nseed = -1\n", "seed must be an integer in [0, 9223372036854775807]"),
        ("[tool.biascheck]\ndevice = 'gpu'\n", "device 'gpu' is not a torch device; use auto, cpu"),
        ("[tool.biascheck]\ndevice = 'meta'\n", "device 'meta' cannot run a model"),
        (
            "[tool.biascheck]\ntolerance = -0.1\n",
            "tolerance must be a finite number >= 0, got -0.1",
        ),
        ("[tool.biascheck.thresholds]\naccuracy = nan\n", "thresholds.accuracy must be a finite"),
        (
            "[tool.biascheck]\nlimits = { model = '1 parsec' }\n",
            "limits.model must be a positive size",
        ),
        ("[tool.biascheck]\nreport = 'pyproject.toml/out'\n", "pyproject.toml is a file"),
        (
            "[tool.biascheck]\nseverity = { accuracy = 2 }\n",
            "tool.biascheck.severity.accuracy must be str, got int 2",
        ),
    ],
)
def test_bad_config_names_key_file_and_fix(tmp_path, text, expected):
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    with pytest.raises(BiascheckError) as exc:
        load_settings(path)
    assert expected in str(exc.value)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_threshold_names_closest_check(tmp_path):
    path = tmp_path / "biascheck.toml"
    path.write_text("[models.m]\nthresholds = { acuracy = 0.5 }\n")
    settings = load_settings(path)
    with pytest.raises(
        BiascheckError, match=r"unknown key 'models.m.thresholds.acuracy'; did you mean 'accuracy'"
    ):
        validate_thresholds(settings, catalogue())


def test_severity_must_name_a_check_and_be_fail_or_warn(tmp_path):
    path = tmp_path / "biascheck.toml"
    path.write_text("[models.m.severity]\naccuracy = 'warm'\n")
    with pytest.raises(
        BiascheckError, match=r"models.m.severity.accuracy must be \"fail\" or \"warn\""
    ):
        validate_thresholds(load_settings(path), catalogue())
    path.write_text("[severity]\naccurcy = 'warn'\n")
    with pytest.raises(
        BiascheckError, match=r"unknown key 'severity.accurcy'; did you mean 'accuracy'"
    ):
        validate_thresholds(load_settings(path), catalogue())


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(BiascheckError, match="does not exist; check --biascheck-config"):
        load_settings(tmp_path / "nope.toml")


def test_multiclass_label_metadata_and_group_share_per_model(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "biascheck.toml"
    path.write_text(
        'min_group_share = 0.02\nmetadata = "meta/all.csv"\n'
        '[models.hair]\nlabel = "hair_colour"\nprotected = ["Male*Young", "skin_tone"]\n'
        'min_group_share = 0\nmetadata = "/data/skin.csv"\nmetadata_id = "file"\n'
    )
    settings = load_settings(path)
    hair = settings.for_model("hair")
    assert hair.label == "hair_colour" and hair.protected == ["Male*Young", "skin_tone"]
    assert settings.min_share("hair") == 0.0 and settings.min_share("other") == 0.02
    assert settings.metadata_for("hair") == (Path("/data/skin.csv"), "file")
    assert settings.metadata_for("other") == (tmp_path / "conf" / "meta" / "all.csv", "image_id")
    assert Settings().metadata_for("any") is None and Settings().min_share("any") == 0.01


KEYS = [f.name for f in dataclasses.fields(Settings) if f.name != "source"]
MODEL_KEYS = [f.name for f in dataclasses.fields(ModelSettings)]
SCALARS = (
    st.integers(-(2**63), 2**63 - 1)
    | st.sampled_from([0, 1, -1, 64, 16384, 16385, 100_000, 100_001])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
    | st.sampled_from(["auto", "cpu", "cuda", "cuda:7", "bogus", "afile", "accuracy", "1 GiB"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["accuracy", "leakage", "model", "x", "Smiling"]), inner, max_size=3
        )
    ),
    max_leaves=6,
)


def toml(value) -> str:
    """A TOML literal for a generated value (inline tables and arrays, basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


DOCUMENTS = st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=5), VALUES, max_size=6
) | st.fixed_dictionaries(
    {
        "models": st.dictionaries(
            st.sampled_from(["m", "tiny"]),
            st.dictionaries(st.sampled_from(MODEL_KEYS), VALUES, max_size=4),
            max_size=2,
        )
    }
)


def assert_valid(settings: Settings) -> None:
    """What every accepted config guarantees downstream."""
    for name, (low, high) in RANGES.items():
        value = getattr(settings, name)
        assert type(value) is int and low <= value <= high
    assert check_device(settings.device) == settings.device
    for table in (
        settings.thresholds,
        settings.tolerances,
        *(m.thresholds for m in settings.models.values()),
    ):
        assert all(type(v) is float and math.isfinite(v) for v in table.values())
    assert all(0 <= settings.min_share(s) < 1 for s in (*settings.models, "other"))
    assert all(v > 0 for v in files._limits.values())


@pytest.mark.parametrize("examples", FUZZ_RUNS)
def test_config_reader_fuzz(tmp_path, examples):
    """Any document: settings that keep every promise above, or one BiascheckError line that
    names the file; the thresholds then fit their checks or are refused the same way."""
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "biascheck.toml"
    checks = catalogue()

    @settings(max_examples=examples, deadline=None, database=None)
    @given(
        st.one_of(
            DOCUMENTS.map(
                lambda d: "\n".join(f"{json.dumps(k)} = {toml(v)}" for k, v in d.items())
            ),
            st.text(max_size=80),
        )
    )
    def run(text: str) -> None:
        path.write_text(text, encoding="utf-8")
        try:
            loaded = load_settings(path)
            assert_valid(loaded)
            validate_thresholds(loaded, checks)
        except BiascheckError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, message

    try:
        run()
    finally:
        files.set_limits({})


@pytest.mark.parametrize(
    ("thresholds", "expected"),
    [
        (
            "accuracy = 1.5",
            "thresholds.accuracy must lie in [0, 1], the range of accuracy, got 1.5",
        ),
        ("leakage = -0.1", "thresholds.leakage must lie in [0, 1]"),
        ("feature_leakage = -1.5", "thresholds.feature_leakage must lie in [-1, 1]"),
        ("prediction_kl = -0.1", "thresholds.prediction_kl must lie in [0, inf)"),
        ("mask_score = 1.01", "must lie in [-inf, 1], the range of mask_score"),
    ],
)
def test_thresholds_must_lie_in_their_checks_range(tmp_path, thresholds, expected):
    path = tmp_path / "biascheck.toml"
    path.write_text(f"[thresholds]\n{thresholds}\n")
    with pytest.raises(BiascheckError) as caught:
        validate_thresholds(load_settings(path), catalogue())
    assert expected in str(caught.value) and str(path) in str(caught.value)
    path.write_text(
        "[thresholds]\nfeature_leakage = -0.5\nprediction_kl = 3.0\naccuracy = 1\nmask_score = -0.3\n"
    )
    validate_thresholds(load_settings(path), catalogue())  # inside their ranges


def test_command_line_options_share_the_checks():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--batch-size", type=option_type("batch_size"))
    parser.add_argument("--device", type=option_type("device"))
    assert parser.parse_args(["--batch-size", "16", "--device", "cpu"]).batch_size == 16
    for argv, expected in (
        (["--batch-size", "0"], "batch_size must be an integer in [1, 16384], got 0"),
        (["--batch-size", "x"], "batch_size must be an integer, got 'x'"),
        (["--device", "bogus"], "device 'bogus' is not a torch device"),
    ):
        with pytest.raises(argparse.ArgumentError, match=re.escape(expected)):
            parser.parse_args(argv)


def test_a_missing_cuda_device_is_one_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(
        ValueError, match=r"'cuda:7' does not exist: this machine has 2 cuda device"
    ):
        check_device("cuda:7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="this machine has no cuda; use auto or cpu"):
        check_device("cuda")
