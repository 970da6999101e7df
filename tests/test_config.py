"""Config: valid files parse into typed settings; unknown keys and wrong types name the fix."""

from __future__ import annotations

import dataclasses
import json
import math
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


def test_biascheck_toml_wins_and_pyproject_without_table_is_ignored(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.other]\nx = 1\n")
    assert find_config(tmp_path) is None
    (tmp_path / "biascheck.toml").write_text('batch_size = 8\n[models.m]\nprotected = ["Male"]\n')
    settings = load_settings(find_config(tmp_path))
    assert settings.batch_size == 8 and settings.for_model("m").protected == ["Male"]
    assert load_settings(None) == Settings()


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
